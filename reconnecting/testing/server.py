"""The servers that test databases live on.

``Server`` is what ``PgTestSetup`` needs of one: making and dropping test
databases, cloned from a small template, and terminating their connections.
``ExistingServer`` is a server named by ``RECONNECTING_TEST_SERVER``, which
the tests may not stop or start; ``Cluster`` (in
:mod:`reconnecting.testing.cluster`) is a throwaway one; that module's
``get_server()`` chooses between them.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg2
from psycopg2.extensions import make_dsn, parse_dsn

from reconnecting.testing.waiting import wait_until

__all__ = ["SERVER_ENV", "ExistingServer", "Server"]

SERVER_ENV = "RECONNECTING_TEST_SERVER"
TEMPLATE = "reconnecting_template"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Server:
    """What ``PgTestSetup`` needs of a server: ``Cluster`` or ``ExistingServer``."""

    host: str
    port: int | None
    user: str
    _fast_clone = False  # FILE_COPY checkpoints: fine on a throwaway cluster only

    def __init__(self) -> None:
        self._template_lock = threading.Lock()
        self._template_ready = False
        self._version_num: int | None = None

    @property
    def running(self) -> bool:
        """True while the server runs; an existing server always does."""
        return True

    def admin_connect(self, dbname: str | None = None) -> Any:
        """Return a new autocommit psycopg2 connection with the rights to manage
        databases."""
        raise NotImplementedError

    def dsn(self, dbname: str, **extra: Any) -> str:
        """Return a libpq connection string for *dbname*, without a password."""
        raise NotImplementedError

    def connect(self, dbname: str, **kwargs: Any) -> Any:
        """Return a new psycopg2 connection to *dbname*.

        :param kwargs: passed to ``psycopg2.connect``.
        """
        return psycopg2.connect(self.dsn(dbname), **kwargs)

    def _execute(self, *statements: str, dbname: str | None = None) -> float:
        """Run *statements* in autocommit mode; return the seconds the last took."""
        conn = self.admin_connect(dbname)
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    started = time.perf_counter()
                    cur.execute(statement)
            return time.perf_counter() - started
        finally:
            conn.close()

    def terminate_backends(self, dbname: str, timeout: float = 10.0) -> int:
        """Terminate every connection to *dbname*, and wait until they are gone.

        :returns: the number of connections terminated.
        """
        conn = self.admin_connect()
        try:
            cur = conn.cursor()
            # In the select list, not in WHERE, whose order of evaluation is free.
            cur.execute(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            )
            pids = [pid for pid, terminated in cur.fetchall() if terminated]

            def connections_gone() -> bool:
                # Autocommit: every query sees a fresh snapshot of pg_stat_activity.
                query = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)"
                cur.execute(query, (pids,))
                return cur.fetchone()[0] == 0

            if pids:
                wait_until(connections_gone, timeout)
            return len(pids)
        finally:
            conn.close()

    def create_database(self, dbname: str) -> float:
        """Create *dbname* from the template; return the seconds that took."""
        self._ensure_template()
        strategy = ""
        if self._fast_clone and self.server_version_num >= 150000:
            strategy = " STRATEGY FILE_COPY"  # twice as fast as WAL_LOG, fsync off
        return self._execute(
            f"CREATE DATABASE {_ident(dbname)} TEMPLATE {TEMPLATE}{strategy}"
        )

    def drop_database(self, dbname: str) -> float:
        """Terminate the connections to *dbname* and drop it; return the seconds
        the drop took."""
        self.terminate_backends(dbname)
        # FORCE waits ~100 ms for connections: a safety net for latecomers only.
        force = " WITH (FORCE)" if self.server_version_num >= 130000 else ""
        return self._execute(f"DROP DATABASE IF EXISTS {_ident(dbname)}{force}")

    @property
    def server_version_num(self) -> int:
        """The server's version as a number, e.g. ``150018``."""
        if self._version_num is None:
            conn = self.admin_connect()
            self._version_num = conn.server_version
            conn.close()
        return self._version_num

    def _ensure_template(self) -> None:
        with self._template_lock:
            if self._template_ready:
                return
            # A stale one from an earlier run may be in any state: start afresh.
            # template0 is pristine on any server; template1 may be customised.
            # Nobody may connect to ours: a connection would make cloning fail.
            if self._template_exists():
                self._execute(
                    f"ALTER DATABASE {TEMPLATE} IS_TEMPLATE false",
                    f"DROP DATABASE {TEMPLATE}",
                )
            self._execute(
                f"CREATE DATABASE {TEMPLATE} TEMPLATE template0 ENCODING 'UTF8'"
                " LC_COLLATE 'C' LC_CTYPE 'C'",
                f"ALTER DATABASE {TEMPLATE} ALLOW_CONNECTIONS false",
            )
            self._template_ready = True

    def _template_exists(self) -> bool:
        conn = self.admin_connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (TEMPLATE,))
                return cur.fetchone() is not None
        finally:
            conn.close()

    def start(self) -> None:
        """Start the server."""
        raise NotImplementedError

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; *mode* is ``"smart"``, ``"fast"`` or ``"immediate"``."""
        raise NotImplementedError

    def restart(self, mode: str = "fast") -> None:
        """Stop the server with *mode*, then start it again."""
        raise NotImplementedError


class ExistingServer(Server):
    """An existing server named by a libpq connection string.

    Test databases can be created and dropped, and their connections
    terminated, but the server cannot be stopped or started.
    """

    def __init__(self, conninfo: str) -> None:
        super().__init__()
        self._params = parse_dsn(conninfo)  # fails early on a malformed string
        self._resolved: tuple[str, int, str] | None = None

    def _resolve(self, index: int) -> Any:
        # libpq fills in what the string leaves out: ask a connection.
        if self._resolved is None:
            conn = self.admin_connect()
            self._resolved = (conn.info.host, conn.info.port, conn.info.user)
            conn.close()
        return self._resolved[index]

    host = property(lambda self: self._resolve(0), doc="Host name or socket directory.")
    port = property(lambda self: self._resolve(1), doc="The server's port.")
    user = property(lambda self: self._resolve(2), doc="The role connected as.")

    def start(self, *args: Any, **kwargs: Any) -> None:
        """Raise ``RuntimeError``: an existing server cannot be controlled."""
        raise RuntimeError(
            f"Stopping and starting the server needs a throwaway cluster, but "
            f"{SERVER_ENV} names an existing server: unset it to get one."
        )

    stop = restart = start

    def admin_connect(self, dbname: str | None = None) -> Any:
        """Connect as the connection string says (with its password, if any)."""
        dbname = dbname or self._params.get("dbname") or "postgres"
        conn = psycopg2.connect(make_dsn(**{**self._params, "dbname": dbname}))
        conn.autocommit = True
        return conn

    def dsn(self, dbname: str, **extra: Any) -> str:
        """Return the connection string for *dbname*, without its password."""
        params = {k: v for k, v in self._params.items() if k != "password"}
        return make_dsn(**{**params, "dbname": dbname, **extra})

    def connect(self, dbname: str, **kwargs: Any) -> Any:
        """Return a new psycopg2 connection to *dbname*, with the password if any."""
        dsn = make_dsn(**{**self._params, "dbname": dbname})
        return psycopg2.connect(dsn, **kwargs)

    def __repr__(self) -> str:
        # Never connect, nor show a password, to describe the server.
        keys = ("host", "port", "user")
        host, port, user = self._resolved or [self._params.get(k) for k in keys]
        return f"<ExistingServer host={host!r} port={port!r} user={user!r}>"
