"""A DB-API connection that survives the loss of its server connection.

:class:`ReconnectingConnection` wraps a connection factory (a function that
returns a new DB-API connection each time it is called).  When an operation
finds the server gone, the operation raises :class:`Retry` and the
connection refuses all work until the caller calls ``rollback()``.  After
that, the same connection and cursor objects carry on with a fresh server
connection from the factory.

This module uses the standard library only and duck-types the driver, so it
can be copied into a project on its own.
"""

from __future__ import annotations

import logging
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from fnmatch import fnmatchcase
from types import TracebackType
from typing import Any

__all__ = [
    "Attempt",
    "CommitOutcomeUnknown",
    "DisconnectedConnectionError",
    "ReconnectingConnection",
    "ReconnectingCursor",
    "Retry",
    "attempts",
    "is_disconnection",
]

log = logging.getLogger("reconnecting")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class Retry(Exception):  # noqa: N818 (the name Zope code catches)
    """The unit of work was interrupted by an outage: roll back and redo it.

    ``orig_exc`` is the ``sys.exc_info()`` triple of the error that caused it,
    as with ``zope.publisher``'s ``Retry``.
    """

    def __init__(self, orig_exc: ExcInfo | None = None) -> None:
        super().__init__(orig_exc)
        self.orig_exc = orig_exc

    def getOriginalException(self) -> ExcInfo | None:  # noqa: N802 (Zope API)
        """Return the ``(type, value, traceback)`` triple of the cause."""
        return self.orig_exc

    def __str__(self) -> str:
        if self.orig_exc is None:
            return "Retry"
        exc_type, exc, _ = self.orig_exc
        return f"{exc_type.__name__}: {exc}".strip()


class DisconnectedConnectionError(Exception):
    """The connection was lost and ``rollback()`` has not been called yet."""


class CommitOutcomeUnknown(Exception):  # noqa: N818 (it is not an error of ours)
    """The connection broke during ``COMMIT`` and the outcome is unknown.

    The transaction may or may not have committed, so redoing it is not
    safe.  ``transaction_id`` is the server's id for it and ``reason`` says
    why the server could not tell.  Once the server is back, and if it has
    not restarted since, ``SELECT pg_xact_status('<id>')`` tells what
    happened; after a restart the id may belong to another transaction, and
    only the data itself can tell.  Like after any outage, the connection
    needs ``rollback()`` before further use.
    """

    def __init__(self, transaction_id: str, reason: str) -> None:
        super().__init__(transaction_id, reason)
        self.transaction_id = transaction_id
        self.reason = reason

    def __str__(self) -> str:
        return f"transaction {self.transaction_id}: {self.reason}"


