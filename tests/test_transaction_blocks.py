"""psycopg 3's transaction() blocks on the reconnecting connection: the
cases the connection page does not show."""

import pytest

from reconnecting import ReconnectingConnection

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
