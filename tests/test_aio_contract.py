"""AsyncReconnectingConnection's contract around what docs/asyncio.rst shows.

Tasks sharing one connection: several waiters given up, one handed the
turn as it is cancelled, a stream that keeps the turn; blocks: an
``attempts()`` loop inside one, one left quietly after an outage; a commit
cancelled while its outcome is being resolved; attributes read without a
server; and autocommit mode (the sync connection's rule, "Autocommit mode:
statements in doubt" in docs/connection.rst): a statement whose reply is
lost raises StatementOutcomeUnknown, which the retry loop lets through, so
the write is made once, while a session that cannot write keeps Retry.
Real server, real proxy; psycopg 3 whatever ``RECONNECTING_TEST_DRIVER``
says, as asyncio is psycopg 3's.
"""

import asyncio
import logging

import psycopg
import pytest

from reconnecting import AsyncReconnectingConnection, Retry, StatementOutcomeUnknown
from reconnecting.aio import _Turn, attempts
from reconnecting.testing import PortForwardTestSetup
from reconnecting.testing.pages.asyncio import backends_running, until


@pytest.fixture
def proxy(pg):
    setup = PortForwardTestSetup()
    setup.setUp()
    yield setup
    setup.tearDown()


@pytest.fixture
def table(direct):
    direct.execute("DROP TABLE IF EXISTS item; CREATE TABLE item (n int)")
    return direct


def count(direct, where="true"):
    direct.execute(f"SELECT count(*) FROM item WHERE {where}")
    return direct.fetchone()[0]


def factory(pg, proxy, **options):
    return lambda: psycopg.AsyncConnection.connect(
        pg.dsn, host=proxy.host, port=proxy.port, **options
    )


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def test_waiters_cancelled_in_any_order_leave_the_running_call_alone(pg, proxy, table):
    slow = "INSERT INTO item SELECT 1 FROM pg_sleep(1)"

    async def main():
        db = AsyncReconnectingConnection(factory(pg, proxy))
        await db.set_autocommit(True)
        running = asyncio.create_task(db.execute(slow))
        await until(lambda: backends_running(slow))
        waiters = [
            asyncio.create_task(db.execute(f"INSERT INTO item VALUES ({n})"))
            for n in (2, 3, 4)
        ]
        await asyncio.sleep(0)  # all three wait for their turn now
        waiters[1].cancel()
        waiters[0].cancel()
        await running
        await asyncio.gather(waiters[2])
        assert [w.cancelled() for w in waiters] == [True, True, False]
        assert db.disconnects == 0
        await db.close()

    run(main())
    assert count(table, "n = 1") == count(table, "n = 4") == 1
    assert count(table) == 2


def test_a_waiter_handed_the_turn_as_it_is_cancelled_passes_it_on():
    turn = _Turn()

    async def main():
        await turn.take()  # busy: the next two wait
        second = asyncio.create_task(turn.take())
        third = asyncio.create_task(turn.take())
        await asyncio.sleep(0)
        turn.give()  # handed to the second, which is cancelled before it runs
        second.cancel()
        await asyncio.wait([second, third], timeout=5)
        assert second.cancelled() and third.done() and turn.busy
        turn.give()
        assert not turn.busy

    run(main())


def test_a_stream_keeps_the_turn_and_a_waiter_given_up_does_not_break_it(pg, proxy):
    async def main():
        db = AsyncReconnectingConnection(factory(pg, proxy))
        rows = []
        async for row in db.cursor().stream("SELECT generate_series(1, 3)"):
            rows.append(row[0])
            if len(rows) == 1:
                waiting = asyncio.create_task(db.execute("SELECT 1"))
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(waiting, 0.05)
        assert rows == [1, 2, 3] and db.disconnects == 0
        assert await (await db.execute("SELECT 2")).fetchone() == (2,)
        await db.close()

    run(main())


def test_an_attempts_loop_inside_a_block_commits_nothing(pg, proxy, table):
    async def main():
        db = AsyncReconnectingConnection(factory(pg, proxy))
        with pytest.raises(psycopg.ProgrammingError, match="rollback"):
            async with db.transaction():
                await db.execute("INSERT INTO item VALUES (1)")
                proxy.drop()
                async for attempt in attempts(db):
                    async with attempt:
                        await db.execute("INSERT INTO item VALUES (2)")
        await db.rollback()
        assert await (await db.execute("SELECT 1")).fetchone() == (1,)
        await db.close()

    run(main())
    assert count(table) == 0