# SQLSTATEs that mean the session is gone: admin shutdown, crash shutdown,
# cannot connect now, database dropped, idle session timeout, and the idle
# in transaction / transaction timeouts.  Class 08 is handled separately.
DISCONNECT_SQLSTATES = frozenset(
    {"57P01", "57P02", "57P03", "57P04", "57P05", "25P03", "25P04"}
)
# Exception classes that mean the link is gone whatever they say, known by
# name so that no driver is imported: psycopg 3 raises ConnectionTimeout,
# with no SQLSTATE, when connect_timeout runs out.
DISCONNECT_CLASSES = frozenset({"ConnectionTimeout"})
# Severities after which the server ends the session (psycopg 3 and
# psycopg2 both expose them as diag.severity_nonlocalized).
SESSION_ENDING_SEVERITIES = frozenset({"FATAL", "PANIC"})
# What libpq, the drivers and PgBouncer say when the link breaks; used only
# when the error carries no SQLSTATE.  Each is the start of a line of the
# message, lower case, after the prefixes below; "*" stands for any text.
DISCONNECT_MESSAGES = (
    "server closed the connection unexpectedly",
    "could not receive data from server",
    "could not send data to server",
    "ssl syscall error",
    "ssl connection has been closed unexpectedly",
    "ssl error: unexpected eof",
    "connection already closed",
    "no connection to the server",
    "lost synchronization with server",
    "the connection is lost",
    "the connection is closed",
    "connection socket closed",
    "connection not open",
    "terminating connection",
    "connection reset by peer",
    "broken pipe",
    # PgBouncer ends a client's session with these (SQLSTATE 08P01, which
    # a driver may not pass on once the socket is closed).
    "server conn crashed?",
    "client_idle_timeout",
    "query_timeout",
    "idle transaction timeout",
    "admin forced disconnect",
    "database removed",
    "server shutting down",
    "pooler is shutting down",
)
# Connect failures that mean "no server there right now", or none of the
# kind target_session_attrs asks for yet, as opposed to "you may not come
# in" (REFUSAL_MESSAGES).
UNREACHABLE_MESSAGES = DISCONNECT_MESSAGES + (
    "connection refused",
    "could not connect to server",
    "timeout expired",
    "connection timeout expired",
    "connection timed out",
    "no route to host",
    "network is unreachable",
    "no such file or directory",  # unix socket missing: server down
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "the database system is not accepting connections",
    "sorry, too many clients already",
    "too many connections for role",
    "too many connections for database",
    "remaining connection slots are reserved",
    # target_session_attrs: the server is up but not of the kind asked for,
    # as during a failover (libpq 14+, then older libpq).
    "session is read-only",
    "session is not read-only",
    "server is in hot standby mode",
    "server is not in hot standby mode",
    '"show transaction_read_only" failed',
    '"select pg_is_in_recovery()" failed',
    "could not make a writable connection to server",
    # PgBouncer has no server connection to give (yet).
    "no more connections allowed (max_client_conn)",
    "server login has been failing",
    "client_login_timeout (server down)",
    "query_wait_timeout",
    'database "*" is disabled',
)
# Connect failures that are an answer, not an absence: trying again gives
# the same answer.  A message with one of these anywhere in any line is a
# refusal, even if another host of a multi-host DSN was unreachable.
REFUSAL_MESSAGES = (
    "*authentication failed*",
    "*does not exist*",
    "*no pg_hba.conf entry*",
    "*pg_hba.conf rejects connection*",
    "*permission denied*",
    "*no such database*",  # PgBouncer
    "*no such user*",  # PgBouncer
)
# What stands before the message proper on a line: psycopg 3's line per
# host tried, libpq 14+'s "connection to server at ... failed: ", psycopg
# 3's "<what it was doing> failed: ", PgBouncer's cached login error, and
# a severity.
_LINE_PREFIX = re.compile(
    r"- host: .*?, port: .*?, hostaddr: .*?: "
    r"|connection to server .*? failed: "
    r"|connection is bad: "
    r"|[a-z][a-z ]* failed: "
    r"|server login has been failing, cached error: "
    r"|(?:fatal|panic|error): "
)


def _sqlstate(exc: BaseException) -> str | None:
    # psycopg 3 calls it sqlstate, psycopg2 pgcode.
    return getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)


def _ends_session(exc: BaseException) -> bool:
    severity = getattr(getattr(exc, "diag", None), "severity_nonlocalized", None)
    return severity in SESSION_ENDING_SEVERITIES


def _lines(exc: BaseException) -> Iterator[str]:
    """Yield each line of the message, lower case, prefixes removed."""
    for line in str(exc).lower().splitlines():
        line = line.strip()
        while prefix := _LINE_PREFIX.match(line):
            line = line[prefix.end() :].lstrip()
        yield line


def _says(exc: BaseException, messages: tuple[str, ...]) -> bool:
    return any(
        fnmatchcase(line, message + "*") for line in _lines(exc) for message in messages
    )


