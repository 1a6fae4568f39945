"""The asyncio twin of :mod:`reconnecting.connection`, over psycopg 3.

:class:`AsyncReconnectingConnection` keeps the contract of
:class:`~reconnecting.connection.ReconnectingConnection` with ``await``: an
outage makes the call that finds it raise :class:`~reconnecting.Retry`,
the connection refuses work until ``await db.rollback()``, and then the
same connection and cursor objects carry on over a new server connection.
The rules that tell an outage from any other error, resolve an interrupted
commit, shape ``transaction()`` blocks and pace :func:`attempts` are the
sync module's, imported from it: copy both files to use this one.

Calls that talk to the server take turns, one at a time, as psycopg's
own lock makes them.  A task cancelled while it waits for its turn (by
``task.cancel()``, ``asyncio.timeout()`` or ``wait_for()``) leaves without
touching anything.  One cancelled in the middle of its call leaves the
connection as an outage does, minus the :class:`~reconnecting.Retry`: the
server connection is closed at once, the server is asked in the background
to cancel the query, and the connection refuses work until ``rollback()``.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import random
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, TypeVar

from .connection import (
    DRIVER_CONNECTION_NAMES,
    DRIVER_CURSOR_NAMES,
    NOT_STATEMENTS,
    SESSION_LOST,
    Attempt,
    AttemptLoop,
    CommitOutcomeUnknown,
    ConnectionState,
    CursorBase,
    DisconnectedConnectionError,
    Question,
    Resolution,
    Retry,
    StatementOutcomeUnknown,
    TransactionBlock,
    Written,
    add_connection_attributes,
    add_driver_attributes,
    check_setting,
    is_disconnection,
    log,
    plain_cursor,
    statement_in_doubt,
)

T = TypeVar("T")

__all__ = [
    "AsyncAttempt",
    "AsyncReconnectingConnection",
    "AsyncReconnectingCursor",
    "CommitOutcomeUnknown",
    "Retry",
    "StatementOutcomeUnknown",
    "attempts",
]

# Session settings of psycopg 3's AsyncConnection: each is set by an
# awaited set_<name>() method, since it may need a round trip.
_SESSION_SETTINGS = frozenset(
    {"autocommit", "isolation_level", "read_only", "deferrable"}
)
# Cursor methods that run no statement of the caller's (see _statement_lost).
_NOT_STATEMENTS_ASYNC = NOT_STATEMENTS | {"__anext__"}
# What a cursor's _live holds while its hot path is closed.
_NOT_LIVE = CursorBase._NOT_LIVE
_NotLiveError = CursorBase._NOT_LIVE_ERROR


# What a psycopg cursor that ran nothing yet says.
_UNUSED_CURSOR = {
    "description": None,
    "arraysize": 1,
    "rowcount": -1,
    "rownumber": None,
    "statusmessage": None,
    "pgresult": None,
}


class AsyncReconnectingConnection(ConnectionState):
    """An asyncio connection that reconnects after ``await rollback()``.

    ``connection_factory`` is called with no arguments whenever a server
    connection is needed, and returns an awaitable of one, for instance
    ``lambda: psycopg.AsyncConnection.connect(dsn)``.  Session settings made
    through this object (``await set_autocommit()``,
    ``set_isolation_level()``, ``set_read_only()``, ``set_deferrable()``,
    and attributes such as ``prepare_threshold``) are remembered, one value
    per setting, and applied to every new server connection.
    ``resolve_commit`` and ``resolve_timeout`` mean what they mean for the
    sync connection, and the timeout bounds the whole resolution,
    connecting included.
    """

    def __init__(
        self,
        connection_factory: Callable[[], Awaitable[Any]],
        *,
        resolve_commit: bool = False,
        resolve_timeout: float = 10.0,
    ) -> None:
        super().__init__(connection_factory, resolve_commit, resolve_timeout)
        self._blocks: list[_AsyncTransactionBlock] = []  # transaction() blocks open
        self._connecting = asyncio.Lock()
        self._turn = _Turn()  # the call talking to the server, and those waiting

    def _driver(self) -> Any | None:
        """What holds the driver's exception classes, found without
        connecting: the last server connection, else psycopg's connection
        class, from the module the connection factory imported (the asyncio
        connection is psycopg 3's)."""
        if self._last_raw is not None:
            return self._last_raw
        return getattr(sys.modules.get("psycopg"), "AsyncConnection", None)

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
                raise self._refuse_work()
            if self._raw is None:
                raw = await self._connect()
                if self._closed:  # closed while connecting
                    await _close_quietly(raw)
                    raise self._closed_error()
                self._installed(raw)
            return self._raw

    async def _connect(self) -> Any:
        try:
            return await self._open()
        except Exception as exc:
            if not is_disconnection(exc, None):
                raise
            raise self._connect_failed(exc) from exc

    async def _open(self) -> Any:
        """Make a server connection with the remembered settings."""
        raw = await self._factory()
        _close_when_cancelled(raw)
        if type(raw) not in self._driver_classes:
            add_connection_attributes(type(self), raw)
        try:
            for name, value in list(self._settings.items()):
                with self._setting(raw, name):
                    if name not in _SESSION_SETTINGS:
                        setattr(raw, name, value)  # on the client: no round trip
                    else:
                        await getattr(raw, f"set_{name}")(value)
        except BaseException:
            await _close_quietly(raw)
            raise
        return raw

    async def _statement_lost(self, raw: Any, exc: Exception) -> Exception:
        """``_lost()``, for a statement of the caller's that was running: in
        autocommit mode it may have committed, unless it could not write
        (the sync connection's rule)."""
        unknown = self._may_have_committed(raw, exc)
        retry = await self._lost(raw, exc)
        return statement_in_doubt(exc) if unknown else retry

    async def _lost(self, raw: Any, exc: Exception) -> Retry:
        """Enter the disconnected state if ``raw`` is still the current one."""
        if self._dropped(raw, exc):
            await _close_quietly(raw)
        return Retry((type(exc), exc, exc.__traceback__))

    def _interrupted(self, raw: Any, what: str = "call") -> None:
        """A task was cancelled while ``raw`` worked for it: drop ``raw``.

        Whatever the transaction did goes with the server connection, so
        work is refused until ``rollback()``, as after an outage.
        """
        self._cancelled(raw, what)
        # A COMMIT that has left is not called back: a cancel request racing
        # it would only make its outcome a matter of timing.
        _close_now(raw, cancel_query=what != "commit")

    async def _call(
        self, function: Callable[[Any], Any], statement: bool = False
    ) -> Any:
        """Await ``function(raw_connection)`` in turn, turning outages into
        Retry (or, for a ``statement``, what ``_statement_lost`` says)."""
        turn = self._turn
        await turn.take()
        try:
            raw = await self._connection()
            try:
                result = function(raw)
                if inspect.isawaitable(result):
                    result = await _closing_first(result, self, raw)
                return result
            except Exception as exc:
                if not self._outage(exc, raw):
                    raise
                if statement:
                    raise await self._statement_lost(raw, exc) from exc
                raise await self._lost(raw, exc) from exc
        finally:
            turn.give()

    async def _in_turn(self, work: Callable[[], Awaitable[None]]) -> None:
        turn = self._turn
        await turn.take()
        try:
            await work()
        finally:
            turn.give()

    async def _iterate(
        self, start: Callable[[Any], AsyncIterator[Any]], what: str, *, hold: bool
    ) -> AsyncIterator[Any]:
        """Yield from the driver's ``start(raw_connection)``, as ``_call``.

        With ``hold``, the iteration is a statement of the caller's, and
        keeps the turn from the first item to the end, as psycopg keeps its
        lock through a ``stream()``; without, the turn is taken for each
        item, as ``notifies()`` takes psycopg's.
        """
        turn = self._turn
        await turn.take()
        holding = True
        try:
            raw = await self._connection()
            items = start(raw)
            try:
                while True:
                    if not holding:
                        await turn.take()
                        holding = True
                    try:
                        item = await _closing_first(items.__anext__(), self, raw, what)
                    except StopAsyncIteration:
                        return
                    except Exception as exc:
                        if not self._outage(exc, raw):
                            raise
                        if hold:
                            raise await self._statement_lost(raw, exc) from exc
                        raise await self._lost(raw, exc) from exc
                    if not hold:
                        holding = False
                        turn.give()
                    yield item
            finally:
                aclose = getattr(items, "aclose", None)
                try:
                    if aclose is not None:
                        await aclose()
                except Exception:
                    pass  # broken with its connection; closing only frees it
        finally:
            if holding:
                turn.give()

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
        """Commit; raises :class:`~reconnecting.Retry` if the server
        connection is lost.

        With ``resolve_commit``, a commit interrupted after the transaction
        wrote something is resolved by the sync connection's rules: normal
        return if the server committed it (results already received stay
        readable, and the connection stays disconnected, since the server
        session is gone: the next call raises :class:`~reconnecting.Retry`,
        even after a ``rollback()``, and the calls after it until
        ``rollback()``), :class:`~reconnecting.Retry` if it rolled it
        back,
        :class:`~reconnecting.CommitOutcomeUnknown` if nobody can tell in
        time.  The answer comes within ``resolve_timeout`` seconds plus the
        time one connection and question take (estimated from the round
        trip measured just before ``COMMIT``), and the server is asked at
        least once; a connection attempt or a question still going on then
        is abandoned.
        """
        if self._nothing_done():
            return  # nothing was done, so there is nothing to commit
        if self._blocks:
            raise self._blocks[-1].misuse("commit")
        await self._in_turn(self._commit)

    async def _commit(self) -> None:
        raw = await self._connection()
        written: Written | None = None
        try:
            if self._resolve_commit:
                written = await _closing_first(
                    _answer(raw, self._written(raw)), self, raw, "commit"
                )
            await _closing_first(raw.commit(), self, raw, "commit")
        except Exception as exc:
            if not self._outage(exc, raw):
                raise
            try:
                retry = await self._lost(raw, exc)
                if written is None:
                    raise retry from exc  # nothing was written: safe to redo
                await self._resolve(written, retry, exc)
            except BaseException as error:
                if written is not None and not isinstance(error, Exception):
                    _outcome_unknown(written[0], error)  # cancelled while resolving
                raise
            for cursor in self._open_cursors():
                cursor._keep(raw)
        except BaseException as error:  # cancelled while committing
            if written is not None:
                _outcome_unknown(written[0], error)
            raise

    async def _resolve(self, written: Written, retry: Retry, exc: Exception) -> None:
        """Find out what became of an interrupted commit; see :meth:`commit`."""
        resolution = self._resolution(written, asyncio.get_running_loop().time)
        status, raw = await self._ask(resolution)
        await _close_quietly(raw)
        self._resolved(written[0], status, retry, exc)

    async def _ask(self, resolution: Resolution) -> tuple[str, Any]:
        """The status and the connection that got it; see :meth:`commit`."""
        until, raw = resolution.until, None
        try:
            while True:  # at least once, then while the resolution says so
                try:
                    raw = raw or await _before(until, self._open())
                    questions = resolution.questions(raw.info.server_version)
                    asked = _answer(raw, questions, rollback=True)
                    resolution.status = await _before(until, asked, raw)
                except TimeoutError:
                    return "no answer in time", None
                except Exception as error:
                    if resolution.failed(error, raw):
                        await _close_quietly(raw)
                        raw = None
                pause = resolution.pause()
                if pause is None:
                    return resolution.status, raw
                await asyncio.sleep(pause)
        except BaseException:  # cancelled while asking
            if raw is not None:
                _close_now(raw)
            raise

    async def rollback(self) -> None:
        """Roll back, and leave the disconnected state.

        A lost server connection rolls back by itself, so this never raises
        for a disconnection; a loss of the server session the caller was
        not told of yet is told first, as on the sync connection: the next
        call raises :class:`~reconnecting.Retry`.  Inside a
        ``transaction()`` block it is refused, as psycopg refuses it: the
        block ends the transaction.
        """
        if self._closed:
            raise self._closed_error()
        if self._blocks:  # as psycopg: the block ends the transaction
            raise self._blocks[-1].misuse("rollback")
        await self._in_turn(self._rollback)

    async def _rollback(self) -> None:
        raw = self._to_roll_back()
        if raw is None:
            return
        try:
            await _closing_first(raw.rollback(), self, raw, "rollback")
        except Exception as exc:
            if not self._outage(exc, raw):
                raise
            await self._lost(raw, exc)
            self._session_gone(SESSION_LOST)
        except BaseException:
            self._rollback_cancelled()
            raise

    async def close(self) -> None:
        """Close for good; later use raises the driver's ``InterfaceError``."""
        self._closed = True
        raw, self._raw = self._raw, None
        await _close_quietly(raw)

    def transaction(
        self, savepoint_name: str | None = None, force_rollback: bool = False
    ) -> _AsyncTransactionBlock:
        """psycopg 3's ``async with conn.transaction():`` block, made of this
        connection's own calls, as the sync connection's: the outermost block
        ends with :meth:`commit` (resolved, if asked for) or
        :meth:`rollback`, inner ones are savepoints, and a block left by
        :class:`~reconnecting.Retry` touches nothing."""
        # The sync block's rules, on this connection's awaited calls.
        return _AsyncTransactionBlock(self, savepoint_name, force_rollback)  # type: ignore[arg-type]

    # -- session settings ------------------------------------------------------

    async def _set_session(self, name: str, value: Any) -> None:
        if self._closed:
            raise self._closed_error()
        if self._raw is None:
            # The next server connection checks it, as the sync one does.
            self._remember_unchecked({name: value})
            return
        await self._call(lambda raw: getattr(raw, f"set_{name}")(value))
        self._settings[name] = getattr(self._raw, name)  # as the driver reads it

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

    # -- context manager: psycopg 3's meaning ------------------------------------

    async def __aenter__(self) -> AsyncReconnectingConnection:
        await self._connection()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, *exc: object
    ) -> None:
        """Commit, or roll back after an exception; then close, as psycopg 3
        does."""
        ending = self._block_ending(exc_type is not None)
        try:
            if ending == "commit":
                await self.commit()
            elif ending == "rollback":
                try:
                    await self.rollback()
                except Exception as error:  # the block's own exception goes on
                    log.warning("Rollback at the end of a block failed: %s", error)
        finally:
            await self.close()

    # -- everything else goes to the driver connection -------------------------

    if TYPE_CHECKING:  # the driver connection's other attributes, for type checkers

        def __getattr__(self, name: str) -> Any: ...

    def _driver_attribute(self, name: str) -> Any:
        """The driver connection's attribute ``name`` (see
        ``add_connection_attributes()``); reading it never connects."""
        if self._raw is None and name in self._settings:
            return self._settings[name]  # remembered: no server needed
        # The last server connection still knows its plain attributes.
        raw = self._raw or self._last_raw
        if raw is not None:
            return self._expose(raw, name, getattr(raw, name))
        # For `except db.Error:` before the first connection.
        error_class = getattr(self._driver(), name, None)
        if isinstance(error_class, type) and issubclass(error_class, Exception):
            return error_class
        if self._closed:
            raise self._closed_error()
        raise DisconnectedConnectionError(
            f"not connected yet: {name!r} needs a server connection"
        )

    def _method(self, name: str, value: Any) -> Callable[..., Any] | None:
        if name == "notifies":  # an async generator talking to the server
            return lambda *args, **kwargs: self._iterate(
                lambda raw: raw.notifies(*args, **kwargs), "notifies()", hold=False
            )
        if not inspect.iscoroutinefunction(value):
            return value  # fileno(), xid(), add_notice_handler(): no round trip
        return None

    def _set_setting(self, name: str, value: Any) -> None:
        if name in _SESSION_SETTINGS:
            raise AttributeError(
                f"{name!r} is set by a round trip on an asyncio connection:"
                f" use 'await db.set_{name}(...)'"
            )
        if self._closed:
            raise self._closed_error()
        raw = self._raw or self._last_raw
        if raw is None:
            raise DisconnectedConnectionError(
                f"not connected yet: setting {name!r} needs a server connection"
            )
        check_setting(raw, name)
        setattr(raw, name, value)  # a client-side setting: no round trip
        self._settings[name] = value


