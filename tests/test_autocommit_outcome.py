"""Autocommit mode: a statement whose reply was lost may have committed, so
it is never reported as not done (connection.rst states the rule).

The proxy's commit trap fires on a query that starts with ``COMMIT``: in
autocommit mode, ``COMMIT; INSERT ...`` is a write that commits on the
server while its reply is cut."""

import importlib

import pytest

from reconnecting import (
    CommitOutcomeUnknown,
    ReconnectingConnection,
    Retry,
    StatementOutcomeUnknown,
    attempts,
)
from reconnecting.testing import PortForwardTestSetup

WRITE = "COMMIT; INSERT INTO t VALUES (1)"


@pytest.fixture(params=["psycopg2", "psycopg"])
def proxied(request, pg, direct):
    direct.execute("CREATE TABLE IF NOT EXISTS t (x int)")
    direct.execute("TRUNCATE t")
    driver = importlib.import_module(request.param)
    with PortForwardTestSetup() as proxy:

        def factory(**options):
            return driver.connect(pg.dsn, host=proxy.host, port=proxy.port, **options)

        yield factory, proxy


def rows(direct):
    direct.execute("SELECT count(*) FROM t")
    return direct.fetchone()[0]


def test_a_write_whose_reply_was_lost_is_not_retried(proxied, direct):
    factory, proxy = proxied
    db = ReconnectingConnection(factory, resolve_commit=True)
    db.autocommit = True
    cursor = db.cursor()
    proxy.cut_on_commit(deliver=True)
    with pytest.raises(StatementOutcomeUnknown) as caught:
        for attempt in attempts(db):
            with attempt:
                cursor.execute(WRITE)
    assert rows(direct) == 1  # it ran once, and the loop did not run it again
    assert isinstance(caught.value, CommitOutcomeUnknown)
    assert caught.value.transaction_id is None
    db.rollback()
    cursor.execute("SELECT 1")
    db.close()


def test_a_read_only_session_may_retry(proxied, direct):
    factory, proxy = proxied
    options = "-c default_transaction_read_only=on"
    db = ReconnectingConnection(lambda: factory(options=options))
    db.autocommit = True
    cursor = db.cursor()
    cursor.execute("SELECT 1")
    proxy.drop()
    with pytest.raises(Retry):
        cursor.execute("SELECT 1")
    db.close()