def is_disconnection(exc: BaseException, raw_connection: Any | None) -> bool:
    """Tell whether ``exc`` means the server connection is lost.

    ``raw_connection`` is the driver connection the error came from, or
    ``None`` when the error came from the connection factory.  The rules run
    from structure to text: the driver's own verdict on the connection, the
    exception's class, the SQLSTATE and the severity, and only when there is
    no SQLSTATE, the message.
    """
    if not isinstance(exc, Exception):
        return False
    # psycopg2: closed is 0 open, 1 closed, 2 broken; psycopg 3 has broken.
    if raw_connection is not None and (
        getattr(raw_connection, "closed", False)
        or getattr(raw_connection, "broken", False)
    ):
        return True
    if any(cls.__name__ in DISCONNECT_CLASSES for cls in type(exc).__mro__):
        return True
    sqlstate = _sqlstate(exc)
    if raw_connection is None:
        # Connecting: only "nobody is there (yet)" counts, never a refusal.
        if sqlstate is not None:
            return sqlstate.startswith("08") or sqlstate in ("57P03", "53300")
        return not _says(exc, REFUSAL_MESSAGES) and _says(exc, UNREACHABLE_MESSAGES)
    if sqlstate is not None and (
        sqlstate.startswith("08") or sqlstate in DISCONNECT_SQLSTATES
    ):
        return True
    if _ends_session(exc):
        return True
    if sqlstate is not None:
        return False
    return _says(exc, DISCONNECT_MESSAGES)


def _already_disconnected() -> Retry:
    error = DisconnectedConnectionError("Already disconnected")
    return Retry((DisconnectedConnectionError, error, None))


