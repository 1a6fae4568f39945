"""psycopg 3's own calls on the reconnecting connection: the cases the
connection page does not show."""

import threading

import pytest

from reconnecting import ReconnectingConnection, ReconnectingCursor, Retry, attempts
from reconnecting.testing import PortForwardTestSetup, wait_until

psycopg = pytest.importorskip("psycopg")


@pytest.fixture
def db(pg):
    db = ReconnectingConnection(lambda: psycopg.connect(pg.dsn))
    db.execute("CREATE TEMP TABLE t (x int)")
    db.commit()
    yield db
    db.close()


def values(db):
    return db.execute(
        "SELECT coalesce(array_agg(x ORDER BY x), '{}') FROM t"
    ).fetchone()[0]


def test_force_rollback_and_named_savepoints(db):
    with db.transaction():
        db.execute("INSERT INTO t VALUES (1)")
        with db.transaction(savepoint_name="inner", force_rollback=True) as inner:
            assert inner.savepoint_name == "inner"
            db.execute("INSERT INTO t VALUES (2)")
    assert values(db) == [1]


def test_rollback_aimed_at_the_outer_block(db):
    with db.transaction() as outer:
        db.execute("INSERT INTO t VALUES (1)")
        with db.transaction():
            db.execute("INSERT INTO t VALUES (2)")
            raise psycopg.Rollback(outer)
    assert values(db) == []


def test_autocommit_blocks_begin_and_commit(db):
    db.autocommit = True
    with db.transaction():
        db.execute("INSERT INTO t VALUES (1)")
        assert db.info.transaction_status == 2  # in a transaction
    assert db.info.transaction_status == 0
    assert values(db) == [1]


def test_commit_inside_a_block_is_refused(db):
    with pytest.raises(psycopg.ProgrammingError), db.transaction():
        db.execute("INSERT INTO t VALUES (1)")
        db.commit()
    assert values(db) == []


def test_a_block_inside_a_transaction_is_a_savepoint(db):
    db.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(ValueError), db.transaction():
        db.execute("INSERT INTO t VALUES (2)")
        raise ValueError
    db.commit()
    assert values(db) == [1]


@pytest.fixture
def proxied(pg):
    with PortForwardTestSetup() as proxy:
        db = ReconnectingConnection(
            lambda: psycopg.connect(pg.dsn, host=proxy.host, port=proxy.port)
        )
        yield db, proxy
        db.close()


def test_a_block_left_by_another_error_after_an_outage_rolls_back(proxied):
    # The asyncio connection does the same (test_aio_contract).
    db, proxy = proxied
    db.execute("CREATE TABLE IF NOT EXISTS block_left (x int)")
    db.execute("TRUNCATE block_left")
    db.commit()
    with pytest.raises(LookupError), db.transaction():
        db.execute("INSERT INTO block_left VALUES (1)")
        proxy.drop()
        with pytest.raises(Retry):
            db.execute("INSERT INTO block_left VALUES (2)")
        raise LookupError("the block fails after the outage")
    assert db.execute("SELECT count(*) FROM block_left").fetchone() == (0,)


def test_a_stream_cut_midway_raises_retry(proxied):
    db, proxy = proxied
    # 20 MB: more than the socket buffers hold when the proxy goes.
    query = "SELECT repeat('x', 10000) FROM generate_series(1, 2000)"
    rows = db.cursor().stream(query)
    assert len(next(rows)[0]) == 10000
    proxy.drop()
    with pytest.raises(Retry):
        for _ in rows:
            pass
    assert repr(db).endswith(f"disconnected at {id(db):#x}>")
    db.rollback()
    assert db.execute("SELECT 1").fetchone() == (1,)


def test_waiting_for_notifications_raises_retry(proxied, pg):
    db, proxy = proxied
    db.autocommit = True
    db.execute("LISTEN here")
    outcome = []

    def listen():
        try:
            for notify in db.notifies():
                outcome.append(notify.payload)
        except Retry as exc:
            outcome.append(exc)

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    # info.dsn leaves the password out.
    other = psycopg.connect(db.info.dsn, password=pg.password, autocommit=True)
    other.execute("NOTIFY here, 'one'")
    wait_until(lambda: outcome == ["one"])
    proxy.drop()
    thread.join()
    assert isinstance(outcome[1], Retry)
    other.close()


def test_a_retry_loop_inside_a_block_commits_nothing(proxied):
    db, proxy = proxied
    db.execute("CREATE TABLE IF NOT EXISTS t (x int)")
    db.commit()
    with pytest.raises(psycopg.ProgrammingError), db.transaction():
        db.execute("INSERT INTO t VALUES (1)")
        proxy.drop()
        for attempt in attempts(db):
            with attempt:
                db.execute("INSERT INTO t VALUES (2)")
    assert values(db) == []


def test_execute_returns_the_reconnecting_cursor_not_psycopgs(db):
    # psycopg's execute() returns its cursor, for chained calls; handing
    # that one out would let the caller's next fetch bypass the outage rules.
    cursor = db.cursor()
    assert cursor.execute("SELECT 1") is cursor
    assert cursor.execute("SELECT 1", prepare=True) is cursor
    assert cursor.execute("SELECT %s", (1,), binary=True) is cursor
    assert type(db.execute("SELECT 1")).__name__ == "ReconnectingCursor"


def test_execute_returns_what_a_cursor_subclass_returns(pg):
    # psycopg's own cursors take the hot path that returns ours without
    # asking; a subclass with an execute() of its own is asked.
    class CountingCursor(psycopg.Cursor):
        def execute(self, query, params=None, **kwargs):
            super().execute(query, params, **kwargs)
            return self.rowcount

    db = ReconnectingConnection(
        lambda: psycopg.connect(pg.dsn, cursor_factory=CountingCursor)
    )
    cursor = db.cursor()
    assert cursor.execute("SELECT 1") == 1
    assert cursor.execute("SELECT generate_series(1, 3)") == 3
    plain = ReconnectingConnection(lambda: psycopg.connect(pg.dsn)).cursor()
    assert plain.execute("SELECT 1") is plain
    # Both are ReconnectingCursors by every name they show.
    for each in (cursor, plain):
        assert isinstance(each, ReconnectingCursor)
        assert type(each).__name__ == "ReconnectingCursor"
        assert repr(each).startswith("<reconnecting.connection.ReconnectingCursor open")
        with pytest.raises(AttributeError, match="'ReconnectingCursor' object has no"):
            each.arraysise = 100
    db.close()
    plain.connection.close()
