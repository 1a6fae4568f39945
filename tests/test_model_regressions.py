"""What the stateful model found, each shrunk example as a plain test.

The comment of each test gives the model's shrunk steps (test_model.py,
test_model_async.py) and the defect of issue 17 it is: found by the model's
first rules on the code before the fixes, or by a rule added for it then,
or found on the fixed code.  Those not fixed yet are marked xfail while
their name is in ``model_machine.KNOWN_GAPS``.  They run under the driver
of ``RECONNECTING_TEST_DRIVER``; the asyncio ones under psycopg 3.
"""

import asyncio
import importlib

import psycopg
import pytest
from model_machine import proxy_fixture  # noqa: F401
from model_reference import DRIVER, TABLE

from reconnecting import (
    AsyncReconnectingConnection,
    ReconnectingConnection,
    Retry,
    attempts,
)
from reconnecting.testing import wait_until

driver = importlib.import_module(DRIVER)
INSERT = "INSERT INTO model_rows VALUES (%s)"
LOCK_HELD = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
    " AND objid = 4242 AND pid = pg_backend_pid()"
)
only_psycopg3 = pytest.mark.skipif(DRIVER != "psycopg", reason="psycopg 3's API")
only_psycopg2 = pytest.mark.skipif(DRIVER != "psycopg2", reason="psycopg2's API")


@pytest.fixture
def keys(direct):
    """The keys in model_rows, read straight from the server."""
    direct.execute(TABLE)
    direct.execute("TRUNCATE model_rows")

    def keys():
        direct.execute("SELECT k FROM model_rows ORDER BY k")
        return [k for (k,) in direct.fetchall()]

    return keys


@pytest.fixture
def connect(pg, proxy):
    made = []

    def connect(**options):
        db = ReconnectingConnection(
            lambda: driver.connect(pg.dsn, host=proxy.host, port=proxy.port),
            **options,
        )
        made.append(db)
        return db

    yield connect
    for db in made:
        db.close()
    proxy.restore()


def test_commit_after_reading_to_the_end(connect, keys):
    # Defect 1.  start(resolve=True); read(how="fetchall"); commit(): the
    # commit raised ProgrammingError (psycopg2) or IndexError (psycopg).
    db = connect(resolve_commit=True)
    cursor = db.cursor()
    cursor.execute(INSERT + " RETURNING k", (1,))
    assert cursor.fetchone()[0] == 1
    db.commit()
    assert keys() == [1]


@only_psycopg3
def test_rollback_inside_a_transaction_block(connect, keys):
    # Defect 2.  transaction_block(plan=["write", "rollback", "write"]):
    # "key 1 was told committed but is missing", the block committed half.
    db = connect()
    try:
        with db.transaction():
            db.execute(INSERT, (1,))
            db.rollback()
            db.execute(INSERT, (2,))
    except driver.ProgrammingError:
        assert keys() == []  # refused, as psycopg refuses it
    else:
        assert keys() == [1, 2]


@only_psycopg3
def test_rollback_inside_a_savepoint_block(connect, keys):
    # Defect 2.  make_session_state("listen"); transaction_block(plan=
    # ["rollback"]): the inner block's end raised the driver's
    # InvalidSavepointSpecification.
    db = connect()
    db.execute("SELECT 1")  # a transaction is open: the block is a savepoint
    with pytest.raises(driver.ProgrammingError), db.transaction():
        db.rollback()


@only_psycopg2
@pytest.mark.parametrize("autocommit", [False, True])
def test_a_with_block_around_a_retried_unit(connect, keys, proxy, autocommit):
    # Defect 2.  with_block(writes=1, nested_retry=True, fail=...): a
    # nested attempts() loop met a drop; the block then committed without
    # its first write ("key 1 was told committed but is missing") or, in
    # autocommit mode, a failing block left the rest committed.
    db = connect()
    db.autocommit = autocommit
    for fail in (False, True):
        dropped = False
        try:
            with db:
                db.cursor().execute(INSERT, (1,))
                for attempt in attempts(db, tries=3):
                    with attempt:
                        if not dropped:
                            dropped = True
                            proxy.drop()
                        db.cursor().execute(INSERT, (2,))
                if fail:
                    raise ValueError
        except (Retry, ValueError, driver.Error):
            assert keys() == [], fail
        else:
            assert keys() == [1, 2]
        db.rollback()
        db.cursor().execute("DELETE FROM model_rows")
        db.commit()


