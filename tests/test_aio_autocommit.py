"""asyncio in autocommit mode: a statement that may have run is never a Retry.

The sync connection's rule (docs/connection.rst, "Autocommit mode:
statements in doubt") on AsyncReconnectingConnection: a statement whose
reply is lost raises StatementOutcomeUnknown, which the retry loop lets
through, so the write is made once; a session that cannot write keeps
Retry for its reads.  The proxy cuts the reply after the server has run
the statement.  psycopg 3 whatever ``RECONNECTING_TEST_DRIVER`` says.
"""

import asyncio

import psycopg
import pytest

from reconnecting import AsyncReconnectingConnection, Retry, StatementOutcomeUnknown
from reconnecting.aio import attempts
from reconnecting.testing import PortForwardTestSetup


@pytest.fixture
def proxy(pg):
    setup = PortForwardTestSetup()
    setup.setUp()
    yield setup
    setup.tearDown()


def connect(pg, proxy, **options):
    return lambda: psycopg.AsyncConnection.connect(
        pg.dsn, host=proxy.host, port=proxy.port, autocommit=True, **options
    )


def test_a_write_whose_reply_is_lost_is_made_once(pg, proxy, direct):
    direct.execute("DROP TABLE IF EXISTS booked; CREATE TABLE booked (n int)")

    async def main():
        db = AsyncReconnectingConnection(connect(pg, proxy))
        await db.execute("SELECT 1")  # connected: the cut applies from here
        proxy.cut_after(0)
        with pytest.raises(StatementOutcomeUnknown):
            async for attempt in attempts(db):
                async with attempt:
                    await db.execute("INSERT INTO booked VALUES (1)")
        assert attempt.number == 1
        proxy.restore()
        await db.close()

    asyncio.run(main())
    direct.execute("SELECT count(*) FROM booked")
    assert direct.fetchone() == (1,)


def test_a_read_on_a_session_that_cannot_write_stays_a_retry(pg, proxy):
    async def main():
        read_only = "-c default_transaction_read_only=on"
        db = AsyncReconnectingConnection(connect(pg, proxy, options=read_only))
        await db.execute("SELECT 1")
        proxy.cut_after(0)
        with pytest.raises(Retry):
            await db.execute("SELECT 2")
        proxy.restore()
        await db.rollback()
        assert await (await db.execute("SELECT 3")).fetchone() == (3,)
        await db.close()

    asyncio.run(main())
