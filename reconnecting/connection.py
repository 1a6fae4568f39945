"""A DB-API connection that survives the loss of its server connection.

:class:`ReconnectingConnection` wraps a connection factory (a function that
returns a new DB-API connection each time it is called).  When an operation
finds the server gone, the operation raises :class:`Retry` and the
connection refuses all work until the caller calls ``rollback()``.  After
that, the same connection and cursor objects carry on with a fresh server
connection from the factory.  With psycopg2 or with psycopg 3, alike::

    import psycopg2
    db = ReconnectingConnection(lambda: psycopg2.connect(dsn))

    import psycopg
    db = ReconnectingConnection(lambda: psycopg.connect(dsn))

This module uses the standard library only and duck-types the driver, so it
can be copied into a project on its own.

It is also the core that ``reconnecting/aio.py`` (the asyncio shell) shares
with the sync one here: the public names outside ``__all__``
(``ConnectionState``, ``Resolution``, ``AttemptLoop``, ``TransactionBlock``,
``RememberedSettings``, ``is_outage()``, ``status_questions()``, ...) are
its building blocks, for the shells rather than for applications.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Generator, Iterator, Mapping
from fnmatch import fnmatchcase
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

__all__ = [
    "Attempt",
    "CommitOutcomeUnknown",
    "DisconnectedConnectionError",
    "ReconnectingConnection",
    "ReconnectingCursor",
    "Retry",
    "StatementOutcomeUnknown",
    "attempts",
    "is_disconnection",
]

log = logging.getLogger("reconnecting")
# A library logs, the application decides where it goes: without this, an
# application that configured no logging would see every outage warning on
# stderr, through Python's handler of last resort.  It is here, not in the
# package, so that a copy of this module alone is silent too.
log.addHandler(logging.NullHandler())

A = TypeVar("A", bound="Attempt")
T = TypeVar("T")
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

    def __init__(self, transaction_id: str | None, reason: str) -> None:
        super().__init__(transaction_id, reason)
        self.transaction_id = transaction_id
        self.reason = reason

    def __str__(self) -> str:
        if self.transaction_id is None:
            return self.reason
        return f"transaction {self.transaction_id}: {self.reason}"


class StatementOutcomeUnknown(CommitOutcomeUnknown):
    """A statement in autocommit mode lost its connection before its reply.

    In autocommit mode each statement commits itself as it ends, so the
    statement may have run and committed: it is not safe to redo blindly,
    and, unlike :class:`Retry`, retry loops let it through.  There is no
    ``transaction_id`` (``None``): the server gives none before a
    statement writes.  A read-only session (the server's
    ``default_transaction_read_only``) or a standby cannot have written,
    so its statements raise :class:`Retry` instead.  Like after any outage,
    the connection needs ``rollback()`` before further use.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(None, reason)


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


def is_disconnection(
    exc: BaseException, raw_connection: Any | None, standby_session: bool = False
) -> bool:
    """Tell whether ``exc`` means the server connection is lost.

    ``raw_connection`` is the driver connection the error came from, or
    ``None`` when the error came from the connection factory.  The rules run
    from structure to text: the driver's own verdict on the connection, the
    exception's class, the SQLSTATE and the severity, and only when there is
    no SQLSTATE, the message.  ``standby_session`` says that
    ``raw_connection`` was made to a hot standby: a transaction begun before
    a promotion stays read-only after it, while the server already reports
    itself a primary, and its read-only error is still the standby's.
    The answer depends on the arguments only.
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
        # A SQLSTATE here comes from a query the factory ran after connecting.
        if sqlstate is not None:
            return (
                sqlstate.startswith("08")
                or sqlstate in DISCONNECT_SQLSTATES
                or sqlstate == "53300"
                or _ends_session(exc)
            )
        return not _says(exc, REFUSAL_MESSAGES) and _says(exc, UNREACHABLE_MESSAGES)
    if sqlstate is not None and (
        sqlstate.startswith("08") or sqlstate in DISCONNECT_SQLSTATES
    ):
        return True
    if _ends_session(exc):
        return True
    if sqlstate == "25006" and (standby_session or _in_hot_standby(raw_connection)):
        return True  # a standby, not the primary we need: find one
    if sqlstate is not None:
        return False
    return _says(exc, DISCONNECT_MESSAGES)


def cannot_write(raw: Any, standby_session: bool = False) -> bool:
    """True if the server said the session is read-only, or a standby
    (``standby_session``: ``raw`` was made to one)."""
    if standby_session or _in_hot_standby(raw):
        return True
    try:
        return bool(raw.info.parameter_status("default_transaction_read_only") == "on")
    except Exception:
        return False  # not known: it may have written


def statement_in_doubt(exc: Exception) -> StatementOutcomeUnknown:
    """What a statement in autocommit mode that lost its connection raises."""
    first_line = (describe(exc).splitlines() or [""])[0]
    log.error("A statement in autocommit mode may have run: %s", first_line)
    return StatementOutcomeUnknown(
        "the connection was lost while a statement ran in autocommit mode,"
        f" so it may have committed ({first_line})"
    )


def _in_hot_standby(raw_connection: Any) -> bool:
    """True if the server said it is a hot standby (PostgreSQL 14+ reports
    ``in_hot_standby`` to the client, so this asks the driver, not the
    server).  A read-only error anywhere else is the caller's own."""
    parameter_status = getattr(
        getattr(raw_connection, "info", None), "parameter_status", None
    )
    try:
        return (
            parameter_status is not None and parameter_status("in_hot_standby") == "on"
        )
    except Exception:
        return False  # a closed connection may refuse to tell


ALREADY_DISCONNECTED = "Already disconnected"
# Why a with block that an outage interrupted committed nothing.
BLOCK_LOST = "the connection was lost inside the with block, which committed nothing"


def refused_work(why: str = ALREADY_DISCONNECTED) -> Retry:
    """The :class:`Retry` a disconnected connection raises, saying ``why``."""
    error = DisconnectedConnectionError(why)
    return Retry((DisconnectedConnectionError, error, None))


# Why the connection is disconnected after a commit that was resolved.
SESSION_REPLACED = (
    ": the commit was confirmed over a new server session; the one that"
    " ran the transaction is gone, with its session state"
)
# Why, after a rollback() that found the server connection gone.
SESSION_LOST = (
    ": the server connection was lost before rollback(), and its session"
    " with it (locks, temporary tables, LISTEN, prepared statements)"
)


def is_outage(exc: BaseException, raw: Any, standby_session: bool = False) -> bool:
    """A disconnection, or a server session that is not the one we had."""
    if is_disconnection(exc, raw, standby_session):
        return True
    # psycopg 3 prepares frequent statements itself, as "_pg3_0", "_pg3_1"...
    # Being told that one of them does not exist (26000) means the session
    # under the connection changed, as when a pooler in transaction mode
    # hands us another server connection: the driver's cache is wrong and
    # only a new connection empties it.
    return getattr(exc, "sqlstate", None) == "26000" and '"_pg3_' in str(exc)


def _is_psycopg3(raw: Any) -> bool:
    return hasattr(raw, "pgconn")


# The DB-API exception classes, which a connection offers as attributes.
_EXCEPTIONS = frozenset(
    {
        "Warning",
        "Error",
        "InterfaceError",
        "DatabaseError",
        "DataError",
        "OperationalError",
        "IntegrityError",
        "InternalError",
        "ProgrammingError",
        "NotSupportedError",
    }
)


def _is_driver(thing: Any) -> bool:
    return isinstance(thing, types.ModuleType) and all(
        hasattr(thing, name) for name in ("apilevel", "connect", "Error")
    )


def _driver_of(thing: Any) -> Any | None:
    """The DB-API module that ``thing`` comes from or connects with, found
    by looking, never by calling: the package of a driver's function, class
    or exception, followed through the names, closures and partials of the
    functions that lead there (a connection factory)."""
    todo, seen = [thing], set[int]()
    while todo and len(seen) < 100:
        thing = todo.pop(0)
        if thing is None or id(thing) in seen:
            continue
        seen.add(id(thing))
        if _is_driver(thing):
            return thing
        package = str(getattr(thing, "__module__", None)).partition(".")[0]
        if _is_driver(sys.modules.get(package)):
            return sys.modules[package]
        todo += [getattr(thing, name, None) for name in ("func", "__func__")]
        code = getattr(thing, "__code__", None)
        if code is not None:
            scope = getattr(thing, "__globals__", {})
            todo += [scope.get(name) for name in code.co_names]
            for cell in getattr(thing, "__closure__", None) or ():
                try:
                    todo.append(cell.cell_contents)
                except ValueError:
                    pass  # a name the function has not bound yet
    return None