class ReconnectingConnection:
    """A DB-API connection that reconnects after ``rollback()``.

    ``connection_factory`` is called with no arguments whenever a server
    connection is needed, first on first use.  Session settings made through
    this object (``autocommit``, ``isolation_level``, ``readonly``,
    ``deferrable``, ``set_session()``, ``set_isolation_level()``) are
    remembered and applied to every new server connection.

    With ``resolve_commit=True``, a ``commit()`` whose connection breaks
    before its reply arrives asks the server, over a new connection, what
    became of the transaction, for up to ``resolve_timeout`` seconds: see
    :meth:`commit`.
    """

    _SESSION_METHODS = frozenset({"set_session", "set_isolation_level"})

    def __init__(
        self,
        connection_factory: Callable[[], Any],
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
        self._disconnected = False
        self._closed = False
        self._session: dict[str, tuple[str, tuple, dict]] = {}
        self._lock = threading.RLock()
        self._disconnects = 0
        self._reconnects = 0

    # -- state ---------------------------------------------------------------

    @property
    def disconnects(self) -> int:
        """How many times a lost server connection was noticed."""
        return self._disconnects

    @property
    def reconnects(self) -> int:
        """How many server connections were made after a disconnection."""
        return self._reconnects

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def _state(self) -> str:
        if self._closed:
            return "closed"
        if self._disconnected:
            return "disconnected"
        return "connected" if self._raw is not None else "not connected"

    def __repr__(self) -> str:
        name = f"{type(self).__module__}.{type(self).__qualname__}"
        return f"<{name} {self._state()} at {id(self):#x}>"

    def _closed_error(self, what: str = "connection") -> Exception:
        # Behave like a closed driver connection: PEP 249's optional
        # Connection.InterfaceError names the driver's class.
        error_class = getattr(self._last_raw, "InterfaceError", None)
        if not (isinstance(error_class, type) and issubclass(error_class, Exception)):
            error_class = DisconnectedConnectionError
        return error_class(f"{what} already closed")

    def _connection(self) -> Any:
        """Return the current server connection, making one if needed."""
        raw = self._raw
        if raw is not None and not self._disconnected:
            return raw
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if self._disconnected:
                raise _already_disconnected()
            if self._raw is None:
                self._raw = self._connect()
            return self._raw

    def _open(self) -> Any:
        """Make a server connection with the remembered session settings."""
        raw = self._factory()
        try:
            for kind, name, args, kwargs in self._session.values():
                if kind == "attr":
                    setattr(raw, name, args[0])
                else:
                    getattr(raw, name)(*args, **kwargs)
        except BaseException:
            _close_quietly(raw)
            raise
        return raw

    def _connect(self) -> Any:
        try:
            raw = self._open()
        except Exception as exc:
            if not is_disconnection(exc, None):
                raise
            self._disconnected = True
            self._disconnects += 1
            log.warning("Could not reconnect to the database: %s", _describe(exc))
            raise Retry(sys.exc_info()) from exc
        if self._last_raw is not None:
            self._reconnects += 1
            log.info("Reconnected to the database")
        self._last_raw = raw
        return raw

    def _lost(self, raw: Any, exc: Exception) -> Retry:
        """Enter the disconnected state if ``raw`` is still the current one."""
        with self._lock:
            if self._raw is raw and not self._disconnected:
                self._raw = None
                self._disconnected = True
                self._disconnects += 1
                log.warning("Database connection lost: %s", _describe(exc))
                _close_quietly(raw)
        return Retry(sys.exc_info())

    def _call(self, function: Callable[[Any], Any]) -> Any:
        """Run ``function(raw_connection)``, turning disconnections into Retry."""
        raw = self._connection()
        try:
            return function(raw)
        except Exception as exc:
            if self._closed or not is_disconnection(exc, raw):
                raise
            raise self._lost(raw, exc) from exc

    # -- DB-API --------------------------------------------------------------

    def cursor(self, *args: Any, **kwargs: Any) -> ReconnectingCursor:
        """Return a cursor that follows this connection across reconnects."""
        if self._closed:
            raise self._closed_error()
        return ReconnectingCursor(self, args, kwargs)

    def commit(self) -> None:
        """Commit; raises :class:`Retry` if the server connection is lost.

        With ``resolve_commit``, a commit interrupted after the transaction
        wrote something is resolved instead: if the server committed it,
        ``commit()`` returns normally over the new connection; if it rolled
        it back, ``Retry`` is raised; if nobody can tell in time,
        :class:`CommitOutcomeUnknown`.
        """
        if self._raw is None and not self._disconnected and not self._closed:
            return  # nothing was done, so there is nothing to commit
        if not self._resolve_commit:
            return self._call(lambda raw: raw.commit())
        raw = self._connection()
        written = None
        try:
            written = self._transaction_id(raw)
            raw.commit()
        except Exception as exc:
            if self._closed or not is_disconnection(exc, raw):
                raise
            retry = self._lost(raw, exc)
            if written is None:
                raise retry from exc  # nothing was written: safe to redo
            self._resolve(*written, retry, exc)

    def _transaction_id(self, raw: Any) -> tuple[str, tuple] | None:
        """Return the open transaction's id and server, if it wrote anything."""
        # 0 is idle, 3 in error: nothing that COMMIT could make durable.
        if raw.info.transaction_status in (0, 3):
            return None
        # The server's identity is asked once per server connection, with
        # the first id: reading it (pg_control_system) costs a file read.
        known = self._server
        ask_server = known is None or known[0] is not raw
        cursor = raw.cursor()
        try:
            cursor.execute(_id_query(raw.info.server_version, ask_server))
            row = cursor.fetchone()
        finally:
            cursor.close()
        if ask_server:
            self._server = known = (raw, row[1:])
        return None if row[0] is None else (row[0], known[1])

    def _resolve(
        self, transaction_id: str, server: tuple, retry: Retry, exc: Exception
    ) -> None:
        """Find out what became of an interrupted commit; see :meth:`commit`."""
        deadline = time.monotonic() + self._resolve_timeout
        pause = 0.01
        raw, status = None, "unreachable"
        while time.monotonic() < deadline:
            try:
                raw = raw or self._open()
                status = _transaction_status(raw, transaction_id, server)
            except Exception as error:
                if not is_disconnection(error, raw):
                    status = f"status query failed ({_describe(error)})"
                    break
                _close_quietly(raw)
                raw, status = None, "unreachable"
            if status != "in progress" and status != "unreachable":
                break
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.5)
        if status == "committed":
            with self._lock:
                if self._disconnected and self._raw is None and not self._closed:
                    self._raw, self._disconnected = raw, False
                    self._reconnects += 1
                    raw = None
            _close_quietly(raw)
            log.info("Commit of transaction %s confirmed", transaction_id)
            return
        _close_quietly(raw)
        if status == "aborted":
            log.info("Transaction %s was rolled back; retrying", transaction_id)
            raise retry from exc
        log.error("Outcome of transaction %s unknown: %s", transaction_id, status)
        raise CommitOutcomeUnknown(transaction_id, status) from exc

    def rollback(self) -> None:
        """Roll back, and leave the disconnected state.

        A lost server connection rolls back by itself, so this never raises
        for a disconnection: the next operation reconnects.
        """
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if self._disconnected:
                self._disconnected = False
                return
            raw = self._raw
        if raw is None:
            return
        try:
            raw.rollback()
        except Exception as exc:
            if self._closed or not is_disconnection(exc, raw):
                raise
            self._lost(raw, exc)
            with self._lock:
                self._disconnected = False

    def close(self) -> None:
        """Close for good; later use raises the driver's ``InterfaceError``."""
        with self._lock:
            self._closed = True
            raw, self._raw = self._raw, None
        if raw is not None:
            _close_quietly(raw)

    # -- everything else goes to the driver connection -------------------------

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = self._call(lambda raw: getattr(raw, name))
        if not callable(value):
            return value

        def call_on_current_connection(*args: Any, **kwargs: Any) -> Any:
            if name in self._SESSION_METHODS:
                return self._set_session(name, "call", name, args, kwargs)
            return self._call(lambda raw: getattr(raw, name)(*args, **kwargs))

        return call_on_current_connection

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self._set_session(name, "attr", name, (value,), {})

    def _set_session(
        self, key: str, kind: str, name: str, args: tuple, kwargs: dict
    ) -> Any:
        """Apply a session setting now if connected, and on every reconnect."""
        with self._lock:
            raw = self._raw if not self._disconnected else None
        result = None
        if raw is not None:
            if kind == "attr":
                self._call(lambda raw: setattr(raw, name, args[0]))
            else:
                result = self._call(lambda raw: getattr(raw, name)(*args, **kwargs))
        elif self._closed:
            raise self._closed_error()
        self._session[key] = (kind, name, args, kwargs)
        return result


