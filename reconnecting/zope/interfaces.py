"""The relational-database interfaces of Zope, declared for Python 3.

Zope applications reach a relational database through a *database adapter*:
an object configured with a DSN that hands out connections, whose cursors
join the current ``transaction`` when they are used.  ``zope.rdb`` defined
those interfaces but does not run on Python 3, so they are declared here
again with the same names and the same meanings.  Code that checks
``providedBy`` or registers components for them works unchanged.

Only the interfaces an adapter and its users need are here; the result-set
and SQL-script interfaces that ``zope.rdb`` also had belong to the Zope
management screens.  :mod:`reconnecting.zope.adapter` implements them.
"""

# ruff: noqa: N802, N805
# mypy: disable-error-code="misc"
# Interface methods keep Zope's camelCase names and, as zope.interface
# requires, are declared without ``self``.

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = [
    "DatabaseException",
    "IDBICursor",
    "IDBIConnection",
    "IDBITypeInfo",
    "IDBITypeInfoProvider",
    "IManageableZopeDatabaseAdapter",
    "IZopeConnection",
    "IZopeCursor",
    "IZopeDatabaseAdapter",
    "IZopeDatabaseAdapterManagement",
]


class DatabaseException(Exception):  # noqa: N818 (zope.rdb's name)
    """A database error, with a message meant for people.

    ``zope.rdb``'s generic database error, for code that raises or catches
    it.  The adapter itself lets the driver's errors through unchanged.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class IDBITypeInfo(Interface):
    """What a client needs to know about the DB-API driver behind an adapter."""

    paramstyle = Attribute(
        "How query parameters are written, as PEP 249 names it: 'qmark', "
        "'numeric', 'named', 'format' or 'pyformat' (``%(name)s``)."
    )
    threadsafety = Attribute(
        "PEP 249's level of thread safety: 0, threads may not share the "
        "module; 1, the module but not connections; 2, modules and "
        "connections; 3, cursors too."
    )
    encoding = Attribute("The name of the encoding of the database's text.")

    def getEncoding():
        """Return ``encoding``."""

    def setEncoding(encoding):
        """Set ``encoding``; an unknown encoding is an error."""

    def getConverter(type):
        """Return a function that converts a value of column type ``type``.

        ``type`` is the ``type_code`` of a column of a cursor's
        ``description``; the function takes the value the driver returned.
        """


class IDBITypeInfoProvider(Interface):
    """Something that knows the type information of its driver."""

    def getTypeInfo():
        """Return an :class:`IDBITypeInfo`."""


class IDBICursor(Interface):
    """A PEP 249 cursor."""

    description = Attribute(
        "One 7-item sequence per result column (name, type_code, "
        "display_size, internal_size, precision, scale, null_ok), or None "
        "when the last operation returned no rows."
    )
    arraysize = Attribute("How many rows fetchmany() returns by default.")

    def close():
        """Close the cursor; using it afterwards is an error."""

    def execute(operation, parameters=None):
        """Run one query or command, with its parameters bound."""

    def executemany(operation, seq_of_parameters):
        """Run one query or command once for each set of parameters."""

    def fetchone():
        """Return the next row of the result, or None after the last one."""

    def fetchmany(size=None):
        """Return up to ``size`` more rows (``arraysize`` by default)."""

    def fetchall():
        """Return all remaining rows of the result."""


class IDBIConnection(Interface):
    """A PEP 249 connection."""

    def cursor():
        """Return a new :class:`IDBICursor` on this connection."""

    def commit():
        """Make the work of the current database transaction permanent."""

    def rollback():
        """Undo the work of the current database transaction."""

    def close():
        """Close the connection; using it or its cursors afterwards is an
        error."""


class IZopeDatabaseAdapter(IDBITypeInfo):
    """A long-lived object that hands out :class:`IZopeConnection` objects."""

    def isConnected():
        """Tell whether a connection has been made and not yet closed."""

    def __call__():
        """Connect if needed, and return an :class:`IZopeConnection`."""


class IZopeDatabaseAdapterManagement(Interface):
    """Configuring an adapter, and opening or closing its connection."""

    dsn = Attribute(
        "The DSN (data source name): ``dbi://user:password@host:port/dbname"
        ";key=value;...``, each part percent-encoded and optional."
    )

    def setDSN(dsn):
        """Set ``dsn``."""

    def getDSN():
        """Return ``dsn``."""

    def connect():
        """Connect to the database that ``dsn`` names."""

    def disconnect():
        """Close the connection to the database."""


class IManageableZopeDatabaseAdapter(
    IZopeDatabaseAdapter, IZopeDatabaseAdapterManagement
):
    """A database adapter that can also be configured and managed."""


class IZopeConnection(IDBIConnection, IDBITypeInfoProvider):
    """A connection in the Zope sense: it takes part in transactions.

    The object stands for a database connection even when no server
    connection is open at the moment.
    """

    def cursor():
        """Return a new :class:`IZopeCursor`."""

    def registerForTxn():
        """Join the current transaction, if not joined to it already.

        Cursors call this; application code has no need to.
        """


class IZopeCursor(IDBICursor):
    """A cursor whose statements are part of the current transaction."""

    def execute(operation, parameters=None):
        """Join the connection to the current transaction, then execute."""

    def executemany(operation, seq_of_parameters):
        """Join the connection to the current transaction, then execute
        once for each set of parameters."""