def _server_method(name: str, doc: str, returns_self: bool = False) -> Any:
    """Make a cursor method that awaits the driver cursor's method ``name``."""
    statement = name not in _NOT_STATEMENTS_ASYNC

    async def method(self: AsyncReconnectingCursor, *args: Any, **kwargs: Any) -> Any:
        raw_cursor = self._live  # the hot path: see CursorBase._live
        turn = self._turn
        if raw_cursor is _NOT_LIVE or turn.busy:
            result = await self._run(name, args, kwargs)
        else:
            turn.busy = True  # free, so taken at once (see _Turn.take)
            try:  # a cancellation closes first: see _close_when_cancelled()
                result = await getattr(raw_cursor, name)(*args, **kwargs)
            except Exception as exc:
                await self._failed(exc, statement)
                raise
            except BaseException:  # cancelled, or interrupted
                self._connection._interrupted(self._raw_connection)
                raise
            finally:
                turn.give()
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
        if self._kept or (self._live is not _NOT_LIVE and not self._named):
            return getattr(self._raw_cursor, name)(*args, **kwargs)
        return on_server(self, *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = doc
    return method


class AsyncReconnectingCursor(CursorBase):
    """A cursor of an :class:`AsyncReconnectingConnection`.

    It remembers the arguments it was made with and makes the driver cursor
    again on each new server connection, so the same cursor object keeps
    working after ``await rollback()``.  Methods that talk to the server
    raise :class:`~reconnecting.Retry` when the server connection is lost;
    those of the driver's cursor not listed here are there when the
    driver's cursor has them, and behave alike.  Reading an attribute never
    connects: it answers as the driver's cursor does.
    """

    __slots__ = ("_turn", "_named")
    _connection: AsyncReconnectingConnection
    _NOTHING_KEPT = False  # True: reading a result kept after a resolved commit

    def __init__(
        self,
        connection: AsyncReconnectingConnection,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        super().__init__(connection, args, kwargs)
        self._turn = connection._turn
        # A named cursor is a server-side one: fetching talks to the server.
        self._named = bool(kwargs.get("name") or (args and args[0]))

    @property
    def connection(self) -> AsyncReconnectingConnection:
        """The :class:`AsyncReconnectingConnection` this cursor belongs to."""
        return self._connection

    def _keep(self, raw: Any) -> None:
        """After a resolved commit: go on reading what ``raw`` sent before.

        psycopg 3 keeps a client-side cursor's result in memory, so it stays
        readable after its connection is gone; a server-side cursor's ends
        with its transaction anyway.
        """
        if self._raw_connection is raw and not self._named:
            self._kept = self._raw_cursor is not None
            self._live = _NOT_LIVE

    async def _failed(self, exc: Exception, statement: bool) -> None:
        """The hot path's error handler: raise what an outage of the server
        connection means; return for any other error."""
        connection = self._connection
        raw = self._raw_connection
        if not connection._outage(exc, raw):
            return
        if statement:
            raise await connection._statement_lost(raw, exc) from exc
        raise await connection._lost(raw, exc) from exc

    async def _run(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        return await self._connection._call(
            lambda raw: getattr(self._cursor_on(raw), name)(*args, **kwargs),
            statement=name not in _NOT_STATEMENTS_ASYNC,
        )

    async def execute(
        self,
        query: Any,
        params: Any = None,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> AsyncReconnectingCursor:
        """Run a query; return this cursor, as psycopg's does."""
        # The hot path of _server_method, spelled out for the common call;
        # the rest is in _execute(), so that this coroutine's frame is small.
        # A closed hot path (_NOT_LIVE) raises _NotLiveError, as in the sync
        # cursor: no test of its own.
        turn = self._turn
        if turn.busy or prepare is not None or binary is not None:
            return await self._execute(query, params, prepare, binary)
        turn.busy = True  # free, so taken at once (see _Turn.take)
        try:  # a cancellation closes first: see _close_when_cancelled()
            await self._live.execute(query, params)
        except _NotLiveError:
            pass  # the long way, after the turn is given back
        except Exception as exc:
            await self._failed(exc, True)
            raise
        except BaseException:  # cancelled, or interrupted
            self._connection._interrupted(self._raw_connection)
            raise
        else:
            return self
        finally:
            if turn.queued:
                turn.give()
            else:
                turn.busy = False  # as give(), with nobody to hand the turn to
        return await self._execute(query, params, prepare, binary)

    async def _execute(
        self, query: Any, params: Any, prepare: bool | None, binary: bool | None
    ) -> AsyncReconnectingCursor:
        options = {"prepare": prepare, "binary": binary}
        kwargs = {key: value for key, value in options.items() if value is not None}
        await self._run("execute", (query, params), kwargs)
        return self

    executemany = _server_method(
        "executemany", "Run a query for each parameter set.", True
    )
    _fetchone: Callable[..., Awaitable[Any]] = _fetch_method("fetchone", "")

    def fetchone(self) -> Awaitable[Any]:
        """Return the next row, or ``None``."""
        if self._named:  # the hot path of _fetch_method, spelled out
            return self._fetchone()
        try:
            return self._live.fetchone()
        except _NotLiveError:
            return self._fetchone()

    fetchmany = _fetch_method("fetchmany", "Return the next ``size`` rows.")
    fetchall = _fetch_method("fetchall", "Return the remaining rows.")
    __anext__ = _fetch_method("__anext__", "Return the next row.")
    scroll = _server_method("scroll", "Move the position in the result.")

    def __aiter__(self) -> AsyncReconnectingCursor:
        return self

    def stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """Yield the rows of a query as the server sends them."""
        return self._connection._iterate(
            lambda raw: self._cursor_on(raw).stream(*args, **kwargs),
            "stream()",
            hold=True,
        )

    async def close(self) -> None:
        """Close the cursor; the server connection stays open."""
        raw_cursor = self._raw_cursor
        self._detach()
        await _close_quietly(raw_cursor)

    def _close(self) -> None:
        """Close without awaiting, as psycopg's ``AsyncCursor._close()``,
        which SQLAlchemy's asyncio adaptor calls."""
        raw_cursor = self._raw_cursor
        self._detach()
        close_now = getattr(raw_cursor, "_close", None)
        if close_now is not None:
            close_now()

    async def __aenter__(self) -> AsyncReconnectingCursor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _attribute(self, name: str) -> Any:
        """Read ``name`` of the driver's cursor (see _DriverAttribute)."""
        raw_cursor = self._raw_cursor
        if raw_cursor is None:  # nothing run yet: a driver cursor to ask
            connection = self._connection
            raw = connection._raw
            if raw is None and name in self._settings:
                return self._settings[name]  # arraysize, row_factory, ...
            if raw is None and name in _UNUSED_CURSOR:
                return _UNUSED_CURSOR[name]  # never connects to say so
            raw = raw or connection._last_raw
            if raw is None:
                connection._driver_attribute(name)  # raises: not connected yet
            raw_cursor = self._cursor_on(raw)
        as_it_is, value = self._driver_attribute(raw_cursor, name)
        if as_it_is or not inspect.iscoroutinefunction(value):
            return value  # data; nextset(), setinputsizes(): no round trip
        return lambda *args, **kwargs: self._run(name, args, kwargs)

    def _set_attribute(self, name: str, value: Any) -> None:
        """Set ``name`` of the driver's cursor (see _DriverAttribute)."""
        # arraysize, row_factory, ...: set now and on every new driver cursor.
        if self._raw_cursor is not None:
            setattr(self._raw_cursor, name, value)
        self._settings = {**self._settings, name: value}


add_driver_attributes(AsyncReconnectingCursor, DRIVER_CURSOR_NAMES)
add_connection_attributes(AsyncReconnectingConnection, DRIVER_CONNECTION_NAMES)


class _AsyncTransactionBlock(TransactionBlock):
    """The sync block's rules, with ``async with``."""

    connection: AsyncReconnectingConnection  # type: ignore[assignment]

    def __enter__(self) -> TransactionBlock:
        raise TypeError("use 'async with db.transaction():' on an asyncio connection")

    async def __aenter__(self) -> _AsyncTransactionBlock:
        opening = self._opening(await self.connection._connection())
        if opening is not None:
            await self._own(opening)
        self.connection._blocks.append(self)
        return self

    async def __aexit__(self, *exc_info: object) -> bool:
        for step in self._closing(exc_info[1]):
            if step in ("commit", "rollback"):
                await getattr(self.connection, step)()
            else:
                await self._own(step)
        return self._swallows(exc_info[1])


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

    async def __aexit__(self, *exc_info: object) -> bool:
        if exc_info[1] is None:
            return False
        await self._loop.db.rollback()
        return self._loop.retried(self, exc_info[1])


async def attempts(
    db: Any,
    tries: int = 5,
    deadline: float = 30.0,
    *,
    base_pause: float = 0.01,
    max_pause: float = 0.25,
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
    loop = AttemptLoop(db, tries, deadline, base_pause, max_pause, jitter, clock)
    for attempt in loop.attempts(AsyncAttempt):
        yield attempt
        if attempt.pause is None:
            return  # it got through (or its error went to the caller)
        await sleep(attempt.pause)


# -- helpers -----------------------------------------------------------------


async def _answer(
    raw: Any, questions: Generator[Question, Any, T], rollback: bool = False
) -> T:
    """Ask ``raw`` the core's ``questions``, as the sync shell does, with
    ``await``; with ``rollback``, end the transaction they opened, once
    they concluded (as the sync shell)."""
    cursor = plain_cursor(raw)
    answer: Any = None
    try:
        question = questions.send(answer)
        while True:
            try:
                await cursor.execute(*question)
                answer = await cursor.fetchone()
            except Exception as error:
                question = questions.throw(error)
            else:
                question = questions.send(answer)
    except StopIteration as end:
        result: T = end.value
    finally:
        await _close_quietly(cursor)
    if rollback:
        await raw.rollback()
    return result


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


async def _abandon(task: asyncio.Future[Any], raw: Any) -> None:
    if raw is not None:
        _close_now(raw)
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: what it raised no longer matters


class _Turn:
    """Whose call talks to the server now; the others wait, in order.

    psycopg's connection has a lock of its own, but a task cancelled while
    it waits for that lock cannot be told from one cancelled while its
    query runs.  Waiting here first, a task cancelled before its call
    started leaves without touching the server connection.  The turn passes
    straight from one call to the next waiting one.
    """

    __slots__ = ("waiting", "busy", "queued")

    def __init__(self) -> None:
        self.busy = False
        self.waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        # Whether the turn's end is to go through give(): a flag beside
        # busy, read where the hot path ends its turn, instead of the deque
        # (one object fewer to reach for on every query).
        self.queued = False

    async def take(self) -> None:
        if not self.busy:
            self.busy = True
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiting.append(waiter)
        self.queued = True
        try:
            await waiter
        except BaseException:
            if waiter.cancelled():
                if waiter in self.waiting:
                    self.waiting.remove(waiter)
            else:
                self.give()  # handed the turn as it was cancelled: pass it on
            raise

    def give(self) -> None:
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # busy stays true: the turn is handed on
                return
        self.busy = self.queued = False


_COROUTINE = types.CoroutineType


@types.coroutine
def _closing_first(
    call: Awaitable[Any],
    connection: AsyncReconnectingConnection,
    raw: Any,
    what: str = "call",
) -> Generator[Any, Any, Any]:
    """Await the driver's ``call`` on ``raw``; if the task is cancelled
    meanwhile, drop ``raw`` before the driver learns of it.

    psycopg answers a cancelled query by asking the server to cancel it and
    waiting for the query to end, up to ten seconds on a link that lost its
    packets, far beyond the caller's ``asyncio.timeout()``.  Closed first,
    the connection has no query left to wait for, and the cancellation goes
    on at once; the server is asked to cancel the query in the background.
    """
    # A coroutine steps itself; its __await__() would add a wrapper.
    steps: Any = call if type(call) is _COROUTINE else call.__await__()
    send = steps.send
    try:  # one try for the whole call: the hot path's cost is per step
        future = send(None)
        while True:
            try:
                value = yield future
            except GeneratorExit:  # abandoned mid-call: its query is in no known state
                connection._interrupted(raw, what)
                steps.close()
                raise
            except BaseException as exc:
                if not isinstance(exc, Exception):  # cancelled, or interrupted
                    connection._interrupted(raw, what)
                future = steps.throw(exc)
            else:
                future = send(value)
    except StopIteration as done:
        return done.value


def _close_when_cancelled(raw: Any) -> None:
    """Make ``raw`` close itself as soon as a call on it is cancelled.

    Every call of psycopg's ``AsyncConnection`` awaits its ``wait()``,
    which answers a cancellation by asking the server to cancel the query
    and waiting for the query to end: up to ten seconds on a link that lost
    its packets.  The ``wait()`` given here closes the server connection at
    once instead, and the server is asked to cancel the query in the
    background.  It costs a call no more than psycopg's own, which is why
    the hot path relies on it; other calls are stepped by
    :func:`_closing_first` as well, which also knows what the call was.
    (An attribute of the object, not a subclass: assigning ``__class__``
    would give the connection a real ``__dict__``, and every attribute read
    of it, psycopg's own included, would be slower.)
    """
    pgconn = getattr(raw, "pgconn", None)
    wait_async = getattr(sys.modules.get("psycopg.waiting"), "wait_async", None)
    own = getattr(getattr(type(raw), "wait", None), "__code__", None)
    if pgconn is None or wait_async is None or own is None:
        return  # not psycopg's connection: nothing to replace
    if own.co_varnames[:4] != ("self", "gen", "interval", "timeout"):
        # A wait() we do not know (tests/test_hot_path.py tells): a call
        # cancelled on the hot path waits as psycopg waits, then closes.
        return
    interval = type(raw).wait.__defaults__[0]

    # psycopg's signature, so that its calls of wait() stay quick
    async def wait(gen: Any, interval: float = interval, timeout: Any = None) -> Any:
        try:
            return await wait_async(
                gen, pgconn.socket, interval=interval, timeout=timeout
            )
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled, or interrupted
                _close_pgconn_now(pgconn, cancel_query=True)
            raise

    raw.wait = wait


def _outcome_unknown(transaction_id: str, error: BaseException) -> None:
    """Say which transaction a cancelled commit leaves in doubt."""
    log.warning(
        "Commit of transaction %s cancelled; its outcome is unknown", transaction_id
    )
    error.add_note(f"the outcome of transaction {transaction_id} is unknown")


# libpq's PQTRANS_ACTIVE (a query is running on the connection), and the
# PGRES_POLLING_* values that ask to wait for the socket.
_QUERY_RUNNING = 1
_POLLING_READING, _POLLING_WRITING = 1, 2
# How long a cancel request sent in the background may take.
_CANCEL_SECONDS = 5.0
_background: set[asyncio.Task[None]] = set()  # cancel requests under way


def _close_now(raw: Any, cancel_query: bool = True) -> None:
    """Close a server connection without awaiting (psycopg's socket closes now);
    a query it was running is cancelled in the background (if ``cancel_query``)."""
    pgconn = getattr(raw, "pgconn", None)
    if pgconn is None:
        asyncio.ensure_future(_close_quietly(raw))
    else:
        _close_pgconn_now(pgconn, cancel_query)


def _close_pgconn_now(pgconn: Any, cancel_query: bool) -> None:
    """Close psycopg's ``pgconn`` now, as ``_close_now()`` says."""
    try:
        if cancel_query and pgconn.transaction_status == _QUERY_RUNNING:
            _cancel_in_background(pgconn)
    except Exception:
        pass  # the query runs on until the server notices the closed socket
    finally:
        pgconn.finish()


def _cancel_in_background(pgconn: Any) -> None:
    """Ask the server to cancel the query running on ``pgconn``, which is
    about to close, so that the query does not run on; nobody waits."""
    try:
        cancel_conn = pgconn.cancel_conn()  # libpq 17 and later: no thread
    except Exception:
        cancel = pgconn.get_cancel()
        threading.Thread(target=cancel.cancel, daemon=True).start()
        return
    task = asyncio.ensure_future(_send_cancel(cancel_conn))
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _send_cancel(cancel_conn: Any) -> None:
    """Drive libpq's non-blocking cancel request, for a few seconds at most."""
    loop = asyncio.get_running_loop()
    until = loop.time() + _CANCEL_SECONDS
    try:
        # First let the cancelled task stop watching the closed socket,
        # whose number the new socket may be given.
        await asyncio.sleep(0)
        cancel_conn.start()
        while True:
            polling = cancel_conn.poll()
            if polling == _POLLING_READING:
                watch, unwatch = loop.add_reader, loop.remove_reader
            elif polling == _POLLING_WRITING:
                watch, unwatch = loop.add_writer, loop.remove_writer
            else:
                return  # sent, or failed: either way, nothing more to do
            ready = loop.create_future()
            fileno = cancel_conn.socket
            watch(fileno, _set_ready, ready)
            try:
                await _before(until, ready)
            finally:
                unwatch(fileno)
    except Exception:
        pass  # the server connection is closed anyway
    finally:
        cancel_conn.finish()


def _set_ready(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def _close_quietly(thing: Any) -> None:
    if thing is None:
        return
    try:
        await thing.close()
    except Exception:
        pass  # it is broken already; closing is only to free the socket
