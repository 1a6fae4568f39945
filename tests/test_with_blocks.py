"""psycopg2's with block in autocommit mode is one transaction, after an
outage and a rollback inside it too (connection.rst shows the block that
ends well; here it fails)."""

import pytest

from reconnecting import ReconnectingConnection, attempts
from reconnecting.testing import PortForwardTestSetup

psycopg2 = pytest.importorskip("psycopg2")


def test_a_failing_block_after_a_retry_inside_it_commits_nothing(pg, direct):
    direct.execute("CREATE TABLE IF NOT EXISTS t (x int)")
    with PortForwardTestSetup() as proxy:
        db = ReconnectingConnection(
            lambda: psycopg2.connect(pg.dsn, host=proxy.host, port=proxy.port)
        )
        db.autocommit = True
        cursor = db.cursor()
        with pytest.raises(LookupError), db:
            cursor.execute("INSERT INTO t VALUES (1)")
            proxy.drop()
            for attempt in attempts(db):
                with attempt:
                    cursor.execute("INSERT INTO t VALUES (2)")
            cursor.execute("INSERT INTO t VALUES (3)")
            raise LookupError("the block fails after its statements")
        direct.execute("SELECT count(*) FROM t")
        assert direct.fetchone() == (0,)
        # The block is over: autocommit mode again, statement by statement.
        cursor.execute("INSERT INTO t VALUES (4)")
        direct.execute("SELECT count(*) FROM t")
        assert direct.fetchone() == (1,)
        db.close()
