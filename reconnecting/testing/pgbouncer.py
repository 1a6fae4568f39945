"""A throwaway PgBouncer in front of a test server.

``PgBouncer`` writes its configuration (an auth file, ``admin_users``, the
pool mode) into a private temporary directory, listens on 127.0.0.1 on a
free port that it keeps across restarts, and forwards every database name
to the same database on the test server.  Its admin console is a method
call away: ``pause()``, ``resume()``, ``kill()``, ``reconnect()``,
``reload()``, ``shutdown()``.  The directory goes when the process exits,
or, if the process is killed, when its watchdog notices
(``reconnecting/testing/_watchdog.py``, as for the test cluster).  When
running as root, PgBouncer runs as the server's unprivileged user, since it
refuses to run as root.

The program is the one named by ``RECONNECTING_TEST_PGBOUNCER``, else
``pgbouncer`` on ``PATH``, else in ``/usr/sbin`` (Debian's package puts it
there).  ``pgbouncer_unavailable()`` tells why there is none.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from typing import Any

import psycopg2
from psycopg2.extensions import make_dsn

from reconnecting.testing._process import FixtureProcess, free_port
from reconnecting.testing.cluster import get_server
from reconnecting.testing.server import (
    Server,
    forget_libpq_environment,
    write_private_file,
)

__all__ = ["PGBOUNCER_ENV", "PgBouncer", "find_pgbouncer", "pgbouncer_unavailable"]

PGBOUNCER_ENV = "RECONNECTING_TEST_PGBOUNCER"
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


def find_pgbouncer() -> str:
    """Return the path of the ``pgbouncer`` program the fixture runs.

    :raises RuntimeError: if there is none; the message names the remedies.
    """
    configured = os.environ.get(PGBOUNCER_ENV, "").strip()
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return os.path.abspath(configured)
        raise RuntimeError(f"{PGBOUNCER_ENV}={configured!r} is not a program")
    path = os.environ.get("PATH", os.defpath) + os.pathsep + _SBIN
    if found := shutil.which("pgbouncer", path=path):
        return found
    raise RuntimeError(
        "PgBouncer was not found: install it (Debian: apt-get install pgbouncer),"
        f" or set {PGBOUNCER_ENV} to the path of the pgbouncer program."
    )


def pgbouncer_unavailable() -> str | None:
    """Tell why no PgBouncer can be had here, or ``None`` if it can."""
    try:
        find_pgbouncer()
    except RuntimeError as exc:
        return str(exc)
    return None


class PgBouncer(FixtureProcess):
    """A PgBouncer on 127.0.0.1 in front of *server* (default: the test server).

    :param pool_mode: ``"transaction"`` (a server connection per
        transaction) or ``"session"`` (per client connection).
    :param settings: more ``[pgbouncer]`` settings, e.g.
        ``{"server_login_retry": 1}``; they win over the fixture's.  Kept
        as the ``settings`` attribute: change it, then ``reload()``.

    ``start()`` makes the directory and starts PgBouncer; ``stop()`` shuts it
    down (``SHUTDOWN``), ``restart()`` both, on the same port; ``close()``
    stops it and removes the directory.  The server's user is the one
    client, and PgBouncer's admin; it gives the server's password (or one
    made for this PgBouncer, if the server asks none), which ``dsn()``
    includes, so that no other local account can come in through it.
    """

    host = "127.0.0.1"
    _what = "PgBouncer"
    _log_name = "pgbouncer.log"
    _no_directory = "PgBouncer is not started yet"

    def __init__(
        self,
        server: Server | None = None,
        *,
        pool_mode: str = "transaction",
        settings: dict[str, Any] | None = None,
    ) -> None:
        if pool_mode not in ("session", "transaction"):
            raise ValueError(f"pool_mode must be session or transaction: {pool_mode!r}")
        super().__init__()
        self.program = find_pgbouncer()
        self.server = server
        self.pool_mode = pool_mode
        self.settings = dict(settings or {})
        self.port: int | None = None
        #: The first line of ``pgbouncer --version``, e.g. ``PgBouncer 1.18.0``.
        self.version = self._version()
        self._password: str | None = None  # the server's, known at start

    def _version(self) -> str:
        result = subprocess.run(
            [self.program, "--version"], capture_output=True, text=True, check=True
        )
        return result.stdout.splitlines()[0].strip()

    @property
    def version_info(self) -> tuple[int, ...]:
        """The version as numbers, e.g. ``(1, 18, 0)``."""
        number = self.version.split()[-1]
        return tuple(int(part) for part in number.split(".") if part.isdigit())

    config_path = property(lambda self: self._path("pgbouncer.ini"), doc="Its config.")

    @property
    def user(self) -> str:
        """The role clients and the admin console connect as."""
        return (self.server or get_server()).user

    def _create(self) -> None:
        if self._removed:
            raise RuntimeError("this PgBouncer was closed")
        if self.directory is not None:
            return
        parent = "/dev/shm" if os.access("/dev/shm", os.W_OK | os.X_OK) else None
        directory = self._make_directory(
            "reconnecting-pgbouncer-", parent, "pgbouncer.pid"
        )
        self.port = free_port()
        self._chown(directory)

    def _write_config(self) -> None:
        server = self.server or get_server()
        if not server.running:
            server.start()
        if self._password is None:
            self._password = server.password or secrets.token_urlsafe(24)
        auth_file = self._path("userlist.txt")
        write_private_file(auth_file, f'"{server.user}" "{self._password}"\n')
        settings = {
            "listen_addr": self.host,
            "listen_port": self.port,
            "unix_socket_dir": "",  # TCP only
            # The password in the file, in plain text, also logs in to the server.
            "auth_type": "scram-sha-256",
            "auth_file": auth_file,
            "admin_users": server.user,
            "pool_mode": self.pool_mode,
            "pidfile": self._path("pgbouncer.pid"),
            "ignore_startup_parameters": "extra_float_digits",
            **self.settings,
        }
        lines = ["[databases]", f"* = host={server.host} port={server.port}"]
        lines += ["[pgbouncer]", *(f"{k} = {v}" for k, v in settings.items())]
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        self._chown(auth_file, self.config_path)

    def start(self, timeout: float = 30.0) -> None:
        """Write the configuration and start PgBouncer; wait until its admin
        console answers.

        :raises RuntimeError: if it exits, or does not answer in time.
        """
        with self._lock:
            if self.running:
                return
            self._create()
            self._write_config()
            self._launch([self.program, self.config_path])
            ready = lambda: self.admin("SHOW VERSION")  # noqa: E731
            self._wait_until_ready(ready, time.monotonic() + timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Shut PgBouncer down at once (``SHUTDOWN``): every client connection
        is closed.  Nothing when it does not run."""
        with self._lock:
            if self._proc is None:
                return
            if self._proc.poll() is None:
                try:
                    self.shutdown()
                except psycopg2.Error:
                    self._proc.kill()
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None

    def restart(self) -> None:
        """Stop PgBouncer and start it again on the same port."""
        with self._lock:
            self.stop()
            self.start()

    def close(self) -> None:
        """Stop PgBouncer and remove its directory.  Safe to call again."""
        self._remove(self.stop)

    destroy = close

    # -- clients ---------------------------------------------------------------

    def dsn(self, dbname: str, **extra: Any) -> str:
        """Return a libpq connection string for *dbname* through PgBouncer,
        with the password."""
        params = {"host": self.host, "port": self.port, "user": self.user}
        params.update(dbname=dbname, password=self._password)
        return make_dsn(**{**params, **extra})

    def connect(self, dbname: str, **kwargs: Any) -> Any:
        """Return a new psycopg2 connection to *dbname* through PgBouncer."""
        forget_libpq_environment()
        return psycopg2.connect(self.dsn(dbname), **kwargs)

    # -- the admin console -----------------------------------------------------

    def admin(self, command: str) -> list[tuple] | None:
        """Run *command* on the admin console; return its rows, if any."""
        forget_libpq_environment()
        conn = psycopg2.connect(self.dsn("pgbouncer"), connect_timeout=5)
        try:
            conn.autocommit = True  # the console knows no transactions
            cursor = conn.cursor()
            cursor.execute(command)
            return cursor.fetchall() if cursor.description else None
        finally:
            conn.close()

    def pause(self, dbname: str = "") -> None:
        """``PAUSE``: wait until every server connection is released, close
        them, and hold new queries until ``resume()``."""
        self.admin(f"PAUSE {_ident(dbname)}".strip())

    def resume(self, dbname: str = "") -> None:
        """``RESUME``: let queries through again after ``pause()`` or ``kill()``."""
        self.admin(f"RESUME {_ident(dbname)}".strip())

    def kill(self, dbname: str) -> None:
        """``KILL``: drop every client and server connection of *dbname* now;
        new clients wait until ``resume()``."""
        self.admin(f"KILL {_ident(dbname)}")

    def reconnect(self, dbname: str = "") -> None:
        """``RECONNECT``: replace each server connection once it is released."""
        self.admin(f"RECONNECT {_ident(dbname)}".strip())

    def reload(self) -> None:
        """Write the configuration file again (with ``settings`` as they are
        now), and ``RELOAD`` it."""
        self._write_config()
        self.admin("RELOAD")

    def shutdown(self) -> None:
        """``SHUTDOWN``: exit at once, closing every connection."""
        try:
            self.admin("SHUTDOWN")
        except psycopg2.OperationalError:
            pass  # the console goes down with it

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<PgBouncer {self.host}:{self.port} {self.pool_mode} {state}>"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"' if name else ""