def _server_method(name: str, doc: str) -> Callable[..., Any]:
    """Make a cursor method that calls the driver cursor's method ``name``."""

    def method(self: ReconnectingCursor, *args: Any, **kwargs: Any) -> Any:
        # The hot path, kept short: one check, then straight to the driver.
        connection = self._connection
        raw = connection._raw  # None while disconnected or closed
        if raw is None or raw is not self._raw_connection:
            return self._run(name, *args, **kwargs)  # (re)connect, new cursor
        try:
            return getattr(self._raw_cursor, name)(*args, **kwargs)
        except Exception as exc:
            if connection._closed or not is_disconnection(exc, raw):
                raise
            raise connection._lost(raw, exc) from exc

    method.__name__ = method.__qualname__ = name
    method.__doc__ = doc
    return method


class ReconnectingCursor:
    """A cursor of a :class:`ReconnectingConnection`.

    It remembers the arguments it was made with and makes the driver cursor
    again on each new server connection, so the same cursor object keeps
    working after ``rollback()``.  Methods that talk to the server raise
    :class:`Retry` when the server connection is lost.
    """

    def __init__(
        self, connection: ReconnectingConnection, args: tuple, kwargs: dict
    ) -> None:
        self._connection = connection
        self._args = args
        self._kwargs = kwargs
        self._raw_connection: Any | None = None
        self._raw_cursor: Any | None = None
        self._settings: dict[str, Any] = {}
        self._closed = False

    @property
    def connection(self) -> ReconnectingConnection:
        """The :class:`ReconnectingConnection` this cursor belongs to."""
        return self._connection

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

    def _run(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._connection._call(
            lambda raw: getattr(self._cursor_on(raw), name)(*args, **kwargs)
        )

    execute = _server_method("execute", "Run a query, as the driver's ``execute()``.")
    executemany = _server_method("executemany", "Run a query for each parameter set.")
    callproc = _server_method("callproc", "Call a stored procedure.")
    fetchone = _server_method("fetchone", "Return the next row, or ``None``.")
    fetchmany = _server_method("fetchmany", "Return the next ``size`` rows.")
    fetchall = _server_method("fetchall", "Return the remaining rows.")
    __next__ = _server_method("__next__", "Return the next row.")

    def __iter__(self) -> Iterator[Any]:
        return self

    def close(self) -> None:
        """Close the cursor; the server connection stays open."""
        self._closed = True
        raw_cursor, self._raw_cursor = self._raw_cursor, None
        self._raw_connection = None
        if raw_cursor is not None:
            _close_quietly(raw_cursor)

    def __enter__(self) -> ReconnectingCursor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = self._connection._call(lambda raw: getattr(self._cursor_on(raw), name))
        if not callable(value):
            return value

        def call_on_current_cursor(*args: Any, **kwargs: Any) -> Any:
            return self._run(name, *args, **kwargs)

        return call_on_current_cursor

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            # arraysize, itersize, ...: set now and on every new driver cursor.
            self._connection._call(
                lambda raw: setattr(self._cursor_on(raw), name, value)
            )
            self._settings[name] = value


# Which server assigned a transaction id, and since when: an id means
# nothing on another cluster (the next host of a multi-host DSN), and after
# a restart it may have been handed out again (see _transaction_status).
_SERVER = (
    "(SELECT system_identifier FROM pg_control_system())::text,"
    " pg_postmaster_start_time()::text"
)


def _id_query(server_version: int, ask_server: bool) -> str:
    """The query for the open transaction's id (and the server's identity)."""
    current = (
        "pg_current_xact_id_if_assigned()"
        if server_version >= 130000
        else "txid_current_if_assigned()"
    )
    return f"SELECT {current}::text" + (", " + _SERVER) * ask_server


def _status_questions(
    server_version: int, transaction_id: str, server: tuple
) -> Generator[tuple, Any, str]:
    """The rules for what became of a transaction, as questions to the server.

    Yields ``(query, params)``, is sent the first row of each answer (or
    thrown its error), and returns 'committed', 'aborted', 'in progress',
    or why the server cannot tell; the sync and the async connection ask
    alike.
    """
    now = yield f"SELECT {_SERVER}", ()
    if now[0] != server[0]:
        return "reconnected to another cluster, which cannot tell"
    if server_version >= 130000:
        query = "SELECT pg_xact_status(%s::xid8)"
    else:
        query = "SELECT txid_status(%s::bigint)"
    try:
        (status,) = yield query, (transaction_id,)
    except Exception as error:
        if _sqlstate(error) != "22023":
            raise
        # "transaction ID ... is in the future": after a crash, the server
        # never logged it, so it never committed.
        status = "aborted"
    if status is None:
        return "the server no longer knows it"
    if now[1] != server[1]:
        # The server restarted.  A transaction lost in a crash leaves its id
        # free for the next one, whose status this may be; only a durable
        # commit keeps the id ours.  So anything but "committed" means ours
        # did not commit, and "committed" proves nothing.
        if status == "committed":
            return "the server restarted, and the id may have been reused"
        return "aborted"
    return status


def _transaction_status(raw: Any, transaction_id: str, server: tuple) -> str:
    """Ask the server: 'committed', 'aborted', 'in progress', or why not."""
    questions = _status_questions(raw.info.server_version, transaction_id, server)
    cursor = raw.cursor()
    try:
        question = next(questions)
        while True:
            try:
                cursor.execute(*question)
                answer = cursor.fetchone()
            except Exception as error:
                question = questions.throw(error)
            else:
                question = questions.send(answer)
    except StopIteration as end:
        return end.value
    finally:
        cursor.close()
        raw.rollback()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip()}"