# Calls that would hand out a driver object talking to the server outside
# the contract, and what to use instead.
REFUSED_CALLS = {
    "pipeline": "use executemany(), which psycopg pipelines by itself",
    "copy": "use executemany(), or a driver connection of your own for COPY",
    "lobject": "use the server's lo_* functions through execute()",
}
# The settings that each session method sets; see _session_values().
_SESSION_METHODS = frozenset(
    {
        "set_session",
        "set_isolation_level",
        "set_autocommit",
        "set_read_only",
        "set_deferrable",
    }
)
_SET_SESSION_ARGS = ("isolation_level", "readonly", "deferrable", "autocommit")


def _session_values(
    raw: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The attribute values a call of session method ``name`` stands for."""
    if name == "set_session":  # psycopg2: None leaves a setting unchanged
        given = dict(zip(_SET_SESSION_ARGS, args, strict=False)) | kwargs
        return {key: value for key, value in given.items() if value is not None}
    (value,) = args or tuple(kwargs.values())
    if name == "set_isolation_level" and not _is_psycopg3(raw):
        # psycopg2: level 0 is autocommit; any other level ends autocommit.
        if value == 0:
            return {"autocommit": True}
        return {"autocommit": False, "isolation_level": value}
    return {name[len("set_") :]: value}


def check_setting(raw: Any, name: str) -> None:
    """Refuse a name that is not a setting of the driver's connection."""
    # psycopg 3 connections take any attribute; their settings are
    # properties or attributes of their own.
    if hasattr(getattr(type(raw), name, None), "__set__"):
        return
    # An attribute of its own; not asked of raw.__dict__, which would give
    # the object a real dictionary and make all its attribute reads slow.
    if not hasattr(type(raw), name) and hasattr(raw, name):
        return
    kind = f"{type(raw).__module__}.{type(raw).__qualname__}"
    raise AttributeError(f"'{kind}' object has no setting {name!r}")


def refused_call(raw: Any, name: str) -> Callable[..., Any]:
    error_class = getattr(raw, "NotSupportedError", NotImplementedError)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        message = f"{name}() would bypass reconnecting: {REFUSED_CALLS[name]}"
        raise error_class(message)

    return refuse


def _server_method(name: str, doc: str) -> Callable[..., Any]:
    """Make a cursor method that calls the driver cursor's method ``name``."""

    def method(self: ReconnectingCursor, *args: Any, **kwargs: Any) -> Any:
        try:  # the hot path: see CursorBase._live
            result = getattr(raw_cursor := self._live, name)(*args, **kwargs)
        except _NotLiveError:
            pass
        except Exception as exc:
            self._failed(exc, name)
            raise
        else:
            # psycopg 3's execute() returns its cursor: return ours instead.
            return self if result is raw_cursor else result
        # Outside the except clause, so no error it raises carries _NotLiveError.
        return self._run(name, *args, **kwargs)  # (re)connect, new cursor

    method.__name__ = method.__qualname__ = name
    method.__doc__ = doc
    return method


def _fetch_method(name: str, doc: str) -> Callable[..., Any]:
    """Like ``_server_method``, for the fetches that take no argument."""

    def method(self: ReconnectingCursor) -> Any:
        try:
            return getattr(self._live, name)()
        except _NotLiveError:
            pass
        except Exception as exc:
            self._failed(exc, name)
            raise
        return self._run(name)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = doc
    return method


# What a setting that was never set had (see _forget_unchecked).
_NOT_SET: Any = object()

# A cursor's server connection before it has one, and after close(): never
# the connection's, so the hot path's one identity check sends it the slow way.
_NO_CONNECTION: Any = object()


class _NotLiveError(Exception):
    """Raised by ``_NOT_LIVE``: the hot path is closed, take the long way."""


class _NotLiveCursor:
    """What a cursor's ``_live`` holds while its driver cursor may not be
    called straight away: every method it is asked for raises ``_NotLiveError``.
    The sync hot path thus calls ``self._live.fetchone()`` as a
    pass-through would, with no test of its own (an ``except`` costs
    nothing until it catches)."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        raise _NotLiveError


_NOT_LIVE: Any = _NotLiveCursor()
_NO_SETTINGS: Mapping[str, Any] = types.MappingProxyType({})


_FETCHES = frozenset({"fetchone", "fetchmany", "fetchall", "__next__"})
# Cursor methods that run no statement of the caller's: see _statement_lost.
NOT_STATEMENTS = _FETCHES | {"scroll", "mogrify", "nextset", "close"}
# What a driver cursor that ran nothing yet says.
_UNUSED_CURSOR = {
    "description": None,
    "rowcount": -1,
    "query": None,
    "statusmessage": None,
}


# The attributes that psycopg2's and psycopg 3's cursors both have, those a
# cursor answers before it has run anything, and the settings of either
# driver's named cursors: a cursor of ours has them before it has a driver
# cursor to read them from, so that setting one then is not lost on our
# object.  The others are added with the first driver cursor of their class
# (see _DriverAttribute).
DRIVER_CURSOR_NAMES = (
    "arraysize description nextset row_factory rowcount rownumber scroll"
    " setinputsizes setoutputsize statusmessage query pgresult"
    " itersize name scrollable withhold tzinfo_factory"
).split()


class _DriverAttribute:
    """An attribute of the driver's cursor, on the class of ours.

    Our cursors pass the driver cursor's attributes on through these
    descriptors rather than ``__getattr__`` and ``__setattr__``: on a class
    with ``__getattr__``, every attribute and method of its objects is
    looked up the slow way, the hot path's ``execute`` and ``fetchone``
    included.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, cursor: Any, owner: type | None = None) -> Any:
        if cursor is None:
            return self
        live = cursor._live
        if live is not _NOT_LIVE:  # the hot path: description, rowcount, ...
            value = getattr(live, self.name)
            if getattr(value, "__self__", None) is not live:
                return value
        return cursor._attribute(self.name)

    def __set__(self, cursor: Any, value: Any) -> None:
        cursor._set_attribute(self.name, value)


# The public names of psycopg2's and psycopg 3's connections that ours does
# not define: each reads the driver connection's (see _ConnectionAttribute);
# others are added with the first driver connection of their class.
DRIVER_CONNECTION_NAMES = (
    "DataError DatabaseError Error IntegrityError InterfaceError InternalError"
    " NotSupportedError OperationalError ProgrammingError Warning adapters"
    " add_notice_handler add_notify_handler async async_ autocommit"
    " binary_types broken cancel cancel_safe connect connection cursor_factory"
    " deferrable dsn encoding execute fileno get_backend_pid get_dsn_parameters"
    " get_native_connection get_parameter_status get_transaction_status info"
    " isexecuting isolation_level lobject lock notifies pgconn pgconn_ptr"
    " pipeline poll prepare_threshold prepared_max protocol_version read_only"
    " readonly remove_notice_handler remove_notify_handler reset row_factory"
    " server_cursor_factory server_version set_autocommit set_client_encoding"
    " set_deferrable set_isolation_level set_read_only set_session status"
    " string_types tpc_begin tpc_commit tpc_prepare tpc_recover tpc_rollback"
    " transaction wait xid"
).split()


