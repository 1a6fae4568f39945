"""The standby and PgBouncer fixtures, beyond what docs/failover.rst and
docs/pgbouncer.rst show."""

import os
import threading

import pytest

from reconnecting.testing import wait_until
from reconnecting.testing.cluster import Cluster
from reconnecting.testing.pgbouncer import (
    PGBOUNCER_ENV,
    PgBouncer,
    find_pgbouncer,
    pgbouncer_unavailable,
)
from reconnecting.testing.standby import make_standby

needs_pgbouncer = pytest.mark.skipif(
    pgbouncer_unavailable() is not None, reason="needs PgBouncer"
)


def test_pgbouncer_is_found_as_the_environment_says(monkeypatch, tmp_path):
    monkeypatch.setenv(PGBOUNCER_ENV, str(tmp_path / "missing"))
    with pytest.raises(RuntimeError, match=PGBOUNCER_ENV):
        find_pgbouncer()
    assert PGBOUNCER_ENV in pgbouncer_unavailable()
    monkeypatch.setenv(PGBOUNCER_ENV, "")
    monkeypatch.setenv("PATH", str(tmp_path))  # the sbin directories still count
    in_sbin = [
        directory
        for directory in ("/usr/local/sbin", "/usr/sbin", "/sbin")
        if os.access(os.path.join(directory, "pgbouncer"), os.X_OK)
    ]
    if in_sbin:
        assert find_pgbouncer() == os.path.join(in_sbin[0], "pgbouncer")
    else:
        assert "apt-get install pgbouncer" in pgbouncer_unavailable()


@pytest.fixture(scope="module")
def primary():
    cluster = Cluster()
    cluster.start()
    cluster._execute("CREATE TABLE item (n int)")
    yield cluster
    cluster.destroy()


def test_a_standby_follows_across_restarts_and_stops_with_destroy(primary):
    standby = make_standby(primary)
    try:
        assert standby.is_primary is False and primary.is_primary is True
        standby.restart("immediate")
        primary._execute("INSERT INTO item VALUES (1)")
        standby.catch_up()
        conn = standby.admin_connect()
        cursor = conn.cursor()
        cursor.execute("SELECT count(*) FROM item")
        assert cursor.fetchone() == (1,)
        conn.close()
    finally:
        standby.destroy()
    assert standby.is_primary is False and not standby.running


def test_a_destroyed_synchronous_standby_no_longer_holds_commits(primary):
    standby = make_standby(primary, synchronous=True)
    standby.destroy()
    # With the standby gone and still required, this commit would wait for ever.
    primary._execute("INSERT INTO item VALUES (2)")


@needs_pgbouncer
def test_pause_holds_queries_until_resume(pg):
    bouncer = PgBouncer(pool_mode="transaction")
    bouncer.start()
    try:
        conn = bouncer.connect(pg.dbname)
        conn.autocommit = True
        bouncer.pause(pg.dbname)
        answers = []

        def query():
            cursor = conn.cursor()
            cursor.execute("SELECT 1")
            answers.append(cursor.fetchone())

        thread = threading.Thread(target=query)
        thread.start()
        clients = lambda: bouncer.admin("SHOW CLIENTS")  # noqa: E731
        wait_until(
            lambda: any(c[2] == pg.dbname and c[3] == "waiting" for c in clients())
        )
        assert answers == []
        bouncer.resume(pg.dbname)
        thread.join()
        assert answers == [(1,)]
        conn.close()
    finally:
        bouncer.close()
    assert not bouncer.running


@needs_pgbouncer
def test_reload_reads_changed_settings(pg):
    bouncer = PgBouncer(pool_mode="session")
    bouncer.start()
    try:

        def setting(name):
            return {row[0]: row[1] for row in bouncer.admin("SHOW CONFIG")}[name]

        assert setting("pool_mode") == "session"
        bouncer.settings["server_login_retry"] = 2
        bouncer.reload()
        assert setting("server_login_retry") == "2"
    finally:
        bouncer.close()
