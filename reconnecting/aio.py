"""The asyncio twin of :mod:`reconnecting.connection`, over psycopg 3.

:class:`AsyncReconnectingConnection` keeps the contract of
:class:`~reconnecting.connection.ReconnectingConnection` with ``await``: an
outage makes the call that finds it raise :class:`~reconnecting.Retry`, the connection
refuses work until ``await db.rollback()``, and then the same connection and
cursor objects carry on over a new server connection.  The rules that tell
an outage from any other error, and those that resolve an interrupted
commit, are the sync module's, imported from it: copy both files to use
this one.

A task cancelled in the middle of a call that talks to the server (by
``task.cancel()`` or ``asyncio.timeout()``) leaves the connection as an
outage does, minus the :class:`~reconnecting.Retry`: the server connection is closed and
the connection refuses work until ``rollback()``.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any

from reconnecting.connection import (
    Attempt,
    CommitOutcomeUnknown,
    DisconnectedConnectionError,
    Retry,
    _AttemptLoop,
    _describe,
    _id_query,
    _status_questions,
    is_disconnection,
    log,
)

__all__ = [
    "AsyncAttempt",
    "AsyncReconnectingConnection",
    "AsyncReconnectingCursor",
    "CommitOutcomeUnknown",
    "Retry",
    "attempts",
]

# Session settings of psycopg 3's AsyncConnection: each is set by an
# awaited method, since it may need a round trip.
_SESSION_SETTERS = {
    "autocommit": "set_autocommit",
    "isolation_level": "set_isolation_level",
    "read_only": "set_read_only",
    "deferrable": "set_deferrable",
}


def _refused(why: str) -> Retry:
    error = DisconnectedConnectionError(why)
    return Retry((DisconnectedConnectionError, error, None))


class AsyncReconnectingConnection:
    """An asyncio connection that reconnects after ``await rollback()``.

    ``connection_factory`` is called with no arguments whenever a server
    connection is needed, and returns an awaitable of one, for instance
    ``lambda: psycopg.AsyncConnection.connect(dsn)``.  Session settings made
    through this object (``await set_autocommit()``, ``set_isolation_level``,
    ``set_read_only``, ``set_deferrable``) are remembered and applied to
    every new server connection.  ``resolve_commit`` and
    ``resolve_timeout`` mean what they mean for the sync connection; the
    timeout bounds the whole resolution, connecting included.
    """

    def __init__(
        self,
        connection_factory: Callable[[], Awaitable[Any]],
        *,
        resolve_commit: bool = False,
        resolve_timeout: float = 10.0,
    ) -> None:
        self._factory = connection_factory
        self._resolve_commit = resolve_commit
        self._resolve_timeout = resolve_timeout
        self._server: tuple | None = None  # (raw connection, its server)
        self._raw: Any | None = None
        self._last_raw: Any | None = None
        self._refusal: str | None = None  # why work is refused until rollback
        self._closed = False
        self._session: dict[str, tuple[str, Any]] = {}
        self._connecting = asyncio.Lock()
        self._disconnects = 0
        self._reconnects = 0

    # -- state ---------------------------------------------------------------

    @property
    def disconnects(self) -> int:
        """How many times a lost server connection was noticed."""
        return self._disconnects

    @property
    def reconnects(self) -> int:
        """How many server connections were made after the first one."""
        return self._reconnects

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def _state(self) -> str:
        if self._closed:
            return "closed"
        if self._refusal is not None:
            return "disconnected"
        return "connected" if self._raw is not None else "not connected"

    def __repr__(self) -> str:
        name = f"{type(self).__module__}.{type(self).__qualname__}"
        return f"<{name} {self._state()} at {id(self):#x}>"

    def _closed_error(self, what: str = "connection") -> Exception:
        error_class = getattr(self._last_raw, "InterfaceError", None)
        if not (isinstance(error_class, type) and issubclass(error_class, Exception)):
            error_class = DisconnectedConnectionError
        return error_class(f"{what} already closed")

    def _current(self) -> Any:
        """The server connection now, without connecting; for plain attributes."""
        if self._closed:
            raise self._closed_error()
        if self._refusal is not None:
            raise _refused(self._refusal)
        if self._raw is None:
            raise DisconnectedConnectionError("not connected yet: run a query first")
        return self._raw

    async def _connection(self) -> Any:
        """Return the current server connection, making one if needed."""
        raw = self._raw
        if raw is not None:
            return raw
        # One connect at a time: tasks sharing the connection wait for it.
        async with self._connecting:
            if self._closed:
                raise self._closed_error()
            if self._refusal is not None:
                raise _refused(self._refusal)
            if self._raw is None:
                self._raw = await self._connect()
            return self._raw

    async def _open(self) -> Any:
        """Make a server connection with the remembered session settings."""
        raw = await self._factory()
        try:
            for kind, name, value in self._session.values():
                if kind == "attr":
                    setattr(raw, name, value)
                else:
                    await getattr(raw, name)(value)
        except BaseException:
            await _close_quietly(raw)
            raise
        return raw

    async def _connect(self) -> Any:
        try:
            raw = await self._open()
        except Exception as exc:
            if not is_disconnection(exc, None):
                raise
            self._refusal = "Already disconnected"
            self._disconnects += 1
            log.warning("Could not reconnect to the database: %s", _describe(exc))
            raise Retry(sys.exc_info()) from exc
        if self._last_raw is not None:
            self._reconnects += 1
            log.info("Reconnected to the database")
        self._last_raw = raw
        return raw

    async def _lost(self, raw: Any, exc: Exception) -> Retry:
        """Enter the disconnected state if ``raw`` is still the current one."""
        retry = Retry(sys.exc_info())
        if self._raw is raw and self._refusal is None:
            self._raw, self._refusal = None, "Already disconnected"
            self._disconnects += 1
            log.warning("Database connection lost: %s", _describe(exc))
            await _close_quietly(raw)
        return retry

    def _interrupted(self, raw: Any, what: str = "call") -> None:
        """A task was cancelled while ``raw`` worked for it: drop ``raw``.

        The driver has tried to stop the query; whatever the transaction
        did is gone with the server connection, so work is refused until
        ``rollback()``, as after an outage.
        """
        if self._raw is raw:
            self._raw = None
            self._refusal = f"Interrupted by cancellation during a {what}"
            log.info("Cancelled during a %s; closing the server connection", what)
        _close_now(raw)

    async def _call(self, function: Callable[[Any], Awaitable[Any]]) -> Any:
        """Await ``function(raw_connection)``, turning disconnections into Retry."""
        raw = await self._connection()
        try:
            return await function(raw)
        except Exception as exc:
            if self._closed or not is_disconnection(exc, raw):
                raise
            raise await self._lost(raw, exc) from exc
        except BaseException:  # cancelled
            self._interrupted(raw)
            raise

    # -- DB-API, with await -----------------------------------------------------

    def cursor(self, *args: Any, **kwargs: Any) -> AsyncReconnectingCursor:
        """Return a cursor that follows this connection across reconnects."""
        if self._closed:
            raise self._closed_error()
        return AsyncReconnectingCursor(self, args, kwargs)

    async def execute(
        self, query: Any, params: Any = None, **kwargs: Any
    ) -> AsyncReconnectingCursor:
        """Run a query on a new cursor and return it, as psycopg's does."""
        return await self.cursor().execute(query, params, **kwargs)

    async def commit(self) -> None:
        """Commit; raises :class:`~reconnecting.Retry` if the server connection is lost.

        With ``resolve_commit``, a commit interrupted after the transaction
        wrote something is resolved as the sync connection resolves it:
        normal return if the server committed it, :class:`~reconnecting.Retry` if it
        rolled it back, :class:`~reconnecting.CommitOutcomeUnknown` if nobody can tell
        within ``resolve_timeout`` seconds.
        """
        if self._raw is None and self._refusal is None and not self._closed:
            return  # nothing was done, so there is nothing to commit
        raw = await self._connection()
        written = None
        try:
            if self._resolve_commit:
                written = await self._transaction_id(raw)
            await raw.commit()
        except Exception as exc:
            if self._closed or not is_disconnection(exc, raw):
                raise
            retry = await self._lost(raw, exc)
            if written is None:
                raise retry from exc  # nothing was written: safe to redo
            await self._resolve(*written, retry, exc)
        except BaseException:
            if written is not None:
                log.warning(
                    "Commit of transaction %s cancelled; its outcome is unknown",
                    written[0],
                )
            self._interrupted(raw, "commit")
            raise

    async def _transaction_id(self, raw: Any) -> tuple[str, tuple] | None:
        """Return the open transaction's id and server, if it wrote anything."""
        # 0 is idle, 3 in error: nothing that COMMIT could make durable.
        if raw.info.transaction_status in (0, 3):
            return None
        known = self._server
        ask_server = known is None or known[0] is not raw
        cursor = raw.cursor()
        try:
            await cursor.execute(_id_query(raw.info.server_version, ask_server))
            row = await cursor.fetchone()
        finally:
            await cursor.close()
        if ask_server:
            self._server = known = (raw, tuple(row[1:]))
        return None if row[0] is None else (row[0], known[1])

    async def _resolve(
        self, transaction_id: str, server: tuple, retry: Retry, exc: Exception
    ) -> None:
        """Find out what became of an interrupted commit; see :meth:`commit`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._resolve_timeout
        pause = 0.01
        raw, status = None, "unreachable"
        try:
            while loop.time() < deadline:
                try:
                    raw = raw or await _before(deadline, self._open())
                    status = await _before(
                        deadline, _transaction_status(raw, transaction_id, server), raw
                    )
                except TimeoutError:
                    break
                except Exception as error:
                    if not is_disconnection(error, raw):
                        status = f"status query failed ({_describe(error)})"
                        break
                    await _close_quietly(raw)
                    raw, status = None, "unreachable"
                if status != "in progress" and status != "unreachable":
                    break
                await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
                pause = min(pause * 2, 0.5)
        except BaseException:
            if raw is not None:
                _close_now(raw)
            raise
        if status == "committed":
            if self._refusal is not None and self._raw is None and not self._closed:
                self._raw, self._refusal = raw, None
                self._last_raw = raw
                self._reconnects += 1
                raw = None
            await _close_quietly(raw)
            log.info("Commit of transaction %s confirmed", transaction_id)
            return
        await _close_quietly(raw)
        if status == "aborted":
            log.info("Transaction %s was rolled back; retrying", transaction_id)
            raise retry from exc
        log.error("Outcome of transaction %s unknown: %s", transaction_id, status)
        raise CommitOutcomeUnknown(transaction_id, status) from exc

    async def rollback(self) -> None:
        """Roll back, and leave the disconnected state.

        A lost server connection rolls back by itself, so this never raises
        for a disconnection: the next operation reconnects.
        """
        if self._closed:
            raise self._closed_error()
        if self._refusal is not None:
            self._refusal = None
            return
        raw = self._raw
        if raw is None:
            return
        try:
            await raw.rollback()
        except Exception as exc:
            if self._closed or not is_disconnection(exc, raw):
                raise
            await self._lost(raw, exc)
            self._refusal = None
        except BaseException:
            # Cancelled: the server rolls back as the connection closes.
            self._interrupted(raw, "rollback")
            self._refusal = None
            raise

    async def close(self) -> None:
        """Close for good; later use raises the driver's ``InterfaceError``."""
        self._closed = True
        raw, self._raw = self._raw, None
        if raw is not None:
            await _close_quietly(raw)

    # -- session settings ------------------------------------------------------

    async def _set_session(self, name: str, value: Any) -> None:
        setter = _SESSION_SETTERS[name]
        if self._closed:
            raise self._closed_error()
        if self._raw is not None:
            await self._call(lambda raw: getattr(raw, setter)(value))
        self._session[name] = ("call", setter, value)

    async def set_autocommit(self, value: bool) -> None:
        """Set autocommit now if connected, and on every new server connection."""
        await self._set_session("autocommit", value)

    async def set_isolation_level(self, value: Any) -> None:
        """Set the isolation level now and on every new server connection."""
        await self._set_session("isolation_level", value)

    async def set_read_only(self, value: bool | None) -> None:
        """Set read-only mode now and on every new server connection."""
        await self._set_session("read_only", value)

    async def set_deferrable(self, value: bool | None) -> None:
        """Set deferrable mode now and on every new server connection."""
        await self._set_session("deferrable", value)

    def _setting(self, name: str) -> Any:
        if self._raw is not None:
            return getattr(self._raw, name)
        if name in self._session:
            return self._session[name][2]
        return self._current()  # raises: closed, disconnected or not yet connected

    autocommit = property(
        lambda self: self._setting("autocommit"), doc="The session's autocommit."
    )
    isolation_level = property(
        lambda self: self._setting("isolation_level"), doc="The isolation level."
    )
    read_only = property(lambda self: self._setting("read_only"), doc="Read-only.")
    deferrable = property(lambda self: self._setting("deferrable"), doc="Deferrable.")

    # -- context manager: psycopg 3's meaning ------------------------------------

    async def __aenter__(self) -> AsyncReconnectingConnection:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """Commit, or roll back on an error; then close, as psycopg 3 does."""
        if self._closed:
            return
        try:
            if exc_type is None:
                await self.commit()
            else:
                await self.rollback()
        finally:
            await self.close()

    # -- the rest --------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = getattr(self._current(), name)
        if callable(value):
            raise _not_wrapped(self, name)
        return value  # info, pgconn, broken, ...: what the server connection says