def test_a_resolved_commit_keeps_or_tells_the_session(connect, proxy):
    # Defect 3.  start(resolve=True); make_session_state("lock");
    # write(); commit(cut="reply"); use_session_state(): "server session
    # changed silently ({'lock'} lost)".
    db = connect(resolve_commit=True)
    db.autocommit = True
    cursor = db.cursor()
    cursor.execute("SELECT pg_advisory_lock(4242)")
    db.autocommit = False
    cursor.execute(INSERT, (1,))
    proxy.cut_on_commit(deliver=True)
    try:
        db.commit()
        cursor.execute(LOCK_HELD)
        assert cursor.fetchone()[0] == 1, "the lock was lost silently"
    except Retry:
        pass  # told


@pytest.mark.parametrize("returning", [False, True])
def test_an_autocommitted_write_whose_reply_is_lost(connect, keys, proxy, returning):
    # Defect 4.  set_autocommit(True); write(cut=True): "key 1 was told
    # rolled back (or Retry) but is there".
    db = connect(resolve_commit=True)
    db.autocommit = True
    cursor = db.cursor()
    cursor.execute("SELECT 1")
    proxy.cut_after(0)
    try:
        cursor.execute(INSERT + (" RETURNING k" if returning else ""), (1,))
    except Retry:
        assert keys() == [], "Retry said not done, but the write is there"
    except Exception:
        pass  # anything but "not done" is allowed: its outcome is unknown
    finally:
        proxy.restore()


def test_cursor_attributes_in_a_retry_handler(connect, proxy):
    # Defect 12.  fault("drop"); commit() -> Retry; read_attributes(
    # {"query"}): "reading cursor.query raised Retry".
    db = connect()
    cursor = db.cursor()
    cursor.execute("SELECT 1")
    proxy.drop()
    with pytest.raises(Retry):
        cursor.execute("SELECT 2")
    for name in ("rowcount", "description", "statusmessage"):
        getattr(cursor, name)
    if DRIVER == "psycopg2":
        cursor.query  # noqa: B018


def test_reading_attributes_never_connects(connect):
    # Defect 12.  start(); read_attributes({"query"}): "reading attributes
    # connected: ('not', 0) -> ('connected', 0)".
    db = connect()
    cursor = db.cursor()
    cursor.rowcount  # noqa: B018
    assert repr(db).split()[1] == "not"
    db.cursor().execute("SELECT 1")
    db.rollback()
    cursor.rowcount  # noqa: B018
    assert db.reconnects == 0


@pytest.mark.parametrize("use", ["cursor", "execute"])
def test_use_after_close_raises_a_driver_error(connect, use):
    # Defect 13.  start(); close(use=...): DisconnectedConnectionError,
    # which `except driver.Error` does not catch.
    db = connect()
    cursor = db.cursor()
    db.close()
    with pytest.raises(driver.Error):
        (db.cursor() if use == "cursor" else cursor).execute("SELECT 1")


def test_error_classes_without_a_first_connection(connect, proxy):
    # Defect 10, found by the added rule: first_use_while_unreachable():
    # evaluating db.Error called the factory again, and raised Retry.
    db = connect()
    proxy.tearDown()
    try:
        with pytest.raises(Retry):
            db.cursor().execute("SELECT 1")
        assert issubclass(db.Error, Exception)
    finally:
        proxy.setUp()


def test_a_refused_setting_made_while_disconnected(connect, proxy):
    # Defect 11, found by the added rule: fault("drop"); commit() -> Retry;
    # bad_setting("isolation_level"): every call then raised ValueError.
    db = connect()
    cursor = db.cursor()
    cursor.execute("SELECT 1")
    proxy.drop()
    with pytest.raises(Retry):
        cursor.execute("SELECT 1")
    try:
        db.isolation_level = "bogus"
    except (ValueError, TypeError, driver.Error):
        pass
    db.rollback()
    try:  # at most one call may fail for it
        cursor.execute("SELECT 1")
    except ValueError:
        db.rollback()
        cursor.execute("SELECT 1")
    assert cursor.fetchone()[0] == 1


