"""A throwaway PostgreSQL cluster, one per test process.

``Cluster`` runs ``initdb`` in a private temporary directory (under
``/dev/shm`` when there is room), tunes the server for speed rather than
durability, and listens on 127.0.0.1 on a free port and on a unix socket in
that directory.  Nobody else can connect: the socket's directory is
private to the server's account (0700), and over TCP the server asks for a
password, a secret generated for the test process (``scram-sha-256``), which
``dsn()`` includes and nothing prints.  The directory goes when the process
exits, or, if the process is killed, when a watchdog process
(``reconnecting/testing/_watchdog.py``) notices.  When running as root, as
in CI containers, the server runs as the unprivileged user ``postgres`` (or
``nobody``), since PostgreSQL refuses to run as root.  ``get_cluster()``
returns the process's default cluster.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import threading
import time
from typing import Any

import psycopg2
from psycopg2.extensions import make_dsn

from reconnecting.testing._process import FixtureProcess, free_port
from reconnecting.testing.binaries import copy_binaries, find_bindir
from reconnecting.testing.server import (
    SERVER_ENV,
    ExistingServer,
    Server,
    forget_libpq_environment,
    write_private_file,
)

__all__ = ["Cluster", "get_cluster", "get_server"]

PASSWORD_ROLE = "password_required"

_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
# The socket's directory is the server account's alone (0700): only that
# account and root reach it, so the fixture's own connections there need no
# password.  TCP, which any local account reaches, always asks for one.
_PG_HBA = f"""\
local all +{PASSWORD_ROLE} scram-sha-256
local all all trust
local replication all trust
host  all all 127.0.0.1/32 scram-sha-256
host  replication all 127.0.0.1/32 scram-sha-256
"""
_secret: tuple[int, str] | None = None


def _process_secret() -> str:
    """The superuser's password on this process's clusters: one for all of
    them (a standby shares its primary's roles; a connection string may name
    several clusters), new in each process."""
    global _secret
    if _secret is None or _secret[0] != os.getpid():
        _secret = (os.getpid(), secrets.token_urlsafe(24))
    return _secret[1]


def _cluster_parent(demoted: bool) -> str | None:
    """Prefer tmpfs, where initdb and CREATE DATABASE are about twice as fast."""
    try:
        st = os.statvfs("/dev/shm")
        reachable = os.stat("/dev/shm").st_mode & 0o001 or not demoted
    except OSError:
        return None
    roomy = st.f_bavail * st.f_frsize >= 512 * 2**20
    if roomy and reachable and os.access("/dev/shm", os.W_OK | os.X_OK):
        return "/dev/shm"
    return None


def _server_env() -> dict[str, str]:
    # PGDATA, PGPORT and friends would change what the server binaries do.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


class Cluster(FixtureProcess, Server):
    """A throwaway PostgreSQL cluster, made by ``create()`` or the first ``start()``.

    :param bindir: the directory of ``initdb`` and ``postgres``; by default
        ``find_bindir()`` chooses.

    Its directory (under ``/dev/shm`` when there is room) holds ``data/``,
    ``socket/`` and ``server.log``.  The port is chosen once, and kept across
    restarts.  The role ``password_required`` (NOLOGIN) exists: its members
    must give their password, so ``CREATE ROLE alice LOGIN PASSWORD '...' IN
    ROLE password_required`` makes a password-protected role.
    """

    host = "127.0.0.1"
    user = "postgres"
    _fast_clone = True
    _what = "The PostgreSQL server"
    _log_name = "server.log"
    _no_directory = "the cluster is not created yet"

    def __init__(self, bindir: str | None = None) -> None:
        Server.__init__(self)
        FixtureProcess.__init__(self)
        self.bindir: str = os.path.abspath(bindir) if bindir else find_bindir()
        self.port: int | None = None
        #: The output of ``postgres --version``, known after ``create()``.
        self.version: str | None = None
        #: Seconds ``initdb`` took.
        self.initdb_seconds: float | None = None
        #: Seconds from launching the server until it accepted a connection.
        self.last_start_seconds: float | None = None
        #: The superuser's password over TCP: generated, in ``dsn()``, never shown.
        self.password: str = _process_secret()
        self._role_created = False

    data_dir = property(lambda self: self._path("data"), doc="The data directory.")
    socket_dir = property(lambda self: self._path("socket"), doc="Unix socket dir.")

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        """Run a server program to its end, and return what it printed.

        It runs in a session of its own, so that a Ctrl-C meant for the
        tests does not reach it: killed half-way, initdb's children leave
        POSIX shared memory segments behind.  An interrupt here waits for
        the program (about a second at most) before it is raised.
        """
        proc = subprocess.Popen(
            args,
            cwd=self.directory,
            env=_server_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            **self._as_server_user(),
        )
        self._tell_watchdog(proc.pid)
        interrupted: BaseException | None = None
        while True:
            try:
                stdout, stderr = proc.communicate()
                break
            except BaseException as exc:  # KeyboardInterrupt, SystemExit
                interrupted = interrupted or exc
        if interrupted is not None:
            raise interrupted
        return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)

    def create(self) -> None:
        """Make the cluster directory and run ``initdb``, once."""
        with self._lock:
            if self._removed:
                raise RuntimeError("this cluster was destroyed")
            if self.directory is not None:
                return
            parent = _cluster_parent(demoted=self._account is not None)
            try:
                pid_file = os.path.join("data", "postmaster.pid")
                self._make_directory("reconnecting-pg-", parent, pid_file)
                self._initdb()
            except BaseException:
                self.destroy()
                raise

    def _prepare_directory(self) -> int:
        """Make the empty data and socket directories and the log, check the
        server user can run the binaries; return the major version."""
        os.mkdir(self.data_dir, 0o700)
        os.mkdir(self.socket_dir, 0o700)
        open(self.log_path, "ab").close()
        assert self.directory is not None  # made by create()
        self._chown(self.directory, self.data_dir, self.socket_dir, self.log_path)
        try:  # also proves the server user can reach the binaries
            result = self._run(os.path.join(self.bindir, "postgres"), "--version")
        except PermissionError:
            result = None
        if result is None or result.returncode != 0:
            self.bindir = copy_binaries(
                self.bindir, self._path("binaries"), self._account
            )
            result = self._run(os.path.join(self.bindir, "postgres"), "--version")
            result.check_returncode()
        self.version = result.stdout.strip()
        match = re.search(r"\(PostgreSQL\) (\d+)", self.version)
        return int(match.group(1)) if match else 0

    def _initdb(self) -> None:
        major = self._prepare_directory()
        # The superuser's password, for TCP, in a file in the private directory.
        pwfile = self._path("pwfile")
        write_private_file(pwfile, self.password + "\n")
        self._chown(pwfile)
        options = ["-D", self.data_dir, "-U", self.user, f"--pwfile={pwfile}"]
        options += "--auth-local=trust --auth-host=scram-sha-256".split()
        options += "-N -E UTF8 --locale=C".split()
        if major >= 14:
            options.append("--no-instructions")
        if major >= 18:
            options.append("--no-data-checksums")  # on by default since 18
        started = time.perf_counter()
        try:
            result = self._run(os.path.join(self.bindir, "initdb"), *options)
        finally:
            os.unlink(pwfile)
        self.initdb_seconds = time.perf_counter() - started
        if result.returncode != 0:
            output = result.stdout + result.stderr
            raise RuntimeError(f"initdb failed ({result.returncode}):\n{output}")
        hba = os.path.join(self.data_dir, "pg_hba.conf")
        with open(hba, "w") as f:
            f.write(_PG_HBA)
        self._chown(hba)
        self.port = free_port()

    def _server_command(self) -> list[str]:
        settings = {
            "listen_addresses": self.host,
            "port": self.port,
            "unix_socket_directories": self.socket_dir,
            # Speed over durability against power loss: the data is thrown
            # away anyway.  synchronous_commit stays on, so that a commit
            # acknowledged before a crash (restart("immediate")) survives it,
            # as on a real server.
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": 100,  # room for soak tests
            # The adapter's two-phase commit (PREPARE TRANSACTION) needs them.
            "max_prepared_transactions": 20,
            "shared_buffers": "32MB",
            # Dynamic shared memory in the data directory, not /dev/shm, so
            # that removing the cluster removes it even after a SIGKILL.
            "dynamic_shared_memory_type": "mmap",
            "logging_collector": "off",  # stderr goes to server.log
            "log_destination": "stderr",
            "log_min_messages": "warning",
        }
        command = [os.path.join(self.bindir, "postgres"), "-D", self.data_dir]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        return command

    def start(self, timeout: float = 30.0) -> None:
        """Start the server, making the cluster first if needed, and wait until
        it accepts connections.

        :raises RuntimeError: if the server exits, or does not accept
            connections within *timeout* seconds.
        """
        with self._lock:
            if self.running:
                return
            self.create()
            started = time.perf_counter()
            # Not pg_ctl -w, which polls every 100 ms.
            self._launch(self._server_command(), env=_server_env())
            ready = lambda: self.admin_connect(connect_timeout=5).close()  # noqa: E731
            self._wait_until_ready(ready, time.monotonic() + timeout)
            self.last_start_seconds = time.perf_counter() - started
            if not self._role_created:
                self._execute(f"CREATE ROLE {PASSWORD_ROLE} NOLOGIN")
                self._role_created = True

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop the server; *mode* is ``"smart"``, ``"fast"`` or ``"immediate"``.

        Sends SIGTERM, SIGINT or SIGQUIT to the server started by this object
        and waits until it exits.  Does nothing when it does not run.

        :raises TimeoutError: if it still runs after *timeout* seconds.
        """
        if mode not in _SIGNALS:
            raise ValueError(f"mode must be one of {', '.join(_SIGNALS)}: {mode!r}")
        with self._lock:
            if self._proc is None:
                return
            if self._proc.poll() is None:
                self._proc.send_signal(_SIGNALS[mode])
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    message = f"the server did not stop ({mode}) within {timeout} s"
                    raise TimeoutError(message) from None
            self._proc = None

    def restart(self, mode: str = "fast") -> None:
        """Stop the server with *mode*, then start it again on the same port."""
        with self._lock:
            self.stop(mode)
            self.start()

    def admin_connect(self, dbname: str | None = None, **kwargs: Any) -> Any:
        """Return a new autocommit psycopg2 connection as the superuser, over the
        unix socket.  *kwargs* go to ``psycopg2.connect``."""
        forget_libpq_environment()
        conn = psycopg2.connect(
            host=self.socket_dir,
            hostaddr="",  # PGHOSTADDR would win over host= otherwise
            port=self.port,
            user=self.user,
            dbname=dbname or "postgres",
            **kwargs,
        )
        conn.autocommit = True
        return conn

    def dsn(self, dbname: str = "postgres", **extra: Any) -> str:
        """Return a libpq connection string for *dbname*, over TCP to
        127.0.0.1, with the password."""
        params = {"host": self.host, "port": self.port, "user": self.user}
        params.update(dbname=dbname, password=self.password)
        return make_dsn(**{**params, **extra})

    def _kill(self) -> None:
        """Stop the server, harder and harder."""
        for mode, timeout in (("fast", 10.0), ("immediate", 5.0)):
            try:
                return self.stop(mode, timeout)
            except TimeoutError:
                pass
        super()._kill()

    def destroy(self) -> None:
        """Stop the server and remove the cluster directory.  Safe to call again."""
        self._remove(self._kill)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Cluster {self.host}:{self.port} {state}>"

    # -- replication (reconnecting/testing/standby.py) -------------------------

    @property
    def is_primary(self) -> bool:
        """True while the server runs and takes writes (not in recovery)."""
        return self.running and not self._value("SELECT pg_is_in_recovery()")


_lock = threading.RLock()
_default_cluster: Cluster | None = None


def get_cluster() -> Cluster:
    """Return this process's default ``Cluster``, made and started on first call."""
    global _default_cluster
    with _lock:
        if _default_cluster is None or _default_cluster._removed:
            cluster = Cluster()
            try:
                cluster.start()
            except BaseException:
                cluster.destroy()
                raise
            _default_cluster = cluster
        return _default_cluster


_existing: dict[str, ExistingServer] = {}


def get_server() -> Server:
    """Return the ``ExistingServer`` named by ``RECONNECTING_TEST_SERVER`` if it
    is set, else ``get_cluster()``."""
    conninfo = os.environ.get(SERVER_ENV, "").strip()
    forget_libpq_environment()
    if not conninfo:
        return get_cluster()
    with _lock:
        if conninfo not in _existing:
            _existing[conninfo] = ExistingServer(conninfo)
        return _existing[conninfo]
