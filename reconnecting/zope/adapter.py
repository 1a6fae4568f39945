"""A Zope database adapter whose connections survive outages.

:class:`ReconnectingDatabaseAdapter` hands out one
:class:`~reconnecting.ReconnectingConnection` per thread, dressed as the
``zope.rdb`` interfaces of :mod:`reconnecting.zope.interfaces`.  Using a cursor
joins the connection to the current ``transaction``, through a data
manager (:mod:`reconnecting.zope.datamanager`) that commits and rolls back the
database transaction with it, and that tells the transaction manager to
retry a unit of work interrupted by an outage.  DSNs are read by
:func:`~reconnecting.zope.dsn.parse_dsn`.

This module needs ``zope.interface`` and ``transaction`` (the ``zope``
extra), and the driver (``psycopg2`` or ``psycopg``) once a connection is
made.
"""

from __future__ import annotations

import codecs
import importlib
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import transaction
from zope.interface import implementer

from reconnecting.connection import ReconnectingConnection, ReconnectingCursor, Retry
from reconnecting.zope.datamanager import ConnectionDataManager
from reconnecting.zope.dsn import conninfo, parse_dsn, redacted_dsn
from reconnecting.zope.interfaces import (
    IManageableZopeDatabaseAdapter,
    IZopeConnection,
    IZopeCursor,
)
from reconnecting.zope.prepared import PreparedTransactions, StillPreparedError
from reconnecting.zope.twophase import TwoPhaseDataManager

__all__ = [
    "DRIVERS",
    "ReconnectingDatabaseAdapter",
    "ZopeConnection",
    "ZopeCursor",
]

log = logging.getLogger("reconnecting")

#: The drivers the adapter can connect with: the modules' names.
DRIVERS = ("psycopg2", "psycopg")


def _identity(value: Any) -> Any:
    return value


@implementer(IManageableZopeDatabaseAdapter)
class ReconnectingDatabaseAdapter:
    """A Zope database adapter for PostgreSQL that survives outages.

    ``dsn`` is read by :func:`~reconnecting.zope.dsn.parse_dsn`.  Each thread gets
    its own :class:`ZopeConnection`; the server connection behind it is
    opened on first use and again after each outage, with the DSN current at
    that moment.  Its work joins transactions of ``transaction_manager``
    (``transaction.manager``, the thread-local default, if not given).

    Commits whose reply is lost are resolved (``resolve_commit`` of
    :class:`~reconnecting.ReconnectingConnection`), waiting up to
    ``resolve_timeout`` seconds for the server to say what happened.

    ``driver`` names the driver module: ``"psycopg2"`` or ``"psycopg"``
    (psycopg 3).  With ``two_phase=True`` the connections take part in
    transactions with a real two-phase commit
    (:class:`~reconnecting.zope.twophase.TwoPhaseDataManager`), which needs a
    server that allows prepared transactions; otherwise they commit when
    they vote (:class:`~reconnecting.zope.datamanager.ConnectionDataManager`).
    Prepared transactions not yet known to be finished are noted in
    :attr:`prepared`, for every thread, until they are.
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
        two_phase: bool = False,
        driver: str = "psycopg2",
    ) -> None:
        if driver not in DRIVERS:
            raise ValueError(f"driver must be one of {', '.join(DRIVERS)}: {driver!r}")
        self._local = threading.local()
        #: Seconds to wait for the server to tell what became of a commit.
        self.resolve_timeout = resolve_timeout
        #: Whether transactions commit in two phases (see the class).
        self.two_phase = two_phase
        #: The name of the driver module.
        self.driver = driver
        if transaction_manager is None:
            transaction_manager = transaction.manager
        self._transaction_manager = transaction_manager
        #: The prepared transactions of this adapter not known to be
        #: finished, with the decision for each (see
        #: :mod:`reconnecting.zope.prepared`).
        self.prepared = PreparedTransactions(self._connect_to_server)
        self.setDSN(dsn)

    def __repr__(self) -> str:
        name = f"{type(self).__module__}.{type(self).__qualname__}"
        return f"<{name} {self.redacted_dsn}>"

    @property
    def redacted_dsn(self) -> str:
        """The DSN, each password shown as ``***``: fit for logs and messages."""
        return redacted_dsn(self._parameters)

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
                resolve_timeout=self.resolve_timeout,
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
        # The driver is imported only once a connection is made.
        return importlib.import_module(self.driver).connect(conninfo(self._parameters))

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
        """Join the current transaction, unless already joined to it.

        Prepared transactions of the adapter whose decision is known but
        not yet carried out (the server was unreachable) are finished
        first; one that cannot be, within ``resolve_timeout``, raises
        :class:`~reconnecting.Retry`, since it may hold the locks this
        transaction needs.
        """
        current = self._transaction_manager.get()
        if self._joined is not current:
            two_phase = self._type_info.two_phase
            manager = TwoPhaseDataManager if two_phase else ConnectionDataManager
            current.join(manager(self, self._transaction_manager, current))
            self._joined = current
            self._finish_prepared()

    def _finish_prepared(self) -> None:
        prepared = self._type_info.prepared
        if not len(prepared):
            return
        outcomes = prepared.finish(timeout=self._type_info.resolve_timeout)
        for gid, outcome in outcomes.items():
            if outcome not in ("committed", "rolled back") and gid in prepared:
                error = StillPreparedError(gid, str(prepared[gid]), outcome)
                raise Retry((StillPreparedError, error, None)) from error

    def leave(self, finished: Any) -> None:
        """Forget the transaction ``finished``, if joined to it: the next
        use of a cursor joins the current one.  Its data manager calls this."""
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