def _not_wrapped(wrapper: object, name: str) -> Exception:
    return NotImplementedError(
        f"{type(wrapper).__name__} does not wrap {name}(): calling it on the"
        " server connection directly would bypass reconnection"
    )


def _server_method(name: str, doc: str, returns_self: bool = False) -> Any:
    """Make a cursor method that awaits the driver cursor's method ``name``."""

    async def method(self: AsyncReconnectingCursor, *args: Any, **kwargs: Any) -> Any:
        # The hot path, kept short: one check, then straight to the driver.
        connection = self._connection
        raw = connection._raw  # None while disconnected or closed
        if raw is None or raw is not self._raw_connection:
            result = await self._run(name, args, kwargs)
        else:
            try:
                result = await getattr(self._raw_cursor, name)(*args, **kwargs)
            except Exception as exc:
                if connection._closed or not is_disconnection(exc, raw):
                    raise
                raise await connection._lost(raw, exc) from exc
            except BaseException:  # cancelled
                connection._interrupted(raw)
                raise
        return self if returns_self else result

    method.__name__ = method.__qualname__ = name
    method.__doc__ = doc
    return method


def _fetch_method(name: str, doc: str) -> Any:
    """Make a fetch method that, on a client-side cursor, hands out the
    driver's own awaitable: its rows arrived with ``execute()``, so fetching
    them does not talk to the server, and one coroutine less is faster."""
    on_server = _server_method(name, doc)

    def method(self: AsyncReconnectingCursor, *args: Any, **kwargs: Any) -> Any:
        raw = self._connection._raw  # None while disconnected or closed
        if self._named or raw is None or raw is not self._raw_connection:
            return on_server(self, *args, **kwargs)
        return getattr(self._raw_cursor, name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = doc
    return method


class AsyncReconnectingCursor:
    """A cursor of an :class:`AsyncReconnectingConnection`.

    It remembers the arguments it was made with and makes the driver cursor
    again on each new server connection, so the same cursor object keeps
    working after ``rollback()``.  Its methods that talk to the server
    raise :class:`~reconnecting.Retry` when the server connection is lost.
    """

    def __init__(
        self, connection: AsyncReconnectingConnection, args: tuple, kwargs: dict
    ) -> None:
        self._connection = connection
        self._args = args
        self._kwargs = kwargs
        # A named cursor is a server-side one: fetching talks to the server.
        self._named = bool(kwargs.get("name") or (args and args[0]))
        self._raw_connection: Any | None = None
        self._raw_cursor: Any | None = None
        self._settings: dict[str, Any] = {}
        self._closed = False

    @property
    def connection(self) -> AsyncReconnectingConnection:
        """The :class:`AsyncReconnectingConnection` this cursor belongs to."""
        return self._connection

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def __repr__(self) -> str:
        name = f"{type(self).__module__}.{type(self).__qualname__}"
        state = "closed" if self._closed else "open"
        return f"<{name} {state} at {id(self):#x}>"

    def _cursor_on(self, raw: Any) -> Any:
        if self._closed:
            raise self._connection._closed_error("cursor")
        if self._raw_connection is not raw:
            raw_cursor = raw.cursor(*self._args, **self._kwargs)
            for name, value in self._settings.items():
                setattr(raw_cursor, name, value)
            self._raw_cursor, self._raw_connection = raw_cursor, raw
        return self._raw_cursor

    async def _run(self, name: str, args: tuple, kwargs: dict) -> Any:
        return await self._connection._call(
            lambda raw: getattr(self._cursor_on(raw), name)(*args, **kwargs)
        )

    async def execute(
        self, query: Any, params: Any = None, **kwargs: Any
    ) -> AsyncReconnectingCursor:
        """Run a query; return this cursor, as psycopg's does."""
        # The hot path, spelled out: one check, then straight to the driver.
        connection = self._connection
        raw = connection._raw  # None while disconnected or closed
        if raw is None or raw is not self._raw_connection:
            await self._run("execute", (query, params), kwargs)
            return self
        try:
            await self._raw_cursor.execute(query, params, **kwargs)
        except Exception as exc:
            if connection._closed or not is_disconnection(exc, raw):
                raise
            raise await connection._lost(raw, exc) from exc
        except BaseException:  # cancelled
            connection._interrupted(raw)
            raise
        return self

    executemany = _server_method(
        "executemany", "Run a query for each parameter set.", True
    )
    _fetchone = _fetch_method("fetchone", "")

    def fetchone(self) -> Awaitable[Any]:
        """Return the next row, or ``None``."""
        raw = self._connection._raw  # the hot path of _fetch_method, spelled out
        if self._named or raw is None or raw is not self._raw_connection:
            return self._fetchone()
        return self._raw_cursor.fetchone()

    fetchmany = _fetch_method("fetchmany", "Return the next ``size`` rows.")
    fetchall = _fetch_method("fetchall", "Return the remaining rows.")
    __anext__ = _fetch_method("__anext__", "Return the next row.")
    scroll = _server_method("scroll", "Move the position in the result.")

    def __aiter__(self) -> AsyncReconnectingCursor:
        return self

    async def stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """Yield the rows of a query as the server sends them."""
        connection = self._connection
        raw = await connection._connection()
        rows = self._cursor_on(raw).stream(*args, **kwargs)
        try:
            while True:
                try:
                    row = await rows.__anext__()
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    if connection._closed or not is_disconnection(exc, raw):
                        raise
                    raise await connection._lost(raw, exc) from exc
                except BaseException:
                    connection._interrupted(raw, "stream")
                    raise
                yield row
        finally:
            await rows.aclose()

    async def close(self) -> None:
        """Close the cursor; the server connection stays open."""
        self._closed = True
        raw_cursor, self._raw_cursor = self._raw_cursor, None
        self._raw_connection = None
        if raw_cursor is not None:
            await _close_quietly(raw_cursor)

    async def __aenter__(self) -> AsyncReconnectingCursor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raw_cursor = self._raw_cursor
        if raw_cursor is None:
            raw_cursor = self._cursor_on(self._connection._current())
        value = getattr(raw_cursor, name)
        if callable(value):
            raise _not_wrapped(self, name)
        return value  # description, rowcount, statusmessage, ...

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            # arraysize, row_factory, ...: set now and on every new driver cursor.
            if self._raw_cursor is not None:
                setattr(self._raw_cursor, name, value)
            self._settings[name] = value


# -- the retry loop ----------------------------------------------------------


class AsyncAttempt(Attempt):
    """One try of a unit of work, made by :func:`attempts`; use it as
    ``async with attempt:``.  It behaves as the sync ``Attempt``, with
    ``await db.rollback()``.
    """

    def __enter__(self) -> Attempt:
        raise TypeError("use 'async with attempt:' with an asyncio connection")

    async def __aenter__(self) -> AsyncAttempt:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None:
            return False
        await self._loop.db.rollback()
        if not isinstance(exc, Retry):
            return False
        pause = self._loop.pause_after(self.number)
        if pause is None:
            return False  # out of tries or time: the last Retry goes on
        self.error, self.pause = exc, pause
        log.debug("Attempt %d interrupted; next in %.3f s", self.number, pause)
        return True


async def attempts(
    db: Any,
    tries: int = 5,
    deadline: float = 30.0,
    *,
    base_pause: float = 0.01,
    max_pause: float = 1.0,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    jitter: Callable[[], float] = random.random,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[AsyncAttempt]:
    """The sync ``reconnecting.attempts()``, for asyncio::

        async for attempt in attempts(db, tries=5, deadline=30.0):
            async with attempt:
                await unit_of_work()  # which ends with await db.commit()

    Same arguments, same pauses (capped exponential steps with full
    jitter), same rules: :class:`~reconnecting.Retry` is rolled back and retried,
    anything else is rolled back and goes on to the caller.  The pauses are
    ``await asyncio.sleep()``, so other tasks run meanwhile.
    """
    if tries < 1:
        raise ValueError(f"tries must be at least 1, not {tries!r}")
    loop = _AttemptLoop(
        db, tries, clock() + deadline, base_pause, max_pause, jitter, clock
    )
    for number in range(1, tries + 1):
        attempt = AsyncAttempt(loop, number)
        yield attempt
        if attempt.pause is None:
            return  # it got through (or its error went to the caller)
        await sleep(attempt.pause)


# -- helpers -----------------------------------------------------------------


async def _transaction_status(raw: Any, transaction_id: str, server: tuple) -> str:
    """Ask the server what became of a transaction, by the sync module's rules."""
    questions = _status_questions(raw.info.server_version, transaction_id, server)
    cursor = raw.cursor()
    try:
        question = next(questions)
        while True:
            try:
                await cursor.execute(*question)
                answer = await cursor.fetchone()
            except Exception as error:
                question = questions.throw(error)
            else:
                question = questions.send(answer)
    except StopIteration as end:
        return end.value
    finally:
        await cursor.close()
        await raw.rollback()


async def _before(deadline: float, awaitable: Awaitable[Any], raw: Any = None) -> Any:
    """Await ``awaitable`` until the loop's clock reaches ``deadline``.

    Past it, raise ``TimeoutError``, after closing ``raw`` (the server
    connection the awaitable works on, if any): psycopg answers a cancelled
    query by asking the server to cancel it and waiting for that, which
    would take the time the deadline denies it.
    """
    task = asyncio.ensure_future(awaitable)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
    except BaseException:  # the caller was cancelled
        await _abandon(task, raw)
        raise
    if not task.done():
        await _abandon(task, raw)
        raise TimeoutError
    return task.result()


async def _abandon(task: asyncio.Future, raw: Any) -> None:
    if raw is not None:
        _close_now(raw)
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: what it raised no longer matters


def _close_now(raw: Any) -> None:
    """Close a server connection without awaiting (psycopg's socket closes now)."""
    pgconn = getattr(raw, "pgconn", None)
    try:
        if pgconn is not None:
            pgconn.finish()
        else:
            asyncio.ensure_future(_close_quietly(raw))
    except Exception:
        pass


async def _close_quietly(thing: Any) -> None:
    if thing is None:
        return
    try:
        await thing.close()
    except Exception:
        pass  # it is broken already; closing is only to free the socket
