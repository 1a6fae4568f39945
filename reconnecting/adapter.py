"""A Zope database adapter whose connections survive outages.

:class:`ReconnectingDatabaseAdapter` hands out one
:class:`~reconnecting.ReconnectingConnection` per thread, dressed as the
``zope.rdb`` interfaces of :mod:`reconnecting.interfaces`.  Using a cursor
joins the connection to the current ``transaction``, through a
:class:`ConnectionDataManager` that commits and rolls back the database
transaction with it, and that tells the transaction manager to retry a
unit of work interrupted by an outage.

This module needs ``zope.interface`` and ``transaction`` (the ``zope``
extra), and the ``psycopg2`` driver once a connection is made.
"""

from __future__ import annotations

import codecs
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote_plus, unquote_plus

import transaction
from transaction.interfaces import IRetryDataManager
from zope.interface import implementer

from reconnecting.connection import ReconnectingConnection, ReconnectingCursor, Retry
from reconnecting.interfaces import (
    IManageableZopeDatabaseAdapter,
    IZopeConnection,
    IZopeCursor,
)

__all__ = [
    "ConnectionDataManager",
    "ReconnectingDatabaseAdapter",
    "ZopeConnection",
    "ZopeCursor",
    "parse_dsn",
]

_KEYWORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_dsn(dsn: str) -> dict[str, str]:
    """Turn a Zope DSN into libpq connection keywords.

    The DSN reads ``dbi://user:password@host:port/dbname;key=value;...``.
    Every part is optional and percent-encoded (``+`` stands for a space, as
    in ``zope.rdb``).  Without ``@`` the part before ``/`` is the user and
    password, not the host.  Only the parts present are returned.

    :raises ValueError: saying what is wrong, never quoting the password.
    :raises TypeError: if ``dsn`` is not a string.
    """
    if not isinstance(dsn, str):
        raise TypeError(f"a DSN is a str, not {type(dsn).__name__}")
    if not dsn.startswith("dbi://"):
        raise ValueError("a DSN must start with 'dbi://'")
    path, _, raw_parameters = dsn[len("dbi://") :].partition(";")
    # Split at the last '/' and '@': an unencoded '/' or '@' in a password
    # must not push the password into the database name or host.
    location, _, dbname = path.rpartition("/")
    if ":" in dbname or "@" in dbname:
        raise ValueError(
            "unexpected ':' or '@' in the database name: percent-encode it, "
            "and any ';' in the password"
        )
    userinfo, at, hostport = location.rpartition("@")
    if not at:
        userinfo, hostport = location, ""
    user, _, password = userinfo.partition(":")
    if hostport.startswith("["):  # an IPv6 address: [::1]:5432
        host, bracket, port = hostport[1:].partition("]")
        if not bracket or port[:1] not in ("", ":"):
            raise ValueError("write an IPv6 host as [address] or [address]:port")
        port = port[1:]
    else:
        host, _, port = hostport.partition(":")
    parts = {"user": user, "password": password, "host": host, "port": port}
    parts["dbname"] = dbname
    parameters = {key: unquote_plus(value) for key, value in parts.items() if value}
    for number, item in enumerate(raw_parameters.split(";"), start=1):
        if not item:
            continue  # a trailing or doubled ';'
        key, equals, value = item.partition("=")
        key = unquote_plus(key)
        if not equals or not _KEYWORD.fullmatch(key):
            raise ValueError(f"parameter {number} after ';' is not keyword=value")
        if key in parameters:
            raise ValueError(f"{key!r} is given twice")
        parameters[key] = unquote_plus(value)
    port = parameters.get("port")
    if port is not None and not (
        port.isascii() and port.isdigit() and 1 <= int(port) <= 65535
    ):
        # Not quoted: with an unencoded '@' in a password, this may be part of it.
        raise ValueError("the port must be a number from 1 to 65535")
    return parameters


def _redacted_dsn(parameters: dict[str, str]) -> str:
    """Write ``parameters`` back as a DSN, every password shown as ``***``."""
    shown = {
        key: "***" if "password" in key else quote_plus(value)
        for key, value in parameters.items()
    }
    location = shown.pop("user", "")
    if "password" in shown:
        location += ":" + shown.pop("password")
    if "host" in shown or "port" in shown:
        location += "@" + shown.pop("host", "")
        if "port" in shown:
            location += ":" + shown.pop("port")
    dsn = "dbi://" + (location + "/" if location else "") + shown.pop("dbname", "")
    return dsn + "".join(f";{key}={value}" for key, value in shown.items())


def _conninfo(parameters: dict[str, str]) -> str:
    """Write ``parameters`` as a libpq connection string."""
    # Quote every value, escaping backslashes and quotes, as libpq reads them.
    return " ".join(
        "{}='{}'".format(key, value.replace("\\", "\\\\").replace("'", "\\'"))
        for key, value in parameters.items()
    )


def _identity(value: Any) -> Any:
    return value


