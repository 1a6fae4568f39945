"""The servers that test databases live on.

``Server`` is what ``PgTestSetup`` needs of one: making and dropping test
databases, cloned from a small template, and terminating their connections.
``ExistingServer`` is a server named by ``RECONNECTING_TEST_SERVER``, which
the tests may not stop or start; ``Cluster`` (in
:mod:`reconnecting.testing.cluster`) is a throwaway one; that module's
``get_server()`` chooses between them.

libpq reads its own environment variables (``PGHOST``, ``PGHOSTADDR``,
``PGPASSWORD``, ``PGSERVICE``, ``PGSSLMODE`` and the rest) at every
connection, and they would fill in, or override, what a connection string
leaves out.  ``forget_libpq_environment()`` removes them from the test
process before the fixtures connect, and the connection strings the
fixtures make name every part explicitly, so that nobody's real server is
reached by accident.
"""

from __future__ import annotations

import atexit
import os
import secrets
import threading
import time
from typing import Any

import psycopg2
from psycopg2.extensions import make_dsn, parse_dsn

from reconnecting.testing.waiting import wait_until

__all__ = ["SERVER_ENV", "ExistingServer", "Server", "forget_libpq_environment"]

SERVER_ENV = "RECONNECTING_TEST_SERVER"
TEMPLATE_PREFIX = "reconnecting_template_"
# The parts RECONNECTING_TEST_SERVER must name itself: libpq would take any
# other from its environment or its defaults.
REQUIRED = ("host", "port", "user", "dbname")
# Parts that would pull in settings from files nobody named.
REFUSED = ("service", "servicefile")


def forget_libpq_environment() -> None:
    """Remove libpq's ``PG*`` variables from this process's environment.

    libpq consults them at every connection; none may choose, or reach
    into, a test server.  (The server binaries get an environment without
    them too.)
    """
    for name in [name for name in os.environ if name.startswith("PG")]:
        os.environ.pop(name, None)


def write_private_file(path: str, text: str) -> None:
    """Write *text* to *path*, readable by its owner only (it holds a secret)."""
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(text)


def run_token() -> str:
    """A random token naming this process's databases: unique per run and
    per xdist worker, whatever the PID namespace."""
    global _token
    if _token is None or _token[0] != os.getpid():
        _token = (os.getpid(), secrets.token_hex(4))
    return _token[1]


