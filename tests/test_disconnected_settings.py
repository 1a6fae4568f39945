"""A setting made while disconnected, by a session method: a bad value fails
one call, and the setting keeps its last good value (connection.rst shows
the attribute spelling)."""

import importlib

import pytest

from reconnecting import ReconnectingConnection, Retry
from reconnecting.testing import PortForwardTestSetup


@pytest.mark.parametrize("name", ["psycopg2", "psycopg"])
def test_a_bad_value_by_a_session_method_fails_one_call(name, pg):
    driver = importlib.import_module(name)
    with PortForwardTestSetup() as proxy:
        db = ReconnectingConnection(
            lambda: driver.connect(pg.dsn, host=proxy.host, port=proxy.port)
        )
        db.isolation_level = serializable = 3 if name == "psycopg2" else 4
        cursor = db.cursor()
        cursor.execute("SELECT 1")
        proxy.drop()
        with pytest.raises(Retry):
            cursor.execute("SELECT 1")
        if name == "psycopg2":
            db.set_session(isolation_level="bogus", readonly=True)
        else:
            db.set_isolation_level("bogus")
        db.rollback()
        with pytest.raises(ValueError, match="bogus"):
            cursor.execute("SELECT 1")
        cursor.execute("SHOW transaction_isolation")
        assert cursor.fetchone() == ("serializable",)
        assert db.isolation_level == serializable
        db.close()