class _ConnectionAttribute:
    """An attribute of the driver's connection, on the class of ours (as
    _DriverAttribute for cursors: with a ``__getattr__``, every attribute
    of a connection would be read the slow way, ours included)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, connection: Any, owner: type | None = None) -> Any:
        if connection is None:
            return self
        return connection._driver_attribute(self.name)


def add_driver_attributes(
    cls: type, names_or_driver_object: Any, attribute: Any = _DriverAttribute
) -> None:
    """Give ``cls`` the public names of a driver cursor or connection (or
    the names given) that it lacks, each an ``attribute`` descriptor that
    reads it from the driver object of the moment."""
    if isinstance(names_or_driver_object, list):
        names = names_or_driver_object
    else:
        # The driver classes whose names ``cls`` has, kept on it.
        seen = cls.__dict__.get("_driver_classes")
        if seen is None:
            seen = set()
            type.__setattr__(cls, "_driver_classes", seen)
        if type(names_or_driver_object) in seen:
            return
        seen.add(type(names_or_driver_object))
        # The class's names: dir() of the object itself would give psycopg's
        # connection a real __dict__, and every attribute read of it, the
        # driver's own included, would be slow from then on.
        names = dir(type(names_or_driver_object))
    for name in names:
        if not name.startswith("_") and not hasattr(cls, name):
            type.__setattr__(cls, name, attribute(name))


def add_connection_attributes(cls: type, names_or_driver_object: Any) -> None:
    """``add_driver_attributes()`` for a connection class: each name reads
    ``connection._driver_attribute(name)``."""
    add_driver_attributes(cls, names_or_driver_object, _ConnectionAttribute)


class CursorBase:
    """What the sync and asyncio cursors share: the arguments the driver
    cursor is made with on each new server connection, the settings made on
    it, and the hot path's driver cursor (``_live``)."""

    # Slots: the hot path reads _live first thing; and as the drivers'
    # cursors, ours take no attribute that the driver's cursor lacks.
    __slots__ = (
        "_connection",
        "_args",
        "_kwargs",
        "_raw_connection",
        "_raw_cursor",
        "_live",
        "_settings",
        "_kept",
        "_closed",
        "__weakref__",
    )

    _NOTHING_KEPT: Any = None  # what _kept holds when nothing is kept
    _NOT_LIVE: Any = _NOT_LIVE  # what _live holds when the hot path is closed
    _NOT_LIVE_ERROR = _NotLiveError  # what each method of _NOT_LIVE raises
    # The driver cursor classes whose names the class has (add_driver_attributes).
    _driver_classes: frozenset[type] | set[type] = frozenset()

    def __init__(self, connection: Any, args: tuple[Any, ...], kwargs: dict[str, Any]):
        # The connection ends the hot path of its open cursors (their
        # weak references leave the set as the cursors go).  The set and
        # its discard come as one pair: one read, and no bound method made.
        cursors, forget = connection._cursor_set
        cursors.add(weakref.ref(self, forget))
        self._connection = connection
        self._args = args
        self._kwargs = kwargs
        self._raw_connection: Any = _NO_CONNECTION
        self._raw_cursor: Any | None = None
        # The driver cursor while its server connection is the current one
        # and nothing else is to be read: the hot path calls it straight
        # away.  Whatever ends that (an outage, close(), a resolved commit)
        # sets it to _NOT_LIVE first (see _detach_cursors), so the hot path
        # needs no check of its own.
        self._live: Any = _NOT_LIVE
        # Settings made on this cursor: copied on change, shared until then.
        self._settings: Mapping[str, Any] = _NO_SETTINGS
        self._kept: Any = self._NOTHING_KEPT  # a result kept after a resolved commit
        self._closed = False
        raw = connection._current
        if raw is None:
            return
        # Connected: the driver cursor now (no round trip), so that the
        # first call takes the hot path: _cursor_on(), spelled out for a new
        # cursor, which has no settings yet and nothing kept.
        try:
            raw_cursor = raw.cursor(*args, **kwargs) if args or kwargs else raw.cursor()
        except Exception:
            return  # told by the first call, which makes it again
        self._raw_cursor, self._raw_connection = raw_cursor, raw
        self._meet(raw_cursor)
        self._live = raw_cursor
        if raw is not connection._current:  # changed meanwhile: see _cursor_on
            self._live = _NOT_LIVE

    @property
    def closed(self) -> bool:
        """True once this cursor or its connection was closed."""
        return self._closed or bool(self._connection._closed)

    def __repr__(self) -> str:
        name = f"{type(self).__module__}.{type(self).__qualname__}"
        state = "closed" if self._closed else "open"
        return f"<{name} {state} at {id(self):#x}>"

    def _cursor_on(self, raw: Any) -> Any:
        """The driver cursor on ``raw``, made with this cursor's arguments
        and settings when ``raw`` is new to it."""
        connection = self._connection
        if self._closed:
            raise connection._closed_error("cursor")
        if self._raw_connection is not raw:
            args, kwargs = self._args, self._kwargs
            # (psycopg2 parses an empty **kwargs as dearly as a full one)
            raw_cursor = raw.cursor(*args, **kwargs) if args or kwargs else raw.cursor()
            for name, value in self._settings.items():
                setattr(raw_cursor, name, value)
            self._raw_cursor, self._raw_connection = raw_cursor, raw
            self._kept = self._NOTHING_KEPT
            self._meet(raw_cursor)
        if raw is connection._current and not self._kept:
            self._live = self._raw_cursor
            # No lock: the connection changes _current before it ends its
            # cursors' hot path, so one of the two sees the other.
            if raw is not connection._current:
                self._live = _NOT_LIVE
        return self._raw_cursor

    def _meet(self, raw_cursor: Any) -> None:
        """Called with each driver cursor made: give the class the names of
        a kind of driver cursor new to it."""
        if type(raw_cursor) not in self._driver_classes:
            add_driver_attributes(type(self), raw_cursor)

    def _detach(self) -> None:
        """Forget the driver cursor, for close()."""
        self._closed, self._kept, self._live = True, self._NOTHING_KEPT, _NOT_LIVE
        self._raw_cursor, self._raw_connection = None, _NO_CONNECTION

    def _driver_attribute(self, raw_cursor: Any, name: str) -> tuple[bool, Any]:
        """``(True, value)`` when ``name`` of ``raw_cursor`` is to be handed
        out as it is (data, or a method refused); ``(False, method)`` for a
        method to be called on the driver cursor of the moment."""
        value = getattr(raw_cursor, name)
        if getattr(value, "__self__", None) is not raw_cursor:
            return True, value  # description, rowcount, row factories: as they are
        if name in REFUSED_CALLS:
            return True, refused_call(self._raw_connection, name)
        return False, value

    def __dir__(self) -> list[str]:
        # The class carries the names of every driver's cursor met in this
        # process; a cursor lists those of its own driver's cursor.
        driver_class = type(self._raw_cursor) if self._raw_cursor is not None else None

        def offered(name: str) -> bool:
            mro = type(self).__mro__
            if not any(isinstance(k.__dict__.get(name), _DriverAttribute) for k in mro):
                return True
            if driver_class is None:
                return name in DRIVER_CURSOR_NAMES
            return hasattr(driver_class, name)

        return [name for name in super().__dir__() if offered(name)]

    if TYPE_CHECKING:  # the driver cursor's other attributes, for type checkers

        def __getattr__(self, name: str) -> Any: ...
        def __setattr__(self, name: str, value: Any) -> None: ...