_token: tuple[int, str] | None = None


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Server:
    """What ``PgTestSetup`` needs of a server: ``Cluster`` or ``ExistingServer``."""

    host: str
    port: int | str | None  # str: several, as in "5432,5433"
    user: str
    #: The role's password, or ``""`` when the server asks none (never printed).
    password: str = ""
    _fast_clone = False  # FILE_COPY checkpoints: fine on a throwaway cluster only

    def __init__(self) -> None:
        self._template_lock = threading.Lock()
        self._template: str | None = None  # this run's own, once made
        self._template_pid: int | None = None  # the process that made it
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
        """Return a libpq connection string for *dbname*, password included."""
        raise NotImplementedError

    def connect(self, dbname: str, **kwargs: Any) -> Any:
        """Return a new psycopg2 connection to *dbname*.

        :param kwargs: passed to ``psycopg2.connect``.
        """
        forget_libpq_environment()
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

    def _value(self, query: str, args: tuple = ()) -> Any:
        """Run *query* over a connection of its own; return the first column
        of its first row, or None if it returned no row."""
        conn = self.admin_connect()
        try:
            cursor = conn.cursor()
            cursor.execute(query, args)
            row = cursor.fetchone()
            return row[0] if row else None
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
        template = self._ensure_template()
        strategy = ""
        if self._fast_clone and self.server_version_num >= 150000:
            strategy = " STRATEGY FILE_COPY"  # twice as fast as WAL_LOG, fsync off
        return self._execute(
            f"CREATE DATABASE {_ident(dbname)} TEMPLATE {_ident(template)}{strategy}"
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

    def _ensure_template(self) -> str:
        """Make this run's template, once; return its name.

        Its name is this run's own (random), so runs and xdist workers sharing a
        server never clone from a template another one is re-making.
        template0 is pristine on any server; template1 may be customised.
        Nobody may connect to ours: a connection would make cloning fail.
        """
        with self._template_lock:
            template = self._template
            if template is None or self._template_pid != os.getpid():
                template = TEMPLATE_PREFIX + secrets.token_hex(4)
                self._execute(
                    f"CREATE DATABASE {template} TEMPLATE template0 ENCODING 'UTF8'"
                    " LC_COLLATE 'C' LC_CTYPE 'C'",
                    f"ALTER DATABASE {template} ALLOW_CONNECTIONS false",
                )
                self._template, self._template_pid = template, os.getpid()
            return template

    def drop_template(self) -> None:
        """Drop this run's template, if made (the end of a run does it)."""
        with self._template_lock:
            template, self._template = self._template, None
            if template is not None and self._template_pid == os.getpid():
                self._execute(f"DROP DATABASE IF EXISTS {template}")

    def start(self) -> None:
        """Start the server."""
        raise NotImplementedError

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; *mode* is ``"smart"``, ``"fast"`` or ``"immediate"``."""
        raise NotImplementedError

    def restart(self, mode: str = "fast") -> None:
        """Stop the server with *mode*, then start it again."""
        raise NotImplementedError


def _explicit(params: dict[str, str]) -> dict[str, str]:
    """*params* with the parts libpq would otherwise look up set to nothing:
    no ``PGHOSTADDR``, no password file unless one is named."""
    defaults = {"hostaddr": ""}
    if "password" not in params:  # no ~/.pgpass: a path that cannot exist
        defaults["passfile"] = os.path.join(os.devnull, "none")
    return {**defaults, **params}


def parse_server_conninfo(conninfo: str) -> dict[str, str]:
    """Parse the connection string of ``RECONNECTING_TEST_SERVER``.

    :raises ValueError: if it does not parse, or leaves out a part that it
        must name (host, port, user, dbname), or names a service.  The
        message never quotes the string, which may hold a password.
    """
    try:
        params = parse_dsn(conninfo)
    except psycopg2.Error:
        raise ValueError(
            f"{SERVER_ENV} is not a libpq connection string"
            " (e.g. 'host=/run/postgresql port=5432 user=postgres dbname=postgres')"
        ) from None
    missing = [name for name in REQUIRED if not params.get(name)]
    refused = [name for name in REFUSED if name in params]
    if missing or refused:
        problems = []
        if missing:
            problems.append(f"name {', '.join(missing)} too")
        if refused:
            problems.append(f"not name {', '.join(refused)}")
        raise ValueError(
            f"{SERVER_ENV} must {' and '.join(problems)}: every part of the"
            " connection is given there explicitly, since libpq's PG* variables,"
            " service files and defaults are not used to choose a test server"
            f" (given: {', '.join(sorted(params)) or 'nothing'})"
        )
    return _explicit(params)


class ExistingServer(Server):
    """An existing server named by a libpq connection string.

    Test databases can be created and dropped, and their connections
    terminated, but the server cannot be stopped or started.  The string
    must name host, port, user and dbname (the database to connect to
    for managing the others); a password, if the server wants one.
    """

    def __init__(self, conninfo: str) -> None:
        super().__init__()
        self._params = parse_server_conninfo(conninfo)  # fails early
        self.host: str = self._params["host"]
        self.port: int | str = self._params["port"]
        self.user: str = self._params["user"]
        self.password = self._params.get("password", "")
        if self.port.isdigit():
            self.port = int(self.port)
        atexit.register(self._drop_template_quietly)

    def _drop_template_quietly(self) -> None:
        try:
            self.drop_template()
        except psycopg2.Error:
            pass  # the server went away: nothing more to do there

    def start(self, *args: Any, **kwargs: Any) -> None:
        """Raise ``RuntimeError``: an existing server cannot be controlled."""
        raise RuntimeError(
            f"Stopping and starting the server needs a throwaway cluster, but "
            f"{SERVER_ENV} names an existing server: unset it to get one."
        )

    stop = restart = start

    def admin_connect(self, dbname: str | None = None) -> Any:
        """Connect as the connection string says (with its password, if any)."""
        forget_libpq_environment()
        dsn = make_dsn(**{**self._params, "dbname": dbname or self._params["dbname"]})
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        return conn

    def dsn(self, dbname: str, **extra: Any) -> str:
        """Return the connection string for *dbname*, with its password if any."""
        return make_dsn(**{**self._params, "dbname": dbname, **extra})

    def connect(self, dbname: str, **kwargs: Any) -> Any:
        """Return a new psycopg2 connection to *dbname*, with the password if any."""
        forget_libpq_environment()
        return psycopg2.connect(self.dsn(dbname), **kwargs)

    def __repr__(self) -> str:
        # Never show a password to describe the server.
        return (
            f"<ExistingServer host={self.host!r} port={self.port!r} user={self.user!r}>"
        )
