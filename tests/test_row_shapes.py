"""Rows of any shape set on the wrapper: the connection's own questions
(resolving a commit) still get tuples, with both drivers."""

import importlib

import pytest

from reconnecting import ReconnectingConnection
from reconnecting.testing import PortForwardTestSetup


def dict_rows(driver_name):
    if driver_name == "psycopg2":
        from psycopg2.extras import RealDictCursor

        return "cursor_factory", RealDictCursor
    from psycopg.rows import dict_row

    return "row_factory", dict_row


@pytest.mark.parametrize("driver_name", ["psycopg2", "psycopg"])
def test_a_resolved_commit_with_dict_rows_set_on_the_wrapper(pg, direct, driver_name):
    driver = importlib.import_module(driver_name)
    direct.execute(f"CREATE TABLE shaped_{driver_name} (x int)")
    with PortForwardTestSetup() as proxy:
        db = ReconnectingConnection(
            lambda: driver.connect(pg.dsn, host=proxy.host, port=proxy.port),
            resolve_commit=True,
        )
        name, factory = dict_rows(driver_name)
        setattr(db, name, factory)
        cursor = db.cursor()
        cursor.execute(f"INSERT INTO shaped_{driver_name} VALUES (7) RETURNING x")
        db.commit()  # not cut: it used to fail here already
        cursor.execute(f"INSERT INTO shaped_{driver_name} VALUES (8) RETURNING x")
        proxy.cut_on_commit(deliver=True)
        db.commit()  # cut, and resolved as committed
        assert dict(cursor.fetchone()) == {"x": 8}
        assert getattr(db, name) is factory  # remembered on the new connection
        db.close()
    direct.execute(f"SELECT array_agg(x ORDER BY x) FROM shaped_{driver_name}")
    assert direct.fetchone()[0] == [7, 8]