class ReconnectingCursor(CursorBase):
    """A cursor of a :class:`ReconnectingConnection`.

    It remembers the arguments it was made with and makes the driver cursor
    again on each new server connection, so the same cursor object keeps
    working after ``rollback()``.  Methods that talk to the server raise
    :class:`Retry` when the server connection is lost; those of the
    driver's cursor not listed here (``callproc``, ``scroll``, ...) are
    there when the driver's cursor has them, and behave alike.  Reading an
    attribute never connects: it answers as the driver's cursor does.
    """

    __slots__ = ()
    _connection: ReconnectingConnection
    _kept: _KeptResult | None
    # Our class for each kind of driver cursor met: see _meet().
    _classes: dict[type, type[ReconnectingCursor]] = {}

    @property
    def connection(self) -> ReconnectingConnection:
        """The :class:`ReconnectingConnection` this cursor belongs to."""
        return self._connection

    def _meet(self, raw_cursor: Any) -> None:
        """Take the class whose ``execute()`` fits ``raw_cursor``'s: psycopg
        3's cursors return themselves (see _PsycopgCursor)."""
        kind = type(raw_cursor)
        cls = self._classes.get(kind)
        if cls is None:
            add_driver_attributes(ReconnectingCursor, raw_cursor)
            execute = getattr(kind, "execute", None)
            package = getattr(execute, "__module__", None) or ""
            returns_itself = package.partition(".")[0] == "psycopg"
            cls = _PsycopgCursor if returns_itself else ReconnectingCursor
            self._classes[kind] = cls
        if type(self) is not cls and type(self) in (ReconnectingCursor, _PsycopgCursor):
            self.__class__ = cls  # (a subclass of someone else's stays as it is)

    def _failed(self, exc: Exception, name: str) -> None:
        """The hot path's error handler: raise what an outage of the server
        connection means for method ``name``; return for any other error."""
        connection = self._connection
        raw = self._raw_connection
        if not connection._outage(exc, raw):
            return
        if name in NOT_STATEMENTS:
            raise connection._lost(raw, exc) from exc
        raise connection._statement_lost(raw, exc) from exc

    def _run(self, name: str, *args: Any, **kwargs: Any) -> Any:
        kept = self._kept
        if kept is not None:
            if name in _FETCHES:
                return getattr(kept, name)(*args, **kwargs)
            self._kept = None  # a new statement: the kept result is over
        result = self._connection._call(
            lambda raw: getattr(self._cursor_on(raw), name)(*args, **kwargs),
            statement=name not in NOT_STATEMENTS,
        )
        return self if result is self._raw_cursor and result is not None else result

    def execute(
        self,
        query: Any,
        params: Any = None,
        prepare: bool | None = None,
        binary: bool | None = None,
        vars: Any = None,  # noqa: A002 (psycopg2's name for params)
    ) -> Any:
        """Run a query, as the driver's ``execute()`` (``prepare`` and
        ``binary`` are psycopg 3's; ``vars`` is psycopg2's name of ``params``)."""
        # _server_method's hot path, spelled out for the most common call.
        # Named parameters: a **kwargs dict per call costs as much again,
        # and keyword-only ones cost a dictionary lookup each.
        if prepare is None and binary is None and vars is None:
            try:
                result = self._live.execute(query, params)
            except _NotLiveError:
                pass
            except Exception as exc:
                self._failed(exc, "execute")
                raise
            else:
                if result is None:  # psycopg2's, at the least cost
                    return None
                # Another driver's own cursor: ours instead.  Only this
                # cursor's own calls replace _raw_cursor.
                return self if result is self._raw_cursor else result
        return self._execute(query, params, prepare, binary, vars)

    def _execute(
        self, query: Any, params: Any, prepare: Any, binary: Any, vars: Any
    ) -> Any:
        """``execute()`` off the hot path (its frame stays small)."""
        options = {"prepare": prepare, "binary": binary}
        kwargs = {key: value for key, value in options.items() if value is not None}
        params = params if vars is None else vars
        return self._run("execute", query, params, **kwargs)

    def fetchone(self) -> Any:
        """Return the next row, or ``None``."""
        try:  # _fetch_method's hot path, spelled out
            return self._live.fetchone()
        except _NotLiveError:
            pass
        except Exception as exc:
            self._failed(exc, "fetchone")
            raise
        return self._run("fetchone")

    executemany = _server_method("executemany", "Run a query for each parameter set.")
    fetchmany = _server_method("fetchmany", "Return the next ``size`` rows.")

    def fetchall(self) -> Any:
        """Return the remaining rows."""
        try:  # as fetchone()
            return self._live.fetchall()
        except _NotLiveError:
            pass
        except Exception as exc:
            self._failed(exc, "fetchall")
            raise
        return self._run("fetchall")

    __next__ = _fetch_method("__next__", "Return the next row.")

    def __iter__(self) -> Iterator[Any]:
        return self

    def close(self) -> None:
        """Close the cursor; the server connection stays open."""
        raw_cursor = self._raw_cursor
        self._closed, self._kept, self._live = True, None, _NOT_LIVE  # as _detach()
        self._raw_cursor, self._raw_connection = None, _NO_CONNECTION
        if raw_cursor is not None:
            try:
                raw_cursor.close()
            except Exception:
                pass  # broken already: closing it only frees it

    def __enter__(self) -> ReconnectingCursor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _attribute(self, name: str) -> Any:
        """Read ``name`` of the driver's cursor (see _DriverAttribute)."""
        if self._kept is not None and name in _KeptResult.ATTRIBUTES:
            return getattr(self._kept, name)
        connection = self._connection
        raw_cursor = self._raw_cursor
        if raw_cursor is None:
            if connection._raw is None and name in _UNUSED_CURSOR:
                return _UNUSED_CURSOR[name]  # never connects to say so
            raw_cursor = connection._call(self._cursor_on)
        # The driver cursor answers from memory, even once its server
        # connection is gone, as in an ``except Retry:`` handler.
        as_it_is, value = self._driver_attribute(raw_cursor, name)
        if as_it_is:
            return value
        if name == "stream":  # psycopg 3: rows as they arrive

            def stream(*args: Any, **kwargs: Any) -> Iterator[Any]:
                return connection._iterate(
                    lambda raw: self._cursor_on(raw).stream(*args, **kwargs),
                    statement=True,
                )

            return stream

        def call_on_current_cursor(*args: Any, **kwargs: Any) -> Any:
            return self._run(name, *args, **kwargs)

        return call_on_current_cursor

    def _set_attribute(self, name: str, value: Any) -> None:
        """Set ``name`` of the driver's cursor (see _DriverAttribute)."""
        # arraysize, itersize, ...: set now and on every new driver cursor.
        self._connection._call(lambda raw: setattr(self._cursor_on(raw), name, value))
        self._settings = {**self._settings, name: value}


add_driver_attributes(ReconnectingCursor, DRIVER_CURSOR_NAMES)


class _PsycopgCursor(ReconnectingCursor):
    """A :class:`ReconnectingCursor` whose driver cursor is one of psycopg
    3's own, whose ``execute()`` returns itself: this one's returns itself
    without asking.  A cursor takes this class when it makes such a driver
    cursor (``_meet``), and keeps the name: it is the same cursor, on the
    hot path it costs a comparison less, and that is measurable (see
    docs/development.rst).
    """

    __slots__ = ()

    def execute(
        self,
        query: Any,
        params: Any = None,
        prepare: bool | None = None,
        binary: bool | None = None,
        vars: Any = None,  # noqa: A002 (psycopg2's name for params)
    ) -> Any:
        if prepare is None and binary is None and vars is None:
            try:
                self._live.execute(query, params)
                return self
            except _NotLiveError:
                pass
            except Exception as exc:
                self._failed(exc, "execute")
                raise
        return self._execute(query, params, prepare, binary, vars)

    execute.__doc__ = ReconnectingCursor.execute.__doc__


_PsycopgCursor.__name__ = _PsycopgCursor.__qualname__ = ReconnectingCursor.__name__


class TransactionBlock:
    """psycopg 3's ``transaction()`` block, made of the connection's own calls.

    The outermost block ends with the connection's ``commit()`` (so a lost
    reply is resolved when asked for) or ``rollback()``; inner blocks, and
    blocks opened inside a transaction, are savepoints.  A block left by
    :class:`Retry` touches nothing: the caller rolls back, as always.
    """

    def __init__(
        self,
        connection: ReconnectingConnection,
        savepoint_name: str | None = None,
        force_rollback: bool = False,
    ) -> None:
        self.connection = connection
        self.savepoint_name = savepoint_name
        self.force_rollback = force_rollback
        self._outer = False

    def misuse(self, what: str) -> Exception:
        raw = self.connection._last_raw
        error_class = getattr(raw, "ProgrammingError", DisconnectedConnectionError)
        return error_class(f"{what}() is not allowed inside a transaction() block")

    def _opening(self, raw: Any) -> str | None:
        """Entering on ``raw``: the statement that opens the block, if any."""
        blocks = self.connection._blocks
        self._outer = not blocks and raw.info.transaction_status == 0
        if not self._outer:
            depth = len(blocks) + 1
            self.savepoint_name = self.savepoint_name or f"_reconnecting_{depth}"
            return f"SAVEPOINT {self._quoted()}"
        return "BEGIN" if raw.autocommit else None

    def _closing(self, exc: object) -> tuple[str, ...]:
        """Leaving with ``exc``: what ends the block, in order, either the
        connection's ``commit`` or ``rollback`` (the outermost block) or
        statements (savepoints).  Nothing after :class:`Retry` (the caller
        rolls back, as always); after another error, the rollback, which
        leaves a disconnected state as any rollback does.  Left quietly
        after an outage, the commit says Retry: never a commit of what came
        after it, never a silent end."""
        self.connection._blocks.remove(self)
        if isinstance(exc, Retry):
            return ()
        if exc is None and not self.force_rollback:
            if self._outer:
                return ("commit",)
            return (f"RELEASE SAVEPOINT {self._quoted()}",)
        if self._outer:
            return ("rollback",)
        savepoint = self._quoted()
        return (f"ROLLBACK TO SAVEPOINT {savepoint}", f"RELEASE SAVEPOINT {savepoint}")

    def _swallows(self, exc: object) -> bool:
        """psycopg.Rollback ends this block quietly, or the one it names."""
        return type(exc).__name__ == "Rollback" and (
            getattr(exc, "transaction", None) in (None, self)
        )

    def __enter__(self) -> TransactionBlock:
        opening = self._opening(self.connection._connection())
        if opening is not None:
            self._own(opening)
        self.connection._blocks.append(self)
        return self

    def _own(self, statement: str) -> Any:
        """Run a statement of the block's own, which writes nothing: a lost
        connection is Retry, never a statement in doubt."""
        return self.connection._call(lambda raw: raw.execute(statement))

    def __exit__(self, *exc_info: object) -> bool:
        for step in self._closing(exc_info[1]):
            if step in ("commit", "rollback"):
                getattr(self.connection, step)()
            else:
                self._own(step)
        return self._swallows(exc_info[1])

    def _quoted(self) -> str:
        return '"' + str(self.savepoint_name).replace('"', '""') + '"'


class RememberedSettings:
    """The settings a connection applies to each new server connection,
    with those made while no driver connection could check them (the
    sync and asyncio connections share these rules)."""

    _settings: dict[str, Any]
    _unchecked: dict[str, Any]  # name: the value it replaced
    _cursors: set[weakref.ref[Any]]  # the open cursors, weakly
    # The driver connection classes whose names the class has (see
    # add_connection_attributes).
    _driver_classes: frozenset[type] | set[type] = frozenset()

    def _open_cursors(self) -> list[Any]:
        return [c for ref in list(self._cursors) if (c := ref()) is not None]

    def _detach_cursors(self) -> None:
        """The server connection stops being the current one: no cursor's
        hot path may use it any more."""
        for cursor in self._open_cursors():
            cursor._live = _NOT_LIVE

    def _remember_unchecked(self, values: dict[str, Any]) -> None:
        """Remember settings made while no driver connection can check them
        (a closed one refuses good and bad values alike).  The next server
        connection checks them; see _forget_unchecked()."""
        for name, value in values.items():
            self._unchecked.setdefault(name, self._settings.get(name, _NOT_SET))
            self._settings[name] = value

    def _forget_unchecked(self, name: str) -> None:
        """A driver refused a value set while disconnected: as a live driver
        connection would have, keep the value before it, so that the value
        fails one call and never every call."""
        previous = self._unchecked.pop(name)
        if previous is _NOT_SET:
            del self._settings[name]
        else:
            self._settings[name] = previous

    @contextlib.contextmanager
    def _setting(self, raw: Any, name: str) -> Iterator[None]:
        """Around setting ``name`` on ``raw``, a new server connection: a
        refused value that was set while disconnected is forgotten."""
        try:
            yield
        except Exception as exc:
            if name in self._unchecked and not is_outage(exc, raw):
                self._forget_unchecked(name)
            raise