def test_the_cursor_offers_only_what_the_driver_does(connect):
    # Defect 14 (the callproc part), found by the added rule
    # the_cursor_offers_what_the_driver_does().
    raw = driver.extensions.cursor if DRIVER == "psycopg2" else driver.Cursor
    assert hasattr(connect().cursor(), "callproc") == hasattr(raw, "callproc")


def test_a_rollback_after_a_resolved_commit_keeps_it_told(connect, proxy):
    # Found on the fixed code (async model; the sync connection alike):
    # start(resolve=True); advisory_lock(); unit_in_attempts(fault="reply");
    # rollback(check=True): "server session changed silently ({'lock'}
    # lost)".  The resolved commit leaves the loss for the next call to
    # tell; a rollback() first (cleanup code, a pool's reset) clears it.
    db = connect(resolve_commit=True)
    db.autocommit = True
    cursor = db.cursor()
    cursor.execute("SELECT pg_advisory_lock(4242)")
    db.autocommit = False
    cursor.execute(INSERT, (1,))
    proxy.cut_on_commit(deliver=True)
    db.commit()
    db.rollback()
    try:
        cursor.execute(LOCK_HELD)
        assert cursor.fetchone()[0] == 1, "the lock was lost silently"
    except Retry:
        pass  # told


def test_a_rollback_that_finds_the_session_gone_tells(connect, proxy):
    # Beyond the fourteen.  make_session_state("lock"); fault("drop");
    # rollback(); any call: "server session changed silently ({'lock'}
    # lost)": rollback() swallows the disconnection, and the next call
    # runs on a new session without a word.
    db = connect()
    cursor = db.cursor()
    cursor.execute("SELECT pg_advisory_lock(4242)")  # a transaction is open
    proxy.drop()
    db.rollback()
    try:
        cursor.execute(LOCK_HELD)
        assert cursor.fetchone()[0] == 1, "the lock was lost silently"
    except Retry:
        pass  # told


@only_psycopg3
def test_a_block_begun_on_a_lost_connection_says_retry(connect, proxy):
    # Beyond the fourteen, found on the fixed code.  set_autocommit(True);
    # first_use_while_unreachable(); transaction_block(plan=[]):
    # StatementOutcomeUnknown for the block's own BEGIN, which writes
    # nothing, so attempts() gives up instead of retrying.
    db = connect()
    db.autocommit = True
    db.execute("SELECT 1")
    proxy.drop()
    with pytest.raises(Retry), db.transaction():
        pass


def test_a_with_block_refused_at_its_start_leaves_rollback_to_the_caller(
    connect, proxy
):
    # Found on the fixed code (issue 20), a defect of the model, not of the
    # connection: start(); bad_setting(); first_use_while_unreachable();
    # rollback(); with_block(writes=0); bad_setting(): "rollback() cleared
    # a session loss never told".  The rollback() found the session gone and
    # left the loss for the next call to tell; the block's __enter__ told it
    # (Retry) and so never began, and the model had the block's end roll
    # back, as if it had.  The connection stays disconnected until the
    # caller's rollback(), which then may clear it: the loss was told.
    db = connect()
    cursor = db.cursor()
    cursor.execute("SELECT 1")
    proxy.drop()
    db.rollback()  # finds the server connection gone: nothing told yet
    assert repr(db).split()[1] == "disconnected"
    with pytest.raises(Retry), db:
        pytest.fail("the block began on a loss not told")
    assert repr(db).split()[1] == "disconnected"  # told, not acknowledged
    db.rollback()
    cursor.execute("SELECT 1")
    assert cursor.fetchone() == (1,)


# -- asyncio ------------------------------------------------------------------


@pytest.fixture
def aconnect(pg, proxy):
    made = []
    loop = asyncio.new_event_loop()

    def aconnect(**options):
        db = AsyncReconnectingConnection(
            lambda: psycopg.AsyncConnection.connect(
                pg.dsn, host=proxy.host, port=proxy.port
            ),
            **options,
        )
        made.append(db)
        return db

    aconnect.run = loop.run_until_complete
    yield aconnect
    for db in made:
        loop.run_until_complete(db.close())
    loop.close()
    proxy.restore()


