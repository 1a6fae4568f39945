"""Stuart Bishop's DB-API 2.0 suite (package ``dbapi-compliance``), run
against each driver as it is and wrapped in a ReconnectingConnection: the
wrapped connection passes every test the driver itself passes."""

import importlib
import types
import unittest

import dbapi20
import pytest

from reconnecting import ReconnectingConnection


def wrapped(driver):
    """A module like *driver*, whose connect() returns a ReconnectingConnection."""
    module = types.ModuleType(f"reconnecting_{driver.__name__}")
    module.__dict__.update(
        (name, value)
        for name, value in vars(driver).items()
        if not name.startswith("_")
    )

    def connect(*args, **kwargs):
        return ReconnectingConnection(lambda: driver.connect(*args, **kwargs))

    module.connect = connect
    return module


def outcomes(module, dsn):
    """Run the suite against *module*: {test name: None if it passed, else
    the last line of its traceback}."""

    class Suite(dbapi20.DatabaseAPI20Test):
        driver = module
        connect_args = (dsn,)
        lower_func = "lower"  # the suite's test_callproc reads this name

    names = unittest.defaultTestLoader.getTestCaseNames(Suite)
    result = unittest.TestResult()
    unittest.TestSuite(map(Suite, names)).run(result)
    failed = {
        test._testMethodName: trace.strip().splitlines()[-1]
        for test, trace in result.failures + result.errors
    }
    return {name: failed.get(name) for name in names}


@pytest.mark.parametrize("name", ["psycopg2", "psycopg"])
def test_the_wrapped_connection_passes_what_the_driver_passes(name, pg):
    driver = importlib.import_module(name)
    raw = outcomes(driver, pg.dsn)
    passed = sorted(test for test, failure in raw.items() if failure is None)
    assert len(passed) >= 30, raw  # the suite did run
    failures = outcomes(wrapped(driver), pg.dsn)
    assert {test: failures[test] for test in passed if failures[test]} == {}


def test_execute_takes_psycopg2s_keyword_for_parameters(pg):
    # The cursor's fast execute() names its parameters; psycopg2 programs
    # that pass them as vars= must keep working.
    import psycopg2

    db = ReconnectingConnection(lambda: psycopg2.connect(pg.dsn))
    cursor = db.cursor()
    cursor.execute("SELECT %s + 1", vars=(41,))
    assert cursor.fetchone() == (42,)
    db.close()