class ConnectionState(RememberedSettings):
    """The core of a reconnecting connection, shared by the sync shell
    (:class:`ReconnectingConnection`) and the asyncio one
    (``reconnecting.aio``): its state, the rules of its changes, its
    counters, the settings memory and what a resolved commit means.
    Nothing here talks to the server or waits: the shells connect, send,
    wait, sleep and close, and tell this what happened.

    The states: not connected (no server connection yet), connected
    (``_raw``), disconnected (``_refusal`` says why work is refused until
    ``rollback()``) and closed.
    """

    _blocks: list[Any]  # the transaction() blocks open, innermost last
    _entered: Any | None = None  # psycopg2 connection in a with block (sync)

    def __init__(
        self, connection_factory: Any, resolve_commit: bool, resolve_timeout: float
    ) -> None:
        self._factory = connection_factory
        self._resolve_commit = resolve_commit
        self._resolve_timeout = resolve_timeout
        self._cursors: set[weakref.ref[Any]] = set()  # open ones, weakly
        # What a new cursor registers itself with: the set, and how to leave it.
        self._cursor_set = (self._cursors, self._cursors.discard)
        self._raw = None  # None unless connected
        self._last_raw: Any | None = None
        self._standby: Any | None = None  # _raw, if it was made to a hot standby
        # Why work is refused until rollback(); None unless disconnected.
        self._refusal: str | None = None
        # The refusal tells a loss of the server session that the caller was
        # not told of yet: rollback() keeps it until a call has said it.
        self._untold = False
        self._closed = False
        self._settings: dict[str, Any] = {}
        # Settings made with no driver connection to check them, and the
        # values they replaced (see _remember_unchecked).
        self._unchecked: dict[str, Any] = {}
        self._server: tuple[Any, tuple[Any, ...]] | None = None  # (raw, identity)
        self._round_trip = 0.0  # seconds, measured before the last COMMIT
        self._disconnects = 0
        self._reconnects = 0

    _current: Any | None = None

    @property
    def _raw(self) -> Any | None:
        """The current server connection (``None`` unless connected)."""
        return self._current

    @_raw.setter
    def _raw(self, raw: Any | None) -> None:
        if raw is not self._current:
            # Whatever ends a server connection's turn ends its cursors'
            # hot path too (see CursorBase._live), after the change, which
            # a cursor making itself live checks (CursorBase._cursor_on).
            self._current = raw
            self._detach_cursors()

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

    def _driver(self) -> Any | None:
        """What holds the driver's exception classes (each shell knows)."""
        return self._last_raw

    def _closed_error(self, what: str = "connection") -> Exception:
        # Behave like a closed driver connection: PEP 249's optional
        # Connection.InterfaceError names the driver's class.
        error_class = getattr(self._driver(), "InterfaceError", None)
        if not (isinstance(error_class, type) and issubclass(error_class, Exception)):
            error_class = DisconnectedConnectionError
        return error_class(f"{what} already closed")

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self._set_setting(name, value)

    def _set_setting(self, name: str, value: Any) -> None:
        """Set the driver's setting ``name`` (each shell knows how)."""
        raise NotImplementedError

    def _expose(self, raw: Any, name: str, value: Any) -> Any:
        """Return ``value``, read from ``raw``; its methods run on the current
        server connection, with the contract."""
        if getattr(value, "__self__", None) is not raw:
            return value  # data, classes (db.Error), row and cursor factories
        if name in REFUSED_CALLS:
            return refused_call(raw, name)
        method = self._method(name, value)
        if method is not None:
            return method
        return lambda *args, **kwargs: self._call(
            lambda raw: getattr(raw, name)(*args, **kwargs)
        )

    def _method(self, name: str, value: Any) -> Callable[..., Any] | None:
        """A method of the driver's connection that a shell makes otherwise
        than by running it on the current server connection, or None."""
        return None

    def _call(self, function: Callable[[Any], Any], statement: bool = False) -> Any:
        raise NotImplementedError  # each shell's, sync or awaited

    def _outage(self, exc: Exception, raw: Any) -> bool:
        """Whether ``exc``, raised by ``raw`` while open, is an outage."""
        return not self._closed and is_outage(exc, raw, raw is self._standby)

    def _refuse_work(self) -> Retry:
        """Disconnected: the Retry a call raises; a loss it tells is told now."""
        self._untold = False
        return refused_work(self._refusal or ALREADY_DISCONNECTED)

    def _installed(self, raw: Any) -> None:
        """``raw`` is the current server connection from now on."""
        if self._last_raw is not None:
            self._reconnects += 1
            log.info("Reconnected to the database")
        self._raw = self._last_raw = raw
        self._unchecked.clear()  # raw accepted them all
        self._standby = raw if _in_hot_standby(raw) else None
        self._refusal, self._untold = None, False

    def _connect_failed(self, exc: Exception) -> Retry:
        """The factory failed with a disconnection: refuse work until rollback()."""
        if self._closed:  # closed meanwhile: say that instead
            raise self._closed_error() from exc
        self._refusal = ALREADY_DISCONNECTED
        self._disconnects += 1
        log.warning("Could not reconnect to the database: %s", describe(exc))
        return Retry((type(exc), exc, exc.__traceback__))

    def _dropped(self, raw: Any, exc: Exception) -> bool:
        """``raw`` failed with an outage: if it is still the current server
        connection, enter the disconnected state and return True (the shell
        then closes ``raw``)."""
        if self._raw is not raw:
            return False
        self._raw, self._refusal = None, ALREADY_DISCONNECTED
        self._disconnects += 1
        log.warning("Database connection lost: %s", describe(exc))
        return True

    def _cancelled(self, raw: Any, what: str) -> None:
        """A call on ``raw`` was cancelled midway (asyncio): whatever its
        transaction did goes with the server connection, which the shell
        closes, so work is refused until ``rollback()``, as after an outage."""
        if self._raw is raw:
            self._raw = None
            self._refusal = f"Interrupted by cancellation during a {what}"
            log.info("Cancelled during a %s; closing the server connection", what)

    def _nothing_done(self) -> bool:
        """Not connected since the last ``rollback()``: nothing to commit."""
        return self._raw is None and self._refusal is None and not self._closed

    def _may_have_committed(self, raw: Any, exc: Exception) -> bool:
        """A statement of the caller's lost ``raw``: whether it may have
        committed (autocommit, outside any block, on a session that could
        write), so that it is not safe to redo."""
        standby = raw is self._standby
        return (
            is_disconnection(exc, raw, standby)
            and raw.autocommit
            and self._entered is None
            and not self._blocks
            and not cannot_write(raw, standby)
        )

    def _block_ending(self, failed: bool, began: int | None = None) -> str:
        """How a ``with`` block on the connection ends: 'commit',
        'rollback' (after an error), 'lost' (an outage inside the block,
        which began at ``began`` disconnects, lost part of its work: commit
        none of it, whatever ran after a rollback in it), or 'nothing'
        (closed)."""
        if self._closed:
            return "nothing"
        if failed:
            return "rollback"
        return "commit" if began in (None, self._disconnects) else "lost"

    def _to_roll_back(self) -> Any | None:
        """rollback(): the server connection to roll back, if any.  While
        disconnected, it leaves the state, unless that tells a loss the
        caller was not told of yet."""
        if self._closed:
            raise self._closed_error()
        if self._refusal is not None:
            if not self._untold:
                self._refusal = None
            return None
        return self._raw

    def _rollback_cancelled(self) -> None:
        """A ``rollback()`` was cancelled (asyncio): if its server connection
        was dropped, the server rolls back as the connection closes."""
        if self._raw is None:
            self._refusal = None

    def _session_gone(self, why: str) -> None:
        """The server session is gone and the caller was not told: the next
        call says ``why``, and rollback() does not leave the state before."""
        if self._raw is None and self._refusal is not None:
            self._refusal = ALREADY_DISCONNECTED + why
            self._untold = True

    def _written(self, raw: Any) -> Generator[Question, Any, Written | None]:
        """The open transaction's id and server, if it wrote anything: yields
        the query to ask on ``raw`` and is sent the first row of its answer."""
        # 0 is idle, 3 in error: nothing that COMMIT could make durable.
        if raw.info.transaction_status in (0, 3):
            return None
        # The server's identity is asked once per server connection, with
        # the first id: reading it (pg_control_system) costs a file read.
        known = self._server
        ask_server = known is None or known[0] is not raw
        started = time.monotonic()
        row = yield id_query(raw.info.server_version, ask_server), ()
        self._round_trip = time.monotonic() - started
        if ask_server or known is None:
            known = self._server = (raw, tuple(row[1:]))
        return None if row[0] is None else (row[0], known[1])

    def _resolution(self, written: Written, clock: Callable[[], float]) -> Resolution:
        """The decisions for resolving the interrupted commit of ``written``."""
        return Resolution(*written, self._resolve_timeout, self._round_trip, clock)

    def _resolved(
        self, transaction_id: str, status: str, retry: Retry, exc: Exception
    ) -> None:
        """Act on what became of an interrupted commit; see ``commit()``."""
        if status == "committed":
            # The data is safe, but the server session that held the
            # caller's locks, temporary tables and LISTENs is gone: the
            # connection stays disconnected, so the next call says so.
            self._session_gone(SESSION_REPLACED)
            log.info("Commit of transaction %s confirmed", transaction_id)
            return
        if status == "aborted":
            log.info("Transaction %s was rolled back; retrying", transaction_id)
            raise retry from exc
        log.error("Outcome of transaction %s unknown: %s", transaction_id, status)
        raise CommitOutcomeUnknown(transaction_id, status) from exc