def _close_quietly(thing: Any) -> None:
    try:
        thing.close()
    except Exception:
        pass  # it is broken already; closing is only to free the socket


# -- the retry loop ----------------------------------------------------------


class Attempt:
    """One try of a unit of work, made by :func:`attempts`; use it as
    ``with attempt:``.

    Leaving the block with :class:`Retry` rolls the connection back and,
    unless the loop is out of tries or time, swallows the error: the loop
    then pauses and makes the next attempt.  Any other error also rolls the
    connection back, and goes on to the caller.
    """

    def __init__(self, loop: _AttemptLoop, number: int) -> None:
        self._loop = loop
        #: 1 for the first attempt, 2 for the second, ...
        self.number = number
        #: The :class:`Retry` this attempt ended with, if it was retried.
        self.error: Retry | None = None
        #: Seconds the loop pauses after this attempt, if it was retried.
        self.pause: float | None = None

    def __repr__(self) -> str:
        return f"<Attempt {self.number} of {self._loop.tries}>"

    def __enter__(self) -> Attempt:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None:
            return False
        self._loop.db.rollback()
        if not isinstance(exc, Retry):
            return False
        pause = self._loop.pause_after(self.number)
        if pause is None:
            return False  # out of tries or time: the last Retry goes on
        self.error, self.pause = exc, pause
        log.debug("Attempt %d interrupted; next in %.3f s", self.number, pause)
        return True


