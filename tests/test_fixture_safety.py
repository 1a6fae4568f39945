"""The fixtures on a machine with real databases and other people on it.

libpq's environment reaches no test server; no other local account gets
into a throwaway cluster (or its PgBouncer), and its secret is never
shown; runs and xdist workers sharing one existing server never clash.
"""

import os
import pwd
import socket
import stat
import subprocess
import sys
import threading

import psycopg2
import pytest
from helpers import child_env, run_python

from reconnecting.testing import PgTestSetup
from reconnecting.testing.binaries import server_account
from reconnecting.testing.cluster import get_cluster
from reconnecting.testing.pgbouncer import PgBouncer, pgbouncer_unavailable
from reconnecting.testing.server import SERVER_ENV, ExistingServer

SECRET = "hunter2-not-shown"


class Decoy:
    """A listening socket standing for somebody's real server: it counts the
    connections that reach it, and answers none."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.reached = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.reached += 1
            conn.close()

    def close(self):
        self.listener.close()


@pytest.fixture
def decoy():
    decoy = Decoy()
    yield decoy
    decoy.close()


def libpq_environment(decoy):
    """Every variable by which libpq could choose a server, or reach into one."""
    return {
        "PGHOST": "127.0.0.1",
        "PGHOSTADDR": "127.0.0.1",
        "PGPORT": str(decoy.port),
        "PGUSER": "decoy",
        "PGDATABASE": "decoy",
        "PGPASSWORD": SECRET,
        "PGSERVICE": "no_such_service",
        "PGSSLMODE": "require",
        "PGOPTIONS": "-c statement_timeout=1",
        "PGAPPNAME": "decoy",
        "PGCONNECT_TIMEOUT": "1",
    }


CONNECT_EVERY_WAY = """
    import psycopg, psycopg2
    from reconnecting.testing import PgTestSetup
    pg = PgTestSetup()
    pg.setUp()
    connections = [
        pg.connect(), psycopg2.connect(pg.dsn), psycopg.connect(pg.dsn),
        pg.server.admin_connect(),
    ]
    for conn in connections:
        cursor = conn.cursor()
        cursor.execute(
            "SELECT current_setting('application_name'),"
            " current_setting('statement_timeout'), current_database()")
        name, timeout, dbname = cursor.fetchone()
        assert (name, timeout) == ("", "0"), (name, timeout)
        assert dbname in (pg.dbname, "postgres"), dbname
        conn.close()
    pg.tearDown()
    print("ok")