def test_a_block_left_quietly_after_an_outage_says_retry(pg, proxy, table):
    async def main():
        db = AsyncReconnectingConnection(factory(pg, proxy))
        with pytest.raises(Retry):
            async with db.transaction():
                await db.execute("INSERT INTO item VALUES (1)")
                proxy.drop()
                try:
                    await db.execute("INSERT INTO item VALUES (2)")
                except Retry:
                    pass  # swallowed: the block's end must not pass for a commit
        await db.rollback()
        await db.close()

    run(main())
    assert count(table) == 0


def test_a_block_left_by_another_error_after_an_outage_rolls_back(pg, proxy, table):
    # As the sync connection (test_psycopg3_calls): the block ends as any
    # block left by an error, with a rollback, which leaves the
    # disconnected state; the next call reconnects.
    async def main():
        db = AsyncReconnectingConnection(factory(pg, proxy))
        with pytest.raises(LookupError):
            async with db.transaction():
                await db.execute("INSERT INTO item VALUES (1)")
                proxy.drop()
                with pytest.raises(Retry):
                    await db.execute("INSERT INTO item VALUES (2)")
                raise LookupError("the block fails after the outage")
        assert await (await db.execute("SELECT 1")).fetchone() == (1,)
        await db.close()

    run(main())
    assert count(table) == 0


def test_a_timeout_during_resolution_names_the_transaction(pg, proxy, table, caplog):
    async def main():
        db = AsyncReconnectingConnection(factory(pg, proxy), resolve_commit=True)
        await db.execute("INSERT INTO item VALUES (1)")
        proxy.cut_on_commit(deliver=True, go_down=True)
        with pytest.raises(TimeoutError) as raised:
            async with asyncio.timeout(1.0):
                await db.commit()
        assert db.disconnects == 1  # the timeout came while resolving
        return raised.value

    with caplog.at_level(logging.WARNING, "reconnecting"):
        error = run(main())
    (message,) = [r.getMessage() for r in caplog.records if "cancelled" in r.msg]
    transaction_id = message.split()[3]
    assert message.endswith("cancelled; its outcome is unknown")
    notes = getattr(error.__cause__, "__notes__", [])
    assert notes == [f"the outcome of transaction {transaction_id} is unknown"]


def test_reading_attributes_never_connects(pg, proxy):
    calls = []

    def counting_factory():
        calls.append(1)
        return factory(pg, proxy)()

    async def main():
        db = AsyncReconnectingConnection(counting_factory)
        cursor = db.cursor()
        cursor.arraysize = 5
        said = (cursor.arraysize, db.cursor().arraysize, cursor.rowcount, db.Error)
        assert said == (5, 1, -1, psycopg.Error) and not calls
        await cursor.execute("SELECT 1")
        proxy.drop()
        with pytest.raises(Retry):
            await cursor.execute("SELECT 2")
        await db.rollback()
        fresh = db.cursor()
        assert (fresh.rowcount, fresh.description, cursor.rowcount) == (-1, None, -1)
        assert len(calls) == 1 and db.disconnects == 1
        await db.close()
        assert cursor.closed and fresh.closed

    run(main())


def test_a_write_whose_reply_is_lost_is_made_once(pg, proxy, direct):
    direct.execute("DROP TABLE IF EXISTS booked; CREATE TABLE booked (n int)")

    async def main():
        db = AsyncReconnectingConnection(factory(pg, proxy, autocommit=True))
        await db.execute("SELECT 1")  # connected: the cut applies from here
        proxy.cut_after(0)
        with pytest.raises(StatementOutcomeUnknown):
            async for attempt in attempts(db):
                async with attempt:
                    await db.execute("INSERT INTO booked VALUES (1)")
        assert attempt.number == 1
        proxy.restore()
        await db.close()

    run(main())
    direct.execute("SELECT count(*) FROM booked")
    assert direct.fetchone() == (1,)


def test_a_read_on_a_session_that_cannot_write_stays_a_retry(pg, proxy):
    async def main():
        read_only = "-c default_transaction_read_only=on"
        db = AsyncReconnectingConnection(
            factory(pg, proxy, autocommit=True, options=read_only)
        )
        await db.execute("SELECT 1")
        proxy.cut_after(0)
        with pytest.raises(Retry):
            await db.execute("SELECT 2")
        proxy.restore()
        await db.rollback()
        assert await (await db.execute("SELECT 3")).fetchone() == (3,)
        await db.close()

    run(main())