class _AttemptLoop:
    def __init__(
        self,
        db: Any,
        tries: int,
        give_up_at: float,
        base_pause: float,
        max_pause: float,
        jitter: Callable[[], float],
        clock: Callable[[], float],
    ) -> None:
        self.db = db
        self.tries = tries
        self.give_up_at = give_up_at
        self.base_pause = base_pause
        self.max_pause = max_pause
        self.jitter = jitter
        self.clock = clock

    def pause_after(self, number: int) -> float | None:
        """The pause after failed attempt ``number``, or None to give up."""
        if number >= self.tries:
            return None
        # Full jitter: anywhere between nothing and the exponential step, so
        # that clients that failed together do not come back together.
        step = min(self.max_pause, self.base_pause * 2.0 ** (number - 1))
        pause = self.jitter() * step
        if self.clock() + pause > self.give_up_at:
            return None  # no attempt starts after the deadline
        return pause


def attempts(
    db: Any,
    tries: int = 5,
    deadline: float = 30.0,
    *,
    base_pause: float = 0.01,
    max_pause: float = 1.0,
    sleep: Callable[[float], object] = time.sleep,
    jitter: Callable[[], float] = random.random,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Attempt]:
    """Run a unit of work until it gets through an outage; see :class:`Attempt`.

    ::

        for attempt in attempts(db, tries=5, deadline=30.0):
            with attempt:
                unit_of_work()  # which ends with db.commit()

    ``db`` is the :class:`ReconnectingConnection` the unit of work uses
    (anything with ``rollback()`` will do).  An attempt that fails with
    :class:`Retry` is rolled back, and after a pause the next one starts.
    The pause after the *n*-th failed attempt is a random fraction of an
    exponential step (full jitter)::

        jitter() * min(max_pause, base_pause * 2 ** (n - 1))

    that is, up to 10 ms, 20 ms, 40 ms, ... and never more than a second by
    default.  The loop gives up after ``tries`` attempts, or when the next
    one would start more than ``deadline`` seconds after the loop began,
    and raises the last :class:`Retry`.  :class:`CommitOutcomeUnknown` and
    every other error roll the connection back and propagate at once.

    ``sleep``, ``jitter`` (a number from 0 to 1) and ``clock`` are there
    for tests; each :class:`Attempt` records its ``pause``.
    """
    if tries < 1:
        raise ValueError(f"tries must be at least 1, not {tries!r}")
    loop = _AttemptLoop(
        db, tries, clock() + deadline, base_pause, max_pause, jitter, clock
    )
    for number in range(1, tries + 1):
        attempt = Attempt(loop, number)
        yield attempt
        if attempt.pause is None:
            return  # it got through (or its error went to the caller)
        sleep(attempt.pause)