# A question of the core to the server: a query and its (empty) parameters.
Question = tuple[str, tuple[()]]
# What a transaction that wrote is known by: its id, and the identity of
# the server that gave it (see _SERVER).
Written = tuple[str, tuple[Any, ...]]

# A new connection and one question take a few round trips and a server
# process start; a resolution waits this much plus ten measured round trips
# after its deadline for the question asked last.
CONNECT_GRACE = 0.5


class Resolution:
    """The decisions of resolving an interrupted commit, for either shell.

    The shell connects and asks (:func:`status_questions`) until this says
    to stop, sleeping the pauses it says, and closes what it made; ``status``
    is then 'committed', 'aborted', or why nobody could tell.  The server is
    asked at least once, and again while it cannot be reached or the
    transaction is in progress, until ``deadline``; an answer is awaited
    until ``until``, as the last question may still be on its way.
    """

    def __init__(
        self,
        transaction_id: str,
        server: tuple[Any, ...],
        timeout: float,
        round_trip: float,
        clock: Callable[[], float],
    ) -> None:
        self.transaction_id = transaction_id
        self.server = server
        self.deadline = clock() + timeout
        self.until = self.deadline + CONNECT_GRACE + 10 * round_trip
        self.status = "unreachable"
        self._clock = clock
        self._pause = 0.01

    def questions(self, server_version: int) -> Generator[Question, Any, str]:
        """The questions to ask a server connection of ``server_version``."""
        return status_questions(server_version, self.transaction_id, self.server)

    def failed(self, error: Exception, raw: Any) -> bool:
        """Asking over ``raw`` (None: connecting) failed: True if it was an
        outage, after which the shell closes ``raw`` and asks again anew."""
        if is_outage(error, raw):
            self.status = "unreachable"
            return True
        self.status = f"status query failed ({describe(error)})"
        return False

    def pause(self) -> float | None:
        """Seconds to wait before asking again, or None: ``status`` is final."""
        left = self.deadline - self._clock()
        if self.status not in ("in progress", "unreachable") or left <= 0:
            return None
        pause = min(self._pause, left)  # back off between questions
        self._pause = min(self._pause * 2, 0.5)
        return pause


