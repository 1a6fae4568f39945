"""A resolved commit after the caller read results: the cases commit.rst
does not show (a cursor read to its end in an earlier transaction, by
iteration, or with no rows at all)."""

import importlib

import pytest

from reconnecting import ReconnectingConnection


@pytest.fixture(params=["psycopg2", "psycopg"])
def db(request, pg):
    driver = importlib.import_module(request.param)
    db = ReconnectingConnection(lambda: driver.connect(pg.dsn), resolve_commit=True)
    cursor = db.cursor()
    cursor.execute("CREATE TABLE IF NOT EXISTS t (x int)")
    cursor.execute("TRUNCATE t")
    db.commit()
    yield db
    db.close()


def test_a_cursor_read_to_its_end_in_an_earlier_transaction(db):
    reader = db.cursor()
    reader.execute("SELECT 1")
    assert reader.fetchall() == [(1,)]
    db.commit()  # read-only: nothing to resolve
    writer = db.cursor()
    writer.execute("INSERT INTO t VALUES (1)")
    db.commit()
    assert reader.fetchone() is None  # still at its end, as the driver's
    writer.execute("SELECT count(*) FROM t")
    assert writer.fetchone() == (1,)


def test_results_read_by_iteration_and_empty_results(db):
    cursor = db.cursor()
    cursor.execute("INSERT INTO t VALUES (1), (2) RETURNING x")
    assert list(cursor) == [(1,), (2,)]
    empty = db.cursor()
    empty.execute("SELECT x FROM t WHERE x > 5")
    db.commit()
    assert cursor.fetchall() == []
    assert empty.fetchall() == []
    assert cursor.rowcount == 2