def test_async_rollback_inside_a_transaction_block(aconnect, keys):
    # Defect 2, asyncio.  transaction_block(plan=["write", "rollback"]):
    # "key 1 was told committed but is missing".
    db = aconnect()

    async def block():
        async with db.transaction():
            await db.execute(INSERT, (1,))
            await db.rollback()
            await db.execute(INSERT, (2,))

    try:
        aconnect.run(block())
    except psycopg.ProgrammingError:
        assert keys() == []
    else:
        assert keys() == [1, 2]


def test_async_cursor_attributes_answer_before_connecting(aconnect):
    # Defect 12, asyncio.  start(); read_attributes({"rowcount"}):
    # DisconnectedConnectionError("not connected yet: ...").
    db = aconnect()
    assert db.cursor().rowcount == -1


def test_async_use_after_close_raises_a_driver_error(aconnect):
    # Defect 13, asyncio.  start(); close(use=True), and
    # shared_by_tasks(ops=["close", "write"]): DisconnectedConnectionError.
    db = aconnect()
    cursor = db.cursor()
    aconnect.run(db.close())
    with pytest.raises(psycopg.Error):
        aconnect.run(cursor.execute("SELECT 1"))


def test_async_error_classes_without_a_first_connection(aconnect, proxy):
    # Defect 10, asyncio, found by the added rule first_use_while_unreachable():
    # db.Error raised DisconnectedConnectionError.
    db = aconnect()
    proxy.tearDown()
    try:
        with pytest.raises(Retry):
            aconnect.run(db.cursor().execute("SELECT 1"))
        assert issubclass(db.Error, Exception)
    finally:
        proxy.setUp()


def test_async_a_refused_setting_made_while_disconnected(aconnect, proxy):
    # Defect 11, asyncio, found by the added rule bad_setting().
    db = aconnect()
    aconnect.run(db.execute("SELECT 1"))
    proxy.drop()
    with pytest.raises(Retry):
        aconnect.run(db.execute("SELECT 1"))
    try:
        aconnect.run(db.set_isolation_level("bogus"))
    except (ValueError, TypeError, psycopg.Error):
        pass
    aconnect.run(db.rollback())
    try:  # at most one call may fail for it
        cursor = aconnect.run(db.execute("SELECT 1"))
    except ValueError:
        aconnect.run(db.rollback())
        cursor = aconnect.run(db.execute("SELECT 1"))
    assert aconnect.run(cursor.fetchone())[0] == 1


def test_async_a_block_begun_on_a_lost_connection_says_retry(aconnect, proxy):
    # Beyond the fourteen, found on the fixed code: as the sync test above.
    db = aconnect()

    async def block():
        await db.set_autocommit(True)
        await db.execute("SELECT 1")
        proxy.drop()
        async with db.transaction():
            pass

    with pytest.raises(Retry):
        aconnect.run(block())


def test_async_a_cancelled_waiter_leaves_the_running_write_alone(
    aconnect, keys, direct
):
    # Defect 5, found with the first rules once half the examples started in
    # autocommit mode: start(autocommit=True); read(); shared_by_tasks(ops=
    # ["write", "write"], turns=1, victim=1): "key 1 was told rolled back
    # (or Retry) but is there".
    db = aconnect()
    slow = "INSERT INTO model_rows SELECT %s FROM pg_sleep(0.02)"

    async def main():
        await db.set_autocommit(True)
        await db.execute("SELECT 1")
        tasks = [asyncio.ensure_future(db.execute(slow, (k,))) for k in (1, 2)]
        await asyncio.sleep(0)
        tasks[1].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    first, _ = aconnect.run(main())
    running = "SELECT count(*) FROM pg_stat_activity WHERE query = %s"

    def settled():  # the server is done with the writes
        direct.execute(running, (slow,))
        return direct.fetchone()[0] == 0

    wait_until(settled, 10)
    if isinstance(first, Retry):
        assert 1 not in keys(), "Retry said not done, but the write is there"
