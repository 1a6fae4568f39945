"""The stateful model of the contract, for AsyncReconnectingConnection.

The calls of ``test_model.py`` with ``await``, on psycopg 3 (the asyncio
connection's only driver, whatever ``RECONNECTING_TEST_DRIVER`` says), and
what only asyncio has: tasks sharing one connection, one of them cancelled
while it waits or while it works, ``close()`` from another task, and
``asyncio.timeout()`` around a commit whose reply is lost.  The reference
model and the faults are those of ``model_reference.py``.
"""

import asyncio
import contextlib
import logging

import psycopg
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    initialize,
    precondition,
    rule,
)
from model_machine import (  # noqa: F401 (a fixture)
    KNOWN_GAPS,
    ContractMachine,
    proxy_fixture,
    run_model,
)
from model_reference import (
    LOCK_KEY,
    ContractError,
    InDoubtError,
)

from reconnecting import AsyncReconnectingConnection, CommitOutcomeUnknown, Retry
from reconnecting.aio import attempts
from reconnecting.testing import wait_until

pytestmark = pytest.mark.model

INSERT = "INSERT INTO model_rows VALUES (%s)"
SLOW_INSERT = "INSERT INTO model_rows SELECT %s FROM pg_sleep(%s)"
SLOW_RUNNING = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE state = 'active' AND query LIKE 'INSERT INTO model_rows SELECT%'"
)
SELECT = "SELECT k FROM model_rows ORDER BY k"
ATTRIBUTES = ["rowcount", "description", "statusmessage"]