"""


def test_libpq_environment_reaches_no_throwaway_cluster(decoy):
    # From the cluster's making (its admin connection) to the connections
    # a page makes with the fixture's DSN, under either driver.
    env = {**libpq_environment(decoy), SERVER_ENV: ""}
    result = run_python(CONNECT_EVERY_WAY, **env)
    assert (result.stdout, result.returncode) == ("ok\n", 0), result.stderr
    assert decoy.reached == 0


def test_libpq_environment_reaches_no_existing_server(decoy):
    cluster = get_cluster()
    conninfo = f"host={cluster.socket_dir} port={cluster.port} user=postgres"
    env = {**libpq_environment(decoy), SERVER_ENV: conninfo + " dbname=postgres"}
    result = run_python(CONNECT_EVERY_WAY, **env)
    assert (result.stdout, result.returncode) == ("ok\n", 0), result.stderr
    assert decoy.reached == 0


@pytest.mark.parametrize(
    "conninfo, named",
    [
        (f"host=/tmp port=5432 user=postgres password={SECRET}", "dbname"),
        (f"host=/tmp user=postgres dbname=postgres password={SECRET}", "port"),
        (f"port=5432 user=postgres dbname=postgres password={SECRET}", "host"),
        (f"user=postgres password={SECRET}", "host, port, dbname"),
        (f"service=prod host=/tmp port=1 user=u dbname=d password={SECRET}", "service"),
        (f"host=/tmp port=1 user=u dbname=d password='{SECRET}", "not a libpq"),
        (f"host=/tmp {SECRET}", "not a libpq"),
    ],
)
def test_an_incomplete_server_string_is_refused_without_showing_it(conninfo, named):
    with pytest.raises(ValueError) as error:
        ExistingServer(conninfo)
    message = str(error.value)
    assert named in message and SERVER_ENV in message
    assert SECRET not in message and "hunter2" not in message
    # No chained error that would quote the string in a traceback.
    context = error.value.__context__
    assert error.value.__cause__ is None
    assert context is None or error.value.__suppress_context__


def test_the_existing_server_is_not_shown_with_its_password():
    cluster = get_cluster()
    server = ExistingServer(
        f"host={cluster.socket_dir} port={cluster.port} user=postgres"
        f" dbname=postgres password={SECRET}"
    )
    assert SECRET not in repr(server) and server.password == SECRET
    assert f"password={SECRET}" in server.dsn("x")


# -- nobody else gets in --------------------------------------------------------


def no_password(**params):
    """Connection parameters that give no password, from anywhere."""
    return {"passfile": "/nonexistent/pgpass", "connect_timeout": 5, **params}


def test_tcp_asks_for_the_password(pg):
    cluster = pg.server
    with pytest.raises(psycopg2.OperationalError, match="password"):
        psycopg2.connect(
            **no_password(
                host="127.0.0.1", port=cluster.port, user="postgres", dbname=pg.dbname
            )
        )
    with pytest.raises(psycopg2.OperationalError, match="password auth"):
        psycopg2.connect(pg.dsn, password="guessed")
    pg.connect().close()  # with the fixture's


def test_the_socket_directory_is_private(pg):
    cluster = pg.server
    for path in (cluster.directory, cluster.socket_dir, cluster.data_dir):
        info = os.stat(path)
        assert stat.S_IMODE(info.st_mode) == 0o700, path
        owner = server_account() or (os.getuid(), os.getgid())
        assert info.st_uid == owner[0], path


@pytest.mark.skipif(os.geteuid() != 0, reason="switching accounts needs root")
def test_another_local_account_cannot_connect(pg):
    # "nobody" stands for anybody else on the machine: neither the socket nor
    # TCP without the secret lets it in.  psql, since nobody may not reach
    # this Python.
    cluster = pg.server
    psql = os.path.join(cluster.bindir, "psql")
    if not os.access(psql, os.X_OK):
        pytest.skip(f"no psql beside {cluster.bindir}/postgres")
    nobody = pwd.getpwnam("nobody")
    lines = []
    for host in (cluster.socket_dir, "127.0.0.1"):
        result = subprocess.run(
            [psql, "-w", "-h", host, "-p", str(cluster.port), "-U", "postgres"]
            + ["-d", "postgres", "-c", "SELECT 1"],
            env={"HOME": "/nonexistent", "PATH": os.defpath},
            capture_output=True,
            text=True,
            user=nobody.pw_uid,
            group=nobody.pw_gid,
            extra_groups=[],
            cwd="/",
        )
        assert result.returncode != 0, result.stdout
        lines.append(result.stderr)
    socket_error, tcp_error = lines
    assert "Permission denied" in socket_error
    assert "password" in tcp_error


def test_the_secret_is_nowhere_to_be_seen(pg):
    cluster = pg.server
    secret = cluster.password
    assert len(secret) >= 24
    shown = [repr(pg), repr(cluster), repr(PgTestSetup())]
    assert not [text for text in shown if secret in text]
    with open(cluster.log_path) as log:
        assert secret not in log.read()
    assert not os.path.exists(os.path.join(cluster.directory, "pwfile"))


@pytest.mark.skipif(pgbouncer_unavailable() is not None, reason="no PgBouncer")
def test_pgbouncer_asks_for_the_password_too(pg):
    bouncer = PgBouncer()
    try:
        bouncer.start()
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(
                **no_password(
                    host=bouncer.host,
                    port=bouncer.port,
                    user="postgres",
                    dbname=pg.dbname,
                )
            )
        conn = bouncer.connect(pg.dbname)
        cursor = conn.cursor()
        cursor.execute("SELECT current_database()")
        assert cursor.fetchone() == (pg.dbname,)
        conn.close()
        assert cluster_secret_not_in(repr(bouncer), pg)
    finally:
        bouncer.close()


def cluster_secret_not_in(text, pg):
    return pg.password not in text


# -- many runs, one server --------------------------------------------------------

MANY_DATABASES = """
import pytest

@pytest.mark.parametrize("n", range(12))
def test_a_database(pg_database, n):
    conn = pg_database.connect()
    conn.cursor().execute("CREATE TABLE t (n int)")
    conn.commit()
    conn.close()
"""


def run_pytest(directory, *args, **env):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *args,
            "--rootdir",
            str(directory),
            str(directory / "test_many.py"),
        ],
        cwd=directory,
        env=child_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def made_for_tests(pg):
    """The test databases and templates on *pg*'s server."""
    conn = pg.server.admin_connect()
    try:
        cursor = conn.cursor()
        cursor.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s OR datname LIKE %s",
            ("reconnecting_template_%", "rtest_%"),
        )
        return {name for (name,) in cursor.fetchall()}
    finally:
        conn.close()


def test_runs_and_xdist_workers_share_an_existing_server(pg, tmp_path):
    pytest.importorskip("xdist")
    (tmp_path / "test_many.py").write_text(MANY_DATABASES)
    cluster = pg.server
    conninfo = (
        f"host={cluster.socket_dir} port={cluster.port} user=postgres dbname=postgres"
    )
    before = made_for_tests(pg)
    # Two runs at once, with two workers each, all on one server.
    runs = [run_pytest(tmp_path, "-n", "2", **{SERVER_ENV: conninfo}) for _ in range(2)]
    outputs = [run.communicate()[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], "\n".join(outputs)
    assert all("12 passed" in output for output in outputs), outputs
    # Each run dropped its template and its databases.
    assert made_for_tests(pg) == before
