"""Fixtures that several test modules share."""

import pytest

from reconnecting.testing import PgTestSetup


@pytest.fixture(scope="module")
def pg():
    """A fresh test database, shared by the tests of a module."""
    setup = PgTestSetup()
    setup.setUp()
    yield setup
    setup.tearDown()


@pytest.fixture
def direct(pg):
    """An autocommit cursor on the test database, straight to the server
    (never through a proxy): it sees what is committed, and survives faults."""
    conn = pg.connect()
    conn.autocommit = True
    yield conn.cursor()
    conn.close()