class Records(logging.Handler):
    """What the package logged, to check what an in-doubt commit tells."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


class AsyncConnectionModel(ContractMachine):
    def __init__(self, *setup):
        super().__init__(*setup)
        self.loop = asyncio.new_event_loop()
        self.db = None
        self.records = Records()
        logging.getLogger("reconnecting").addHandler(self.records)

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def factory(self):
        return psycopg.AsyncConnection.connect(
            self.pg.dsn,
            host=self.proxy.host,
            port=self.proxy.port,
            application_name="model",
        )

    def open(self):
        self.db = AsyncReconnectingConnection(
            self.factory, resolve_commit=self.resolve, resolve_timeout=0.3
        )
        self.cursor = self.db.cursor()
        self.ref.new_connection()

    @initialize(resolve=st.booleans(), autocommit=st.booleans())
    def start(self, resolve, autocommit):
        self.faults.restore(went_down=True)
        self.observer.reset()
        self.resolve = resolve
        self.open()
        if autocommit:  # half the examples start in autocommit mode
            self.set_autocommit(True)

    def teardown(self):
        logging.getLogger("reconnecting").removeHandler(self.records)
        if self.db is not None:
            self.run(self.db.close())
        self.loop.close()
        self.faults.restore()

    async def call(self, awaitable, *, key=None, doubtful=False, talks=True):
        """As ``ConnectionModel.call`` of test_model.py, awaited."""
        told = self.ref.needs_rollback
        try:
            value = await awaitable
        except Retry:
            return self.retried(key, doubtful)
        except CommitOutcomeUnknown as error:
            return self.in_doubt(key, error, doubtful)
        raw = self.db._raw  # the one look inside: which server session
        pid = None if raw is None or raw.closed else raw.info.backend_pid
        return self.worked(value, told, talks, pid)

    @precondition(lambda self: not self.ref.failed)
    @rule(returning=st.booleans(), cut=st.sampled_from([False, False, False, True]))
    def write(self, returning, cut=False):
        key = self.ref.key()
        query = INSERT + (" RETURNING k" if returning else "")

        async def write():
            await self.cursor.execute(query, (key,))
            return await self.cursor.fetchall() if returning else None

        if cut:
            self.faults.cut_reply()
            self.ref.faulted = True
        try:
            outcome, rows = self.run(self.call(write(), key=key))
        finally:
            if cut:
                self.faults.restore()
        if outcome == "ok":
            self.ref.wrote(key, in_block=self.block is not None)
            if self.block is not None:
                self.block.append(key)
            if returning and [tuple(row) for row in rows] != [(key,)]:
                raise ContractError(f"INSERT ... RETURNING gave {rows}")

    @precondition(lambda self: not self.ref.failed)
    @rule(how=st.sampled_from(["fetchone", "fetchmany", "fetchall", "iterate"]))
    def read(self, how):
        async def read():
            await self.cursor.execute(SELECT)
            if how == "fetchone":
                first = await self.cursor.fetchone()
                rest = await self.cursor.fetchall()
                return ([] if first is None else [first]) + rest
            if how == "fetchmany":
                return await self.cursor.fetchmany(2) + await self.cursor.fetchall()
            if how == "iterate":
                return [row async for row in self.cursor]
            return await self.cursor.fetchall()

        outcome, rows = self.run(self.call(read()))
        if outcome == "ok":
            self.ref.began()
            if problems := self.ref.visible([row[0] for row in rows]):
                raise ContractError("; ".join(problems))

    @precondition(lambda self: self.block is None)
    @rule(cut=st.sampled_from([None, None, None, "request", "reply", "reply-down"]))
    def commit(self, cut):
        self.run(self.commit_in_loop(cut))

    async def commit_in_loop(self, cut):
        armed = cut is not None and self.ref.in_transaction and not self.ref.failed
        if armed:
            self.faults.cut_commit(cut)
            self.ref.faulted = True
        try:
            outcome, _ = await self.call(
                self.db.commit(), doubtful=armed and cut != "request"
            )
        finally:
            if armed:
                self.faults.restore(went_down=cut == "reply-down")
        if outcome == "unknown" and (cut != "reply-down" or not self.resolve):
            raise ContractError(
                f"CommitOutcomeUnknown though the server could tell ({cut})"
            )
        if outcome == "ok":
            self.ref.commit()
        return outcome

    @precondition(
        lambda self: (
            self.resolve
            and self.block is None
            and self.ref.in_transaction
            and not self.ref.failed
            and not self.ref.needs_rollback
        )
    )
    @rule()
    def commit_under_a_timeout(self):
        """asyncio.timeout() ends a commit whose reply is lost while the
        connection asks what became of it: the transaction id is logged."""

        async def commit():
            cursor = self.db.cursor()
            await cursor.execute("SELECT pg_current_xact_id()::text")
            (xid,) = await cursor.fetchone()
            self.faults.cut_commit("reply-down")
            try:
                async with asyncio.timeout(0.1):
                    await self.db.commit()
            except TimeoutError:
                return xid
            return None

        try:
            outcome, xid = self.run(self.call(commit(), doubtful=True))
        finally:
            self.faults.restore(went_down=True)
        if outcome == "ok" and xid is not None:
            self.ref.unknown()
            if not any(xid in message for message in self.records.messages):
                raise ContractError(
                    f"a commit cut short left transaction {xid} unlogged"
                )
        elif outcome == "ok":
            self.ref.commit()

    @precondition(lambda self: self.block is None)
    @rule(check=st.booleans())
    def rollback(self, check):
        disconnects, state = self.db.disconnects, repr(self.db).split()[1]
        self.run(self.db.rollback())
        self.rolled_back(disconnects, state)
        if check and not self.ref.faulted:
            if self.probe() != "ok":
                raise ContractError("the connection does not work after rollback()")
            self.ref.began()

    def probe(self):
        """The outcome of a plain query."""
        return self.run(self.call(self.db.execute("SELECT 1")))[0]

    @precondition(lambda self: self.block is None)
    @rule(value=st.booleans())
    def set_autocommit(self, value):
        busy = self.ref.in_transaction and not self.ref.needs_rollback
        try:
            outcome, _ = self.run(self.call(self.db.set_autocommit(value), talks=False))
        except psycopg.ProgrammingError:
            if not busy:
                raise
            return
        if outcome == "ok":
            self.ref.autocommit = value

    @precondition(lambda self: not self.ref.failed and self.block is None)
    @rule()
    def advisory_lock(self):
        if "lock" in self.ref.session:
            return
        query = f"SELECT pg_advisory_lock({LOCK_KEY})"
        outcome, _ = self.run(self.call(self.cursor.execute(query)))
        if outcome == "ok":
            self.ref.set_up("lock", transactional=False)
            self.ref.began()

    @precondition(lambda self: self.ref.session and not self.ref.failed)
    @rule()
    def use_advisory_lock(self):
        async def held():
            await self.cursor.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                f" AND objid = {LOCK_KEY} AND pid = pg_backend_pid()"
            )
            return (await self.cursor.fetchone())[0]

        outcome, count = self.run(self.call(held()))
        if outcome == "ok":
            self.ref.began()
            if count != 1:
                raise ContractError("the advisory lock was lost silently")

    @rule(names=st.sets(st.sampled_from(ATTRIBUTES)))
    def read_attributes(self, names):
        cursor = self.cursor
        before = repr(self.db).split()[1], self.db.reconnects
        for name in sorted(names):
            try:
                getattr(cursor, name)
            except Exception as error:
                raise ContractError(f"cursor.{name} raised {error!r}") from None
        after = repr(self.db).split()[1], self.db.reconnects
        if after != before:
            raise ContractError(f"reading attributes connected: {before} -> {after}")

    @precondition(lambda self: self.block is None)
    @rule(use=st.booleans())
    def close(self, use):
        cursor = self.cursor
        self.run(self.db.close())
        self.ref.rollback()
        if use:
            with pytest.raises(psycopg.Error):
                self.run(cursor.execute("SELECT 1"))
        self.open()

    # Rules added after the first run on the code of issue 17 (defects 10
    # and 11): the model had no call that met them.

    @rule()
    def first_use_while_unreachable(self):
        """The first call finds the server unreachable; the handler names
        ``db.Error``: the classes are there unconnected."""
        other = AsyncReconnectingConnection(self.factory)
        self.proxy.tearDown()
        self.ref.faulted = True
        try:
            with pytest.raises(Retry):
                self.run(other.cursor().execute("SELECT 1"))
            try:
                error_class = other.Error
            except Exception as error:
                raise ContractError(f"db.Error raised {error!r}") from None
            if not issubclass(error_class, Exception):
                raise ContractError(f"db.Error is {error_class!r}")
        finally:
            self.proxy.setUp()
            self.run(other.close())

    @precondition(
        lambda self: (
            self.block is None and "async-refused-setting-poisons" not in KNOWN_GAPS
        )
    )
    @rule()
    def bad_setting(self):
        """A value the driver refuses is refused, or never poisons."""
        try:
            self.run(self.db.set_isolation_level("bogus"))
        except (ValueError, TypeError, psycopg.Error):
            pass
        except Retry:
            if not self.ref.needs_rollback:
                raise
        self.rollback(check=False)
        self.not_poisoned("isolation level")

    @precondition(lambda self: self.block is None and not self.ref.failed)
    @rule(
        writes=st.integers(1, 3),
        fault=st.sampled_from([None, "drop", "reset", "reply", "request"]),
    )
    def unit_in_attempts(self, writes, fault):
        """The recommended loop around a unit of work that ends with commit()."""
        ref = self.ref
        first = [True]

        async def unit():
            for position in range(writes):
                if first[0] and fault in ("drop", "reset") and position == at_last:
                    self.fault(fault)
                await self.write_in_loop()
                if ref.needs_rollback:
                    raise self.left_unit()
            cut = fault if first[0] and fault in ("reply", "request") else None
            first[0] = False
            if await self.commit_in_loop(cut) == "unknown":
                raise InDoubtError()
            if ref.needs_rollback:
                raise self.left_unit()

        async def loop():
            async for attempt in attempts(self.db, tries=5):
                async with attempt:
                    try:
                        await unit()
                    except BaseException:
                        first[0] = False
                        ref.rollback()  # the attempt rolls back on the way out
                        raise

        at_last = writes - 1
        try:
            self.run(loop())
        except (Retry, InDoubtError):
            pass  # out of tries, or in doubt: told, and rolled back

    @precondition(
        lambda self: (
            self.block is None and not self.ref.failed and not self.ref.needs_rollback
        )
    )
    @rule(
        plan=st.lists(
            st.sampled_from(["write", "rollback", "attempts", "fault"]), max_size=4
        ),
        fail=st.booleans(),
    )
    def transaction_block(self, plan, fail):
        """``async with db.transaction():``, one unit whatever it holds."""
        ref = self.ref
        outer = not ref.in_transaction
        self.block, entered = [], []

        async def block():
            async with self.db.transaction():
                entered.append(True)
                for step in plan:
                    if step == "write":
                        await self.write_in_loop()
                    elif step == "rollback":
                        await self.db.rollback()
                        ref.rollback()
                    elif step == "attempts":
                        await self.nested_attempts()
                    else:
                        self.fault("drop")
                    if ref.needs_rollback:
                        raise self.left_unit()
                if fail:
                    raise ValueError("the block fails")

        try:
            self.run(block())
        except Exception as error:
            refusals = (psycopg.ProgrammingError,)
            if self.block_failed(error, outer, bool(entered), refusals):
                self.run(self.db.rollback())
        else:
            if outer:
                self.block_over(committed=True)
            else:
                self.block = None

    async def write_in_loop(self):
        key = self.ref.key()
        outcome, _ = await self.call(self.cursor.execute(INSERT, (key,)), key=key)
        if outcome == "ok":
            self.ref.wrote(key, in_block=self.block is not None)
            if self.block is not None:
                self.block.append(key)

    async def nested_attempts(self):
        dropped = False
        async for attempt in attempts(self.db, tries=3):
            async with attempt:
                if not dropped:
                    dropped = True
                    self.fault("drop")
                try:
                    await self.write_in_loop()
                    if self.ref.needs_rollback:
                        raise self.left_unit()
                except BaseException:
                    self.ref.rollback()
                    raise

    @precondition(
        lambda self: (
            self.block is None and not self.ref.failed and not self.ref.needs_rollback
        )
    )
    @rule(
        ops=st.lists(
            st.sampled_from(["write", "read", "close"]), min_size=2, max_size=3
        ),
        victim=st.integers(0, 3),
        turns=st.sampled_from([0, 1, 2, 3, "running"]),
    )
    def shared_by_tasks(self, ops, victim, turns):
        """Tasks share the connection; one may be cancelled after ``turns``
        turns of the loop, or once a write runs on the server ("running",
        added for defect 5 of issue 17), while it waits for the connection
        or works on it."""
        ref, db = self.ref, self.db
        keys = [ref.key() if op == "write" else None for op in ops]

        async def task(op, key):
            try:
                if op == "write":
                    # Slow enough to be seen running before it ends.
                    pause = 0.3 if turns == "running" else 0.02
                    await db.cursor().execute(SLOW_INSERT, (key, pause))
                elif op == "read":
                    await db.cursor().execute(SELECT)
                else:
                    await db.close()
                return "ok"
            except Retry:
                return "closed-retry" if db.closed else "retry"
            except CommitOutcomeUnknown:
                return "doubt"  # a statement that lost its connection
            except psycopg.Error:
                if db.closed:
                    return "closed"
                raise

        async def run_all():
            tasks = [
                asyncio.ensure_future(task(op, k))
                for op, k in zip(ops, keys, strict=True)
            ]
            if turns == "running":
                await asyncio.to_thread(self.wait_for_a_slow_write)
            else:
                for _ in range(turns):
                    await asyncio.sleep(0)
            if victim < len(tasks):
                tasks[victim].cancel()
            return await asyncio.gather(*tasks, return_exceptions=True)

        outcomes = self.run(run_all())
        # A statement whose connection was closed under it may still run:
        # the table is settled once the server is done with it.
        wait_until(lambda: not self.observer.run(SLOW_RUNNING)[0][0], 10)
        for op, key, outcome in zip(ops, keys, outcomes, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(
                outcome, asyncio.CancelledError
            ):
                raise outcome
            if outcome == "closed-retry":
                raise ContractError(
                    f"{op} got Retry from a connection closed by another task"
                )
            if outcome == "ok" and op != "close":
                ref.began()
            if key is None:
                continue
            if outcome == "ok":
                ref.wrote(key)
            elif isinstance(outcome, asyncio.CancelledError) or outcome in (
                "doubt",
                "closed",
            ):
                ref.doubt.add(key)  # cancelled, closed under it, or told so
            else:
                ref.absent.add(key)
        if "close" in ops or db._raw is None:
            # Told (Retry, cancellation or close): what was open is gone.
            ref.retry()
            if "close" in ops:
                self.run(db.close())
                self.open()
            else:
                self.run(db.rollback())
                ref.rollback()
            ref.faulted = False

    def wait_for_a_slow_write(self, timeout=2.0):
        """Until the server runs a write of shared_by_tasks(), or ``timeout``
        (the write may have failed already)."""
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: self.observer.run(SLOW_RUNNING)[0][0], timeout)


def test_async_connection_model(pg, proxy):
    run_model(AsyncConnectionModel, pg, proxy, default_examples=100)