class ReconnectingConnection(ConnectionState):
    """A DB-API connection that reconnects after ``rollback()``.

    ``connection_factory`` is called with no arguments whenever a server
    connection is needed, first on first use.  Settings made through this
    object (``autocommit``, ``isolation_level``, read-only and deferrable
    modes by attribute or by the driver's ``set_*()`` methods, and
    attributes such as ``row_factory``, ``cursor_factory`` or
    ``prepare_threshold``) are remembered, one value per setting, and
    applied to every new server connection.  The driver connection's other
    attributes are read from the current server connection: those of
    psycopg2's and psycopg's connections at any time, those only the class
    of a driver's subclass has once a server connection of it was made.

    With ``resolve_commit=True``, a ``commit()`` whose connection breaks
    before its reply arrives asks the server, over a new connection, what
    became of the transaction, for up to ``resolve_timeout`` seconds: see
    :meth:`commit`.
    """

    def __init__(
        self,
        connection_factory: Callable[[], Any],
        *,
        resolve_commit: bool = False,
        resolve_timeout: float = 10.0,
    ) -> None:
        super().__init__(connection_factory, resolve_commit, resolve_timeout)
        self._driver_module: Any | None = None  # see _driver()
        self._blocks: list[TransactionBlock] = []  # transaction() blocks open
        self._entered: Any | None = None  # psycopg2 connection in a with block
        # The disconnects count when a with block that is one transaction
        # began: an outage inside it means part of its work is lost.
        self._block_began: int | None = None
        self._lock = threading.RLock()

    def _driver(self) -> Any | None:
        """The holder of the driver's exception classes, found without
        connecting: the last server connection, or the driver's module."""
        if self._last_raw is not None:
            return self._last_raw
        if self._driver_module is None:
            self._driver_module = _driver_of(self._factory)
        return self._driver_module

    def _connection(self) -> Any:
        """Return the current server connection, making one if needed."""
        raw = self._raw
        if raw is not None:
            return raw
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if self._refusal is not None:
                raise self._refuse_work()
            if self._raw is not None:
                return self._raw
        # Connect outside the lock, so that close() never waits for it.
        raw = self._connect()
        with self._lock:
            if self._raw is None and self._refusal is None and not self._closed:
                self._install(raw)
                return raw
            current, closed = self._raw, self._closed
            if self._last_raw is None:
                self._last_raw = raw  # for the driver's InterfaceError class
        _close_quietly(raw)  # closed meanwhile, or another thread was faster
        if closed:
            raise self._closed_error()
        return current if current is not None else self._connection()

    def _install(self, raw: Any) -> None:
        """Make ``raw`` the current server connection (the lock is held)."""
        if self._entered is not None:
            raw.__enter__()  # the rest of a psycopg2 with block: one transaction
            self._entered = raw
        self._installed(raw)

    def _open(self) -> Any:
        """Make a server connection with the remembered settings."""
        raw = self._factory()
        if type(raw) not in self._driver_classes:
            add_connection_attributes(type(self), raw)
        try:
            for name, value in list(self._settings.items()):
                with self._setting(raw, name):
                    setattr(raw, name, value)
        except BaseException:
            _close_quietly(raw)
            raise
        return raw

    def _connect(self) -> Any:
        try:
            return self._open()
        except Exception as exc:
            if self._driver_module is None:
                self._driver_module = _driver_of(type(exc))
            if not is_disconnection(exc, None):
                raise
            with self._lock:
                retry = self._connect_failed(exc)
            raise retry from exc

    def _lost(self, raw: Any, exc: Exception) -> Retry:
        """Enter the disconnected state if ``raw`` is still the current one."""
        with self._lock:
            if self._dropped(raw, exc):
                _close_quietly(raw)
        return Retry((type(exc), exc, exc.__traceback__))

    def _statement_lost(self, raw: Any, exc: Exception) -> Exception:
        """``_lost()``, for a statement of the caller's that was running: in
        autocommit mode it may have committed, unless it could not write."""
        unknown = self._may_have_committed(raw, exc)
        retry = self._lost(raw, exc)
        return statement_in_doubt(exc) if unknown else retry

    def _call(self, function: Callable[[Any], Any], statement: bool = False) -> Any:
        """Run ``function(raw_connection)``, turning disconnections into Retry
        (or, for a ``statement``, what ``_statement_lost`` says)."""
        raw = self._connection()
        try:
            return function(raw)
        except Exception as exc:
            if not self._outage(exc, raw):
                raise
            if statement:
                raise self._statement_lost(raw, exc) from exc
            raise self._lost(raw, exc) from exc

    def _iterate(
        self, start: Callable[[Any], Iterator[Any]], statement: bool = False
    ) -> Iterator[Any]:
        """Yield from the driver iterator ``start(raw_connection)``, as _call."""
        raw = self._connection()
        try:
            yield from start(raw)
        except Exception as exc:
            if not self._outage(exc, raw):
                raise
            if statement:
                raise self._statement_lost(raw, exc) from exc
            raise self._lost(raw, exc) from exc

    # -- DB-API --------------------------------------------------------------

    def cursor(self, *args: Any, **kwargs: Any) -> ReconnectingCursor:
        """Return a cursor that follows this connection across reconnects."""
        if self._closed:
            raise self._closed_error()
        return ReconnectingCursor(self, args, kwargs)

    def rollback(self) -> None:
        """Roll back, and leave the disconnected state.

        A lost server connection rolls back by itself, so this never raises
        for a disconnection.  But a loss of the server session that the
        caller was not told of yet (found by this rollback, or by a
        resolved commit) is told first: the next call raises
        :class:`Retry`, and the rollback after it reconnects.
        """
        if self._blocks:  # as psycopg: the block's end rolls back
            raise self._blocks[-1].misuse("rollback")
        with self._lock:
            raw = self._to_roll_back()
        if raw is None:
            return
        try:
            raw.rollback()
        except Exception as exc:
            if not self._outage(exc, raw):
                raise
            self._lost(raw, exc)
            with self._lock:
                self._session_gone(SESSION_LOST)

    def close(self) -> None:
        """Close for good; later use raises the driver's ``InterfaceError``.

        It does not wait for a reconnect in progress in another thread;
        the connection such a reconnect makes is closed when it arrives.
        """
        with self._lock:
            self._closed = True
            raw, self._raw = self._raw, None
        if raw is not None:
            _close_quietly(raw)

    def __enter__(self) -> ReconnectingConnection:
        raw = self._connection()
        if not _is_psycopg3(raw):
            # psycopg2 opens a transaction in a block even in autocommit
            # mode; its own __enter__ tells it so.
            raw.__enter__()
            self._entered = raw
        if self._entered is not None or not raw.autocommit:
            self._block_began = self._disconnects
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        """End the transaction as the driver's ``with`` block does.

        Commit, or roll back after an exception; psycopg 3 then also closes
        the connection, psycopg2 keeps it open.
        """
        closing = _is_psycopg3(self._last_raw)
        began, self._block_began = self._block_began, None
        ending = self._block_ending(exc_type is not None, began)
        try:
            if ending == "commit":
                self.commit()
            elif ending == "lost":
                self.rollback()
                raise refused_work(BLOCK_LOST)
            elif ending == "rollback":
                try:
                    self.rollback()
                except Exception as error:  # keep the block's own exception
                    _rollback_failed(error)
        finally:
            entered, self._entered = self._entered, None
            if entered is not None and entered is self._raw:
                # It ends nothing now (the transaction is over); it only
                # tells psycopg2 that the block is over.
                self._raw.__exit__(None, None, None)
            if closing:
                self.close()

    # -- everything else goes to the driver connection -------------------------

    @property
    def notices(self) -> Any:
        """psycopg2's list of the server's notices to the current server
        connection (a property, not ``__getattr__``, for speed: SQLAlchemy
        reads it after each query)."""
        raw: Any = self._current
        try:
            return raw.notices
        except AttributeError:  # not connected; psycopg 3 has none
            return self._driver_attribute("notices")

    if TYPE_CHECKING:  # the driver connection's other attributes, for type checkers

        def __getattr__(self, name: str) -> Any: ...

    def _driver_attribute(self, name: str) -> Any:
        """The driver connection's attribute ``name`` (see _ConnectionAttribute)."""
        raw = self._raw
        if raw is None:
            if name in self._settings:
                return self._settings[name]  # remembered: no server needed
            return self._attribute_unconnected(name)
        try:  # the hot path: the connected driver's data, read as it is
            value = getattr(raw, name)
        except Exception:
            value = self._call(lambda raw: getattr(raw, name))  # or Retry
        if getattr(value, "__self__", None) is not raw:
            return value  # data (psycopg2's notices, ...): as _expose would
        return self._expose(raw, name, value)

    def _attribute_unconnected(self, name: str) -> Any:
        if name in _EXCEPTIONS:  # for `except db.Error:`, connected or not
            error_class = getattr(self._driver(), name, None)
            if error_class is None:
                raise AttributeError(f"{name}: the driver is not known yet")
            return error_class
        raw = self._last_raw
        if raw is None:
            raw = self._connection()  # first use
        try:
            # The last server connection still knows its plain attributes.
            return self._expose(raw, name, getattr(raw, name))
        except AttributeError:
            raise
        except Exception as exc:
            raise refused_work() from exc

    def _method(self, name: str, value: Any) -> Callable[..., Any] | None:
        if name in _SESSION_METHODS:
            return lambda *args, **kwargs: self._set_by_call(name, args, kwargs)
        if name == "transaction":  # psycopg 3: a block whose COMMIT is ours
            return lambda *args, **kwargs: TransactionBlock(self, *args, **kwargs)
        if name == "execute":  # psycopg 3: a cursor of ours, not the driver's
            return lambda *args, **kwargs: self.cursor().execute(*args, **kwargs)
        if name == "notifies":  # psycopg 3: a generator talking to the server
            return lambda *args, **kwargs: self._iterate(
                lambda raw: raw.notifies(*args, **kwargs)
            )
        return None

    def _set_setting(self, name: str, value: Any) -> None:
        raw = self._raw
        if raw is None:
            if self._closed:
                raise self._closed_error()
            if self._last_raw is None:
                raw = self._connection()  # first use: the driver must check it
        if raw is not None:
            check_setting(raw, name)
            self._call(lambda raw: setattr(raw, name, value))
            self._settings[name] = getattr(raw, name)  # as the driver reads it
            return
        raw = self._last_raw
        check_setting(raw, name)
        try:
            setattr(raw, name, value)  # a closed connection still says no
        except AttributeError:
            raise
        except Exception:
            pass
        self._remember_unchecked({name: value})

    def _set_by_call(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """A session method: call it if connected, and remember its settings."""
        with self._lock:
            if self._closed:
                raise self._closed_error()
            raw = self._raw
        if raw is None:
            self._remember_unchecked(
                _session_values(self._last_raw, name, args, kwargs)
            )
            return
        self._call(lambda raw: getattr(raw, name)(*args, **kwargs))
        for setting in _session_values(raw, name, args, kwargs):
            self._settings[setting] = getattr(raw, setting)

    # -- commit, and finding out what became of an interrupted one ------------

    def commit(self) -> None:
        """Commit; raises :class:`Retry` if the server connection is lost.

        With ``resolve_commit``, a commit interrupted after the transaction
        wrote something is resolved instead: if the server committed it,
        ``commit()`` returns normally and results already received stay
        readable, but the connection stays disconnected (the server session
        is gone, with its locks, temporary tables and ``LISTEN``), so the
        next call raises ``Retry``, even after a ``rollback()``, and the
        calls after it until ``rollback()``; if the server
        rolled it back, ``Retry`` is raised; if nobody can tell in time,
        :class:`CommitOutcomeUnknown`.
        The answer comes within ``resolve_timeout`` seconds plus the time
        one connection and question take (estimated from the round trip
        measured just before ``COMMIT``), and the server is asked at least
        once.
        """
        if self._nothing_done():
            return  # nothing was done, so there is nothing to commit
        if self._blocks:
            raise self._blocks[-1].misuse("commit")
        if not self._resolve_commit:
            self._call(_commit)
            return
        raw = self._connection()
        written, kept = None, []
        try:
            written = _answer(raw, self._written(raw))
            if written is not None:
                kept = _keep_results(self._open_cursors(), raw)
            raw.commit()
        except Exception as exc:
            if not self._outage(exc, raw):
                raise
            retry = self._lost(raw, exc)
            if written is None:
                raise retry from exc  # nothing was written: safe to redo
            self._resolve(written, retry, exc)
            for cursor, result in kept:
                cursor._kept = result

    def _resolve(self, written: Written, retry: Retry, exc: Exception) -> None:
        """Find out what became of an interrupted commit; see :meth:`commit`."""
        resolution = self._resolution(written, time.monotonic)
        status, raw = _Asking(self._open, resolution).answer()
        if raw is not None:
            _close_quietly(raw)
        with self._lock:
            self._resolved(written[0], status, retry, exc)


add_connection_attributes(ReconnectingConnection, DRIVER_CONNECTION_NAMES)


def _commit(raw: Any) -> None:
    raw.commit()


def plain_cursor(raw: Any) -> Any:
    """A cursor for our own questions: rows as tuples, whatever the caller set."""
    if _is_psycopg3(raw):
        return raw.cursor(row_factory=_tuple_row)
    extensions = sys.modules.get("psycopg2.extensions")
    base = getattr(extensions, "cursor", None)
    return raw.cursor() if base is None else raw.cursor(cursor_factory=base)


def _tuple_row(cursor: Any) -> Callable[[Any], tuple[Any, ...]]:
    return tuple  # a psycopg 3 row factory: rows as plain tuples


class _KeptResult:
    """The rest of a cursor's result, kept for after a resolved commit."""

    ATTRIBUTES = frozenset({"description", "rowcount", "rownumber", "statusmessage"})

    def __init__(self, raw_cursor: Any) -> None:
        self.description = raw_cursor.description
        self.rowcount = raw_cursor.rowcount
        self.rownumber = raw_cursor.rownumber
        self.statusmessage = getattr(raw_cursor, "statusmessage", None)
        self.arraysize = raw_cursor.arraysize
        self._error_class = raw_cursor.connection.ProgrammingError
        self._rows: list[Any] | None = None
        if self.description is not None:
            self._rows = raw_cursor.fetchall()
            # Leave the driver cursor where the caller left it, in case the
            # commit goes through after all.  A result read to its end
            # stays there: no driver scrolls to the position past the last row.
            if self._rows and self.rownumber is not None:
                raw_cursor.scroll(self.rownumber, mode="absolute")

    def _take(self, count: int) -> list[Any]:
        if self._rows is None:
            raise self._error_class("no results to fetch")
        rows, self._rows[:count] = self._rows[:count], []
        self.rownumber = (self.rownumber or 0) + len(rows)
        return rows

    def fetchone(self) -> Any:
        rows = self._take(1)
        return rows[0] if rows else None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._take(self.arraysize if size is None else size)

    def fetchall(self) -> list[Any]:
        return self._take(len(self._rows or ()))

    def __next__(self) -> Any:
        rows = self._take(1)
        if not rows:
            raise StopIteration
        return rows[0]


def _keep_results(
    cursors: list[ReconnectingCursor], raw: Any
) -> list[tuple[ReconnectingCursor, _KeptResult]]:
    """Read the results of ``raw``'s cursors before a COMMIT that may break."""
    kept = []
    for cursor in cursors:
        raw_cursor = cursor._raw_cursor
        if cursor._raw_connection is not raw or raw_cursor is None:
            continue
        if getattr(raw_cursor, "name", None) is not None:
            continue  # a server-side cursor ends with its transaction anyway
        if raw_cursor.description is not None or raw_cursor.rowcount != -1:
            kept.append((cursor, _KeptResult(raw_cursor)))
    return kept


class _Asking:
    """Asks the server what became of a transaction, in a thread of its own.

    The factory may block for as long as the network lets it; the caller
    waits only until the resolution's ``until``, and a connection that
    arrives after the caller stopped waiting is closed.
    """

    def __init__(self, connect: Callable[[], Any], resolution: Resolution) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._abandoned = False
        self._raw: Any | None = None
        self._resolution = resolution
        thread = threading.Thread(
            target=self._ask,
            args=(connect,),
            name="reconnecting: resolving a commit",
            daemon=True,
        )
        thread.start()

    def _ask(self, connect: Callable[[], Any]) -> None:
        resolution, raw = self._resolution, None
        while True:  # at least once, then while the resolution says so
            try:
                raw = raw or connect()
                questions = resolution.questions(raw.info.server_version)
                resolution.status = _answer(raw, questions, rollback=True)
            except Exception as error:
                if resolution.failed(error, raw) and raw is not None:
                    _close_quietly(raw)
                    raw = None
            pause = resolution.pause()
            if pause is None or self._abandoned:
                break
            time.sleep(pause)
        with self._lock:
            if self._abandoned:
                if raw is not None:
                    _close_quietly(raw)
            else:
                self._raw = raw
            self._done.set()

    def answer(self) -> tuple[str, Any]:
        """The status and the connection that got it, or, past the
        resolution's ``until``, no answer in time."""
        resolution = self._resolution
        self._done.wait(max(0.0, resolution.until - time.monotonic()))
        with self._lock:
            if not self._done.is_set():
                self._abandoned = True
                return "no answer in time", None
            return resolution.status, self._raw


# Which server assigned a transaction id, and since when: an id means
# nothing on another cluster (the next host of a multi-host DSN), and after
# a restart it may have been handed out again (see status_questions).
_SERVER = (
    "(SELECT system_identifier FROM pg_control_system())::text,"
    " pg_postmaster_start_time()::text"
)


def id_query(server_version: int, ask_server: bool) -> str:
    """The query for the open transaction's id (and the server's identity)."""
    current = (
        "pg_current_xact_id_if_assigned()"
        if server_version >= 130000
        else "txid_current_if_assigned()"
    )
    return f"SELECT {current}::text" + (", " + _SERVER) * ask_server


def status_questions(
    server_version: int, transaction_id: str, server: tuple[Any, ...]
) -> Generator[tuple[str, tuple[()]], Any, str]:
    """The rules for what became of a transaction, as questions to the server.

    Yields ``(query, params)`` (params always empty: the id is written
    into the query, so that any cursor class runs it), is sent the first
    row of each answer (or thrown its error), and returns 'committed',
    'aborted', 'in progress', or why the server cannot tell.
    """
    if not transaction_id.isdigit():
        return "not a transaction id"  # it goes into the query as it is
    now = yield f"SELECT {_SERVER}", ()
    if now[0] != server[0]:
        return "reconnected to another cluster, which cannot tell"
    if server_version >= 130000:
        query = f"SELECT pg_xact_status('{transaction_id}'::xid8)"
    else:
        query = f"SELECT txid_status({transaction_id})"
    try:
        (status,) = yield query, ()
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
    return str(status)


def _answer(
    raw: Any, questions: Generator[Question, Any, T], rollback: bool = False
) -> T:
    """Ask ``raw`` the core's ``questions``, sending each the first row of
    its answer (or throwing its error); return what they conclude.  With
    ``rollback``, end the transaction they opened, once they concluded:
    after an error, the error tells what happened, not a rollback of a
    query that may still be running (psycopg: "another command is already
    in progress")."""
    cursor = plain_cursor(raw)
    try:
        question = next(questions)
        while True:
            try:
                cursor.execute(*question)
            except Exception as error:
                question = questions.throw(error)
            else:
                question = questions.send(cursor.fetchone())
    except StopIteration as end:
        result: T = end.value
    finally:
        _close_quietly(cursor)
    if rollback:
        raw.rollback()
    return result


def _rollback_failed(error: Exception) -> None:
    log.warning("Rollback at the end of a block failed: %s", error)


def describe(exc: BaseException) -> str:
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

    def __init__(self, loop: AttemptLoop, number: int) -> None:
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

    def __exit__(self, *exc_info: object) -> bool:
        if exc_info[1] is None:
            return False
        self._loop.db.rollback()
        return self._loop.retried(self, exc_info[1])


class AttemptLoop:
    """The pacing of :func:`attempts`, sync and asyncio alike (a building
    block of the shells): how many tries, until when, and the pause after
    each failed one.  The shells only roll back and sleep."""

    def __init__(
        self,
        db: Any,
        tries: int,
        deadline: float,
        base_pause: float,
        max_pause: float,
        jitter: Callable[[], float],
        clock: Callable[[], float],
    ) -> None:
        if tries < 1:
            raise ValueError(f"tries must be at least 1, not {tries!r}")
        self.db = db
        self.tries = tries
        self.give_up_at = clock() + deadline
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

    def retried(self, attempt: Attempt, exc: object) -> bool:
        """Whether ``attempt``, rolled back after ``exc``, is retried: a
        :class:`Retry` with tries and time left.  Its pause is recorded."""
        if not isinstance(exc, Retry):
            return False
        pause = self.pause_after(attempt.number)
        if pause is None:
            return False  # out of tries or time: the last Retry goes on
        attempt.error, attempt.pause = exc, pause
        log.debug("Attempt %d interrupted; next in %.3f s", attempt.number, pause)
        return True

    def attempts(self, attempt_class: Callable[[AttemptLoop, int], A]) -> Iterator[A]:
        """Attempts 1, 2, ...: after each, the caller stops if its ``pause``
        is None (it got through, or its error went on), else sleeps that long."""
        for number in range(1, self.tries + 1):
            yield attempt_class(self, number)


def attempts(
    db: Any,
    tries: int = 5,
    deadline: float = 30.0,
    *,
    base_pause: float = 0.01,
    max_pause: float = 0.25,
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

    that is, up to 10 ms, 20 ms, 40 ms, ... and never more than a quarter
    of a second by default: a low cap, so that clients back from a restart
    do not sleep through the moments the server has room for them.  The
    loop gives up after ``tries`` attempts, or when the next one would
    start more than ``deadline`` seconds after the loop began, and raises
    the last :class:`Retry`.  :class:`CommitOutcomeUnknown` and
    every other error roll the connection back and propagate at once.

    ``sleep``, ``jitter`` (a number from 0 to 1) and ``clock`` are there
    for tests; each :class:`Attempt` records its ``pause``.
    """
    loop = AttemptLoop(db, tries, deadline, base_pause, max_pause, jitter, clock)
    for attempt in loop.attempts(Attempt):
        yield attempt
        if attempt.pause is None:
            return  # it got through (or its error went to the caller)
        sleep(attempt.pause)