@implementer(IManageableZopeDatabaseAdapter)
class ReconnectingDatabaseAdapter:
    """A Zope database adapter for PostgreSQL that survives outages.

    ``dsn`` is read by :func:`parse_dsn`.  Each thread gets its own
    :class:`ZopeConnection`; the server connection behind it is opened on
    first use and again after each outage, with the DSN current at that
    moment.  Its work joins transactions of ``transaction_manager``
    (``transaction.manager``, the thread-local default, if not given).

    Commits whose reply is lost are resolved (``resolve_commit`` of
    :class:`~reconnecting.ReconnectingConnection`), waiting up to
    ``resolve_timeout`` seconds for the server to say what happened.
    """

    #: The driver's parameter style: ``%(name)s`` and ``%s``.
    paramstyle = "pyformat"
    #: Threads may share the module and connections (PEP 249).
    threadsafety = 2
    #: The encoding of the database's text; the driver decodes it.
    encoding = "utf-8"

    def __init__(
        self,
        dsn: str,
        *,
        transaction_manager: Any = None,
        resolve_timeout: float = 10.0,
    ) -> None:
        self._local = threading.local()
        self._resolve_timeout = resolve_timeout
        if transaction_manager is None:
            transaction_manager = transaction.manager
        self._transaction_manager = transaction_manager
        self.setDSN(dsn)

    def __repr__(self) -> str:
        name = f"{type(self).__module__}.{type(self).__qualname__}"
        return f"<{name} {_redacted_dsn(self._parameters)}>"

    def setDSN(self, dsn: str) -> None:  # noqa: N802 (Zope API)
        """Check and set the DSN, for the server connections made from now on.

        An open connection keeps its server connection until the next
        outage or :meth:`disconnect`.
        """
        self._parameters = parse_dsn(dsn)
        self._dsn = dsn

    def getDSN(self) -> str:  # noqa: N802 (Zope API)
        """Return the DSN as it was set, password included."""
        return self._dsn

    dsn = property(getDSN, setDSN, doc="The DSN; see :meth:`setDSN`.")

    def connect(self) -> None:
        """Make this thread's connection, unless it has one.

        No server connection is opened yet: that happens on first use, so
        an application can start while the database is down.
        """
        if not self.isConnected():
            # The transaction manager retries on Retry, so a commit whose
            # reply was lost must be resolved, never simply retried.
            connection = ReconnectingConnection(
                self._connect_to_server,
                resolve_commit=True,
                resolve_timeout=self._resolve_timeout,
            )
            self._local.connection = ZopeConnection(
                connection, self, self._transaction_manager
            )

    def disconnect(self) -> None:
        """Close this thread's connection, if it has one."""
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            connection.close()

    def isConnected(self) -> bool:  # noqa: N802 (Zope API)
        """Tell whether this thread has a connection that is not closed."""
        connection = getattr(self._local, "connection", None)
        return connection is not None and not connection.closed

    def __call__(self) -> ZopeConnection:
        """Return this thread's connection, made by :meth:`connect` if needed."""
        self.connect()
        return self._local.connection

    def _connect_to_server(self) -> Any:
        import psycopg2  # the driver is needed only once a connection is made

        return psycopg2.connect(_conninfo(self._parameters))

    def getEncoding(self) -> str:  # noqa: N802 (Zope API)
        """Return :attr:`encoding`."""
        return self.encoding

    def setEncoding(self, encoding: str) -> None:  # noqa: N802 (Zope API)
        """Set :attr:`encoding`; raises ``LookupError`` if Python lacks it."""
        codecs.lookup(encoding)
        self.encoding = encoding

    def getConverter(self, type: Any) -> Any:  # noqa: N802 (Zope API)
        """Return the converter for column type ``type``: the driver's values
        are used as they are."""
        return _identity


@implementer(IZopeConnection)
class ZopeConnection:
    """A :class:`~reconnecting.ReconnectingConnection` that joins transactions."""

    def __init__(
        self,
        connection: ReconnectingConnection,
        type_info: ReconnectingDatabaseAdapter,
        transaction_manager: Any,
    ) -> None:
        self._connection = connection
        self._type_info = type_info
        self._transaction_manager = transaction_manager
        self._joined: Any = None  # the transaction our data manager is in

    @property
    def connection(self) -> ReconnectingConnection:
        """The :class:`~reconnecting.ReconnectingConnection` underneath."""
        return self._connection

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._connection.closed

    def cursor(self, *args: Any, **kwargs: Any) -> ZopeCursor:
        """Return a :class:`ZopeCursor`; the arguments go to the driver."""
        return ZopeCursor(self._connection.cursor(*args, **kwargs), self)

    def commit(self) -> None:
        """Commit the database transaction now, outside the transaction's
        two-phase commit."""
        self._connection.commit()

    def rollback(self) -> None:
        """Roll back the database transaction, and end a disconnection."""
        self._connection.rollback()

    def close(self) -> None:
        """Close the connection for good."""
        self._connection.close()

    def registerForTxn(self) -> None:  # noqa: N802 (Zope API)
        """Join the current transaction, unless already joined to it."""
        current = self._transaction_manager.get()
        if self._joined is not current:
            current.join(ConnectionDataManager(self, self._transaction_manager))
            self._joined = current

    def _left(self, finished: Any) -> None:
        if self._joined is finished:
            self._joined = None

    def getTypeInfo(self) -> ReconnectingDatabaseAdapter:  # noqa: N802 (Zope API)
        """Return the adapter, which describes the driver."""
        return self._type_info


@implementer(IZopeCursor)
class ZopeCursor:
    """A cursor that joins the transaction and returns rows as lists.

    Every call that talks to the server joins the connection to the
    current transaction first.  Other attributes, such as ``description``
    or ``rowcount``, are those of the driver's cursor.
    """

    def __init__(self, cursor: ReconnectingCursor, connection: ZopeConnection) -> None:
        self._cursor = cursor
        self._connection = connection

    @property
    def connection(self) -> ZopeConnection:
        """The :class:`ZopeConnection` this cursor belongs to."""
        return self._connection

    @property
    def arraysize(self) -> int:
        """How many rows :meth:`fetchmany` returns by default."""
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, size: int) -> None:
        self._cursor.arraysize = size

    def execute(self, operation: Any, parameters: Any = None) -> None:
        """Join the transaction, then run ``operation``."""
        self._connection.registerForTxn()
        if parameters is None:
            self._cursor.execute(operation)
        else:
            self._cursor.execute(operation, parameters)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> None:
        """Join the transaction, then run ``operation`` for each set of
        parameters."""
        self._connection.registerForTxn()
        self._cursor.executemany(operation, seq_of_parameters)

    def fetchone(self) -> list | None:
        """Return the next row as a list, or ``None``."""
        self._connection.registerForTxn()
        row = self._cursor.fetchone()
        return None if row is None else self._as_lists([row])[0]

    def fetchmany(self, size: int | None = None) -> list[list]:
        """Return up to ``size`` more rows (:attr:`arraysize` by default)."""
        self._connection.registerForTxn()
        if size is None:
            return self._as_lists(self._cursor.fetchmany())
        return self._as_lists(self._cursor.fetchmany(size))

    def fetchall(self) -> list[list]:
        """Return the remaining rows, each as a list."""
        self._connection.registerForTxn()
        return self._as_lists(self._cursor.fetchall())

    def __iter__(self) -> Iterator[list]:
        return self

    def __next__(self) -> list:
        self._connection.registerForTxn()
        return self._as_lists([next(self._cursor)])[0]

    def _as_lists(self, rows: Sequence[Sequence[Any]]) -> list[list]:
        get_converter = self._connection.getTypeInfo().getConverter
        converters = [get_converter(column[1]) for column in self.description]
        return [
            [convert(value) for convert, value in zip(converters, row, strict=True)]
            for row in rows
        ]

    def close(self) -> None:
        """Close the cursor; the connection stays open."""
        self._cursor.close()

    def __enter__(self) -> ZopeCursor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(self._cursor, name)
        if not callable(value):
            return value

        def join_then_call(*args: Any, **kwargs: Any) -> Any:
            # callproc, copy_expert, ...: they may change data, so join first.
            self._connection.registerForTxn()
            return value(*args, **kwargs)

        return join_then_call


@implementer(IRetryDataManager)
class ConnectionDataManager:
    """Takes part, for one :class:`ZopeConnection`, in one transaction.

    The database transaction is committed in :meth:`tpc_vote` and rolled
    back by :meth:`abort` and :meth:`tpc_abort`.
    """

    def __init__(self, connection: ZopeConnection, transaction_manager: Any) -> None:
        self._connection = connection
        #: The transaction manager whose transaction this one joined.
        self.transaction_manager = transaction_manager

    def abort(self, txn: Any) -> None:
        """Roll back; doing it again does no harm."""
        self._connection._left(txn)
        if not self._connection.closed:  # closing rolled back already
            self._connection.rollback()

    def tpc_begin(self, txn: Any) -> None:
        """Nothing to prepare."""

    def commit(self, txn: Any) -> None:
        """Nothing to do: the work is in the database transaction already."""

    def tpc_vote(self, txn: Any) -> None:
        """Commit the database transaction.

        PostgreSQL cannot promise a commit without making it, so it is made
        here, where a failure still aborts the whole transaction.  A
        :class:`~reconnecting.Retry` raised here means the commit may or may
        not have happened.
        """
        self._connection.commit()

    def tpc_finish(self, txn: Any) -> None:
        """Forget the finished transaction."""
        self._connection._left(txn)

    def tpc_abort(self, txn: Any) -> None:
        """Roll back, as :meth:`abort` (a commit made by the vote stays)."""
        self.abort(txn)

    def sortKey(self) -> str:  # noqa: N802 (transaction API)
        """Return a key that sorts after the usual ones."""
        # Vote last: every other resource has then voted yes before the
        # commit that cannot be taken back.
        return f"~reconnecting:{id(self)}"

    def should_retry(self, exception: BaseException) -> bool:
        """Tell the transaction manager to retry after a :class:`~reconnecting.Retry`.

        A commit whose outcome is unknown must not be retried; an error
        saying so must therefore not be a ``Retry``.
        """
        return isinstance(exception, Retry)
