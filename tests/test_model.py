"""The stateful model of the contract, for ReconnectingConnection.

Hypothesis draws sequences of the calls programs make (cursors, reads,
writes, fetches, commits, rollbacks, settings, ``with db:`` and psycopg 3
``transaction()`` blocks, savepoints, server-side cursors, session state,
attributes, ``close()`` and ``attempts()`` loops) interleaved with real
faults (the proxy drops, resets and cuts, the server restarts, backends
are terminated, queries cancelled), and after every step checks the table
and the answers against ``model_reference.Reference``.  Run only these with
``pytest -m model``; ``RECONNECTING_MODEL_EXAMPLES`` sets their number.
"""

import importlib
import threading

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    initialize,
    precondition,
    rule,
)
from model_machine import ContractMachine, proxy_fixture, run_model  # noqa: F401
from model_reference import (
    DRIVER,
    LOCK_KEY,
    ContractError,
    InDoubtError,
)

from reconnecting import CommitOutcomeUnknown, ReconnectingConnection, Retry, attempts
from reconnecting.testing import wait_until

driver = importlib.import_module(DRIVER)
pytestmark = pytest.mark.model

INSERT = "INSERT INTO model_rows VALUES (%s)"
SELECT = "SELECT k FROM model_rows ORDER BY k"
FETCHES = ["fetchone", "fetchmany", "fetchall", "iterate"]
ATTRIBUTES = ["query", "rowcount", "description", "statusmessage"]
LEVELS = ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]
SESSION_STATE = {  # how it is made, whether it lasts only if committed
    "lock": (f"SELECT pg_advisory_lock({LOCK_KEY})", False),
    "temp": ("CREATE TEMP TABLE IF NOT EXISTS model_tmp (x int)", True),
    "listen": ("LISTEN model_channel", True),
    "prepared": ("PREPARE model_stmt AS SELECT 1", False),
}
SESSION_CHECK = {  # a query that returns [(1,)] while the state is there
    "lock": "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
    f" AND objid = {LOCK_KEY} AND pid = pg_backend_pid()",
    "temp": "SELECT count(*) + 1 FROM model_tmp",
    "listen": "SELECT count(*) FROM pg_listening_channels() c"
    " WHERE c = 'model_channel'",
    "prepared": "EXECUTE model_stmt",
}


def rows_of(cursor, how):
    """All rows of the cursor's result, read the way ``how`` says."""
    if how == "fetchone":
        first = cursor.fetchone()
        return ([] if first is None else [first]) + list(cursor.fetchall())
    if how == "fetchmany":
        return list(cursor.fetchmany(2)) + list(cursor.fetchall())
    if how == "iterate":
        return list(cursor)
    return list(cursor.fetchall())


def backend_pid(db):
    """The pid of the server session under ``db`` now, or None (the one
    look inside the wrapper: which server session it uses)."""
    raw = db._raw
    if raw is None:
        return None
    try:
        return raw.info.backend_pid if DRIVER == "psycopg" else raw.get_backend_pid()
    except Exception:
        return None


class ConnectionModel(ContractMachine):
    def __init__(self, *setup):
        super().__init__(*setup)
        self.db = None
        self.cursors = []
        self.block = None  # keys written in a block that is a unit, if in one

    # -- the connection and the call ------------------------------------------------

    def factory(self):
        return driver.connect(
            self.pg.dsn,
            host=self.proxy.host,
            port=self.proxy.port,
            application_name="model",
        )

    def open(self):
        self.db = ReconnectingConnection(
            self.factory, resolve_commit=self.resolve, resolve_timeout=0.3
        )
        self.cursors = [self.db.cursor()]
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
        if self.db is not None:
            self.db.close()
        self.faults.restore()

    def call(self, function, *, key=None, expect=(), doubtful=False, talks=True):
        """Run one call of the program and tell the model what it answered:
        ``"ok"`` (and its value), ``"retry"``, ``"unknown"`` or the expected
        driver error.  Anything else fails the example.  A call that
        ``talks`` to the server must raise ``Retry`` until ``rollback()``
        once it did; settings are remembered instead."""
        told = self.ref.needs_rollback
        try:
            value = function()
        except Retry:
            return self.retried(key, doubtful)
        except CommitOutcomeUnknown as error:
            return self.in_doubt(key, error, doubtful)
        except expect as error:
            if key is not None:
                self.ref.lost(key)
            return "error", error
        return self.worked(value, told, talks, backend_pid(self.db))

    def cursor(self, index):
        return self.cursors[index % len(self.cursors)]

    # -- faults ---------------------------------------------------------------------

    @precondition(lambda self: not self.ref.needs_rollback and not self.ref.failed)
    @rule()
    def cancel_a_long_query(self):
        """A query cancelled from another thread fails with 57014, which is
        not an outage.  psycopg 3 cancels with ``db.cancel_safe()``; libpq's
        blocking cancel (psycopg2's ``cancel()``, psycopg's ``cancel()``)
        holds the GIL, so the proxy, a thread of this process, could not
        forward it: for psycopg2 the server is asked (pg_cancel_backend)."""
        cursor = self.db.cursor()
        stop = threading.Event()
        active = (
            "SELECT pid FROM pg_stat_activity"
            " WHERE query = 'SELECT pg_sleep(5)' AND state = 'active'"
        )

        def cancel():
            try:
                wait_until(lambda: stop.is_set() or self.observer.run(active), 10)
                if stop.is_set():
                    return
                if DRIVER == "psycopg":
                    self.db.cancel_safe()
                else:
                    self.observer.run(
                        "SELECT pg_cancel_backend(pid) FROM (" + active + ") AS a"
                    )
            except Exception:
                pass

        thread = threading.Thread(target=cancel)
        thread.start()
        try:
            outcome, error = self.call(
                lambda: cursor.execute("SELECT pg_sleep(5)"),
                expect=driver.OperationalError,
            )
        finally:
            stop.set()
            thread.join()
        if outcome == "error":
            sqlstate = getattr(error, "sqlstate", None) or getattr(
                error, "pgcode", None
            )
            assert sqlstate == "57014", error
            if not self.ref.autocommit:
                self.ref.in_transaction = self.ref.failed = True

    # -- DB-API calls -----------------------------------------------------------------

    @precondition(lambda self: len(self.cursors) < 3)
    @rule()
    def new_cursor(self):
        self.cursors.append(self.db.cursor())

    @precondition(lambda self: not self.ref.failed)
    @rule(
        index=st.integers(0, 2),
        returning=st.booleans(),
        how=st.sampled_from(FETCHES),
        cut=st.sampled_from([False, False, False, True]),
    )
    def write(self, index, returning, how, cut):
        cursor = self.cursor(index)
        key = self.ref.key()
        query = INSERT + (" RETURNING k" if returning else "")

        def write():
            cursor.execute(query, (key,))
            return rows_of(cursor, how) if returning else None

        if cut:  # the reply never arrives
            self.faults.cut_reply()
            self.ref.faulted = True
        try:
            # A read-only session refuses the write (25006): not an outage.
            refused = driver.InternalError if self.ref.read_only else ()
            outcome, rows = self.call(write, key=key, expect=refused)
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
    @rule(index=st.integers(0, 2), how=st.sampled_from(FETCHES))
    def read(self, index, how):
        cursor = self.cursor(index)

        def read():
            cursor.execute(SELECT)
            return [row[0] for row in rows_of(cursor, how)]

        outcome, keys = self.call(read)
        if outcome == "ok":
            self.ref.began()
            if problems := self.ref.visible(keys):
                raise ContractError("; ".join(problems))

    @precondition(lambda self: not self.ref.failed)
    @rule(index=st.integers(0, 2))
    def statement_error(self, index):
        """An error that is not an outage passes through unchanged."""
        outcome, _ = self.call(
            lambda: self.cursor(index).execute("SELECT 1/0"),
            expect=driver.DataError,
        )
        if outcome == "error" and not self.ref.autocommit:
            self.ref.in_transaction = self.ref.failed = True

    @precondition(lambda self: self.block is None)
    @rule(cut=st.sampled_from([None, None, None, "request", "reply", "reply-down"]))
    def commit(self, cut):
        self.commit_once(cut)

    def commit_once(self, cut):
        """Commit, with ``cut`` armed; the outcome (see :meth:`call`)."""
        armed = cut is not None and self.ref.in_transaction and not self.ref.failed
        if armed:
            self.faults.cut_commit(cut)
            self.ref.faulted = True
        # Without resolution a lost reply leaves the outcome unknown.
        doubtful = armed and cut != "request"
        try:
            outcome, _ = self.call(self.db.commit, doubtful=doubtful)
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

    @precondition(lambda self: self.block is None)
    @rule(check=st.booleans())
    def rollback(self, check):
        disconnects, state = self.db.disconnects, repr(self.db).split()[1]
        self.db.rollback()  # never raises for an outage
        self.rolled_back(disconnects, state)
        if check and not self.ref.faulted:  # after rollback() it works again
            if self.probe() != "ok":
                raise ContractError("the connection does not work after rollback()")
            self.ref.began()

    def probe(self):
        """The outcome of a plain query."""
        cursor = self.db.cursor()
        return self.call(lambda: cursor.execute("SELECT 1"))[0]

    @precondition(lambda self: self.block is None)
    @rule(value=st.booleans())
    def set_autocommit(self, value):
        busy = self.ref.in_transaction and not self.ref.needs_rollback
        outcome, _ = self.call(
            lambda: setattr(self.db, "autocommit", value),
            expect=driver.ProgrammingError if busy else (),
            talks=False,
        )
        if outcome == "ok":
            self.ref.autocommit = value

    @precondition(lambda self: self.block is None)
    @rule(level=st.sampled_from(LEVELS), read_only=st.booleans())
    def set_isolation_and_read_only(self, level, read_only):
        busy = self.ref.in_transaction and not self.ref.needs_rollback

        def set_session():
            if DRIVER == "psycopg":
                self.db.isolation_level = driver.IsolationLevel[level.replace(" ", "_")]
                self.db.read_only = read_only
            else:
                self.db.isolation_level = level
                self.db.readonly = read_only

        outcome, _ = self.call(
            set_session, expect=driver.ProgrammingError if busy else (), talks=False
        )
        if outcome == "ok":
            self.ref.read_only = read_only

    @precondition(lambda self: not self.ref.autocommit and not self.ref.failed)
    @rule(how=st.sampled_from(FETCHES))
    def server_side_cursor(self, how):
        name = f"model_c{self.ref.key()}"
        cursor = self.db.cursor(name=name)

        def read():
            cursor.execute(SELECT)
            rows = [row[0] for row in rows_of(cursor, how)]
            cursor.close()
            return rows

        outcome, keys = self.call(read)
        if outcome == "ok":
            self.ref.began()
            if problems := self.ref.visible(keys):
                raise ContractError("; ".join(problems))

    @precondition(
        lambda self: (
            self.ref.in_transaction
            and not self.ref.failed
            and not self.ref.autocommit
            and self.block is None
        )
    )
    @rule(undo=st.booleans())
    def savepoint(self, undo):
        cursor = self.cursors[0]
        key = self.ref.key()

        def around_a_write():
            cursor.execute("SAVEPOINT model_sp")
            cursor.execute(INSERT, (key,))
            cursor.execute(("ROLLBACK TO" if undo else "RELEASE") + " model_sp")

        refused = driver.InternalError if self.ref.read_only else ()
        outcome, _ = self.call(around_a_write, key=key, expect=refused)
        if outcome == "ok":
            if undo:
                self.ref.absent.add(key)
            else:
                self.ref.wrote(key)

    @precondition(lambda self: not self.ref.failed and self.block is None)
    @rule(state=st.sampled_from(sorted(SESSION_STATE)))
    def make_session_state(self, state):
        query, transactional = SESSION_STATE[state]
        if state in self.ref.session | self.ref.pending_session:
            return
        if state == "prepared" and not self.ref.autocommit:
            return  # PREPARE outside autocommit: not the point
        refused = driver.InternalError if self.ref.read_only else ()
        outcome, _ = self.call(lambda: self.cursors[0].execute(query), expect=refused)
        if outcome == "ok":
            self.ref.set_up(state, transactional)
            self.ref.began()
        elif outcome == "error":
            self.ref.lost(self.ref.key())

    @precondition(lambda self: self.ref.session and not self.ref.failed)
    @rule()
    def use_session_state(self):
        cursor = self.cursors[0]
        for state in sorted(self.ref.session):
            query = SESSION_CHECK[state]
            outcome, row = self.call(
                lambda query=query: (cursor.execute(query), cursor.fetchone())[1]
            )
            if outcome != "ok":
                return
            self.ref.began()
            if tuple(row) != (1,):
                raise ContractError(f"session state {state!r} lost silently")

    @rule(index=st.integers(0, 2), names=st.sets(st.sampled_from(ATTRIBUTES)))
    def read_attributes(self, index, names):
        """What a handler logs: attributes answer in every state, as the
        driver's do, and reading them never connects."""
        cursor = self.cursor(index)
        before = repr(self.db).split()[1], self.db.reconnects
        for name in sorted(names):
            try:
                getattr(cursor, name)
            except AttributeError:
                if DRIVER == "psycopg2" or name != "query":
                    raise ContractError(
                        f"cursor.{name} raised AttributeError"
                    ) from None
            except Retry:
                raise ContractError(f"reading cursor.{name} raised Retry") from None
        after = repr(self.db).split()[1], self.db.reconnects
        if after != before:
            raise ContractError(f"reading attributes connected: {before} -> {after}")

    @precondition(lambda self: self.block is None)
    @rule(use=st.sampled_from(["execute", "cursor", "nothing"]))
    def close(self, use):
        cursor = self.cursors[0]
        self.db.close()
        self.ref.rollback()
        if use == "execute":
            with pytest.raises(driver.Error):
                cursor.execute("SELECT 1")
        elif use == "cursor":
            with pytest.raises(driver.Error):
                self.db.cursor().execute("SELECT 1")
        self.open()

    # Rules added after the first run on the code of issue 17 (defects 10,
    # 11 and 14 of the issue): the model had no call that met them.

    @rule()
    def first_use_while_unreachable(self):
        """A program's first call finds the server unreachable, and its
        handler names ``db.Error``: the classes are there unconnected."""
        other = ReconnectingConnection(self.factory)
        self.proxy.tearDown()  # refuses connections, ends the current ones
        self.ref.faulted = True
        try:
            with pytest.raises(Retry):
                other.cursor().execute("SELECT 1")
            try:
                error_class = other.Error
            except Exception as error:
                raise ContractError(f"db.Error raised {error!r}") from None
            if not issubclass(error_class, Exception):
                raise ContractError(f"db.Error is {error_class!r}")
        finally:
            self.proxy.setUp()
            other.close()

    @precondition(lambda self: self.block is None)
    @rule()
    def bad_setting(self, name="isolation_level"):
        """A value the driver refuses is refused, in every state, or else
        never poisons the connection.  (Disconnected and never connected,
        the wrapper has nothing to check it with: Retry.)"""
        try:
            setattr(self.db, name, "bogus")
        except (ValueError, TypeError, driver.Error):
            pass
        except Retry:
            if not self.ref.needs_rollback:
                raise
        self.rollback(check=False)
        self.not_poisoned(name)

    @rule()
    def the_cursor_offers_what_the_driver_does(self):
        for name in ("callproc", "nextset", "setinputsizes", "scroll"):
            offered = name in dir(self.cursors[0])
            if offered and not hasattr(self.raw_cursor_class(), name):
                raise ContractError(
                    f"the cursor offers {name}(), the driver's does not"
                )

    def raw_cursor_class(self):
        return driver.extensions.cursor if DRIVER == "psycopg2" else driver.Cursor

    # -- units of work ---------------------------------------------------------------

    @precondition(lambda self: self.block is None and not self.ref.failed)
    @rule(
        writes=st.integers(1, 3),
        fault=st.sampled_from([None, "drop", "reset", "reply", "request", "cut"]),
        at=st.integers(0, 3),
    )
    def unit_in_attempts(self, writes, fault, at):
        """The recommended loop around a unit of work that ends with commit()."""
        ref = self.ref
        fault_left = [fault]

        def injure(position):
            if fault_left[0] in ("drop", "reset") and position == at:
                self.faults(fault_left.pop())
                fault_left.append(None)
                ref.faulted = True

        def unit():
            for position in range(writes):
                injure(position)
                self.write(0, False, "fetchall", False)
                if ref.needs_rollback:
                    raise self.left_unit()  # the write was told: leave the attempt
            cut = fault_left[0] if fault_left[0] in ("reply", "request") else None
            fault_left[0] = None
            if self.commit_once(cut) == "unknown":
                raise InDoubtError()
            if ref.needs_rollback:
                raise self.left_unit()

        try:
            for attempt in attempts(self.db, tries=5, deadline=30.0):
                with attempt:
                    try:
                        unit()
                    except BaseException:
                        ref.rollback()  # the attempt rolls back on the way out
                        raise
        except (Retry, InDoubtError):
            pass  # out of tries, or in doubt: told, and rolled back

    @precondition(
        lambda self: (
            self.block is None and not self.ref.failed and not self.ref.needs_rollback
        )
    )
    @rule(
        writes=st.integers(0, 2),
        nested_retry=st.booleans(),
        fail=st.booleans(),
    )
    def with_block(self, writes, nested_retry, fail):
        """``with db:``: one transaction (psycopg2 even in autocommit mode)."""
        ref = self.ref
        unit = DRIVER == "psycopg2" or not ref.autocommit
        self.block = [] if unit else None
        entered = False
        try:
            with self.db:
                entered = True
                for _ in range(writes):
                    self.write_in_block()
                if nested_retry:
                    self.nested_attempts()
                self.write_in_block()
                if fail:
                    raise ValueError("the block fails")
        except (Retry, InDoubtError, ValueError) as error:
            if not isinstance(error, ValueError):
                ref.retry()  # told, by the block's end if not by our calls
            if entered:
                self.block_over(committed=False)  # its end rolled back
            else:
                # Refused at its start (a loss not acknowledged yet): the
                # block never began, so nothing ended it; rollback() is
                # still the caller's to call.
                self.block = None
        else:
            self.block_over(committed=True)
        if DRIVER == "psycopg":  # psycopg 3 closes the connection after the block
            self.open()

    def write_in_block(self):
        """A write of a block; its failure ends the block, as in a program."""
        self.write(0, False, "fetchall", False)
        if self.ref.needs_rollback:
            raise self.left_unit()
        if self.ref.failed:  # refused (read-only)
            raise ValueError("a statement of the block failed")

    def nested_attempts(self):
        """An ``attempts()`` loop inside a block, whose first try meets a drop."""
        dropped = [False]
        for attempt in attempts(self.db, tries=3):
            with attempt:
                if not dropped[0]:
                    dropped[0] = True
                    self.fault("drop")
                try:
                    self.write_in_block()
                except BaseException:
                    self.ref.rollback()
                    raise

    @precondition(
        lambda self: (
            DRIVER == "psycopg"
            and self.block is None
            and not self.ref.failed
            and not self.ref.needs_rollback
        )
    )
    @rule(
        plan=st.lists(
            st.sampled_from(["write", "savepoint", "rollback", "attempts", "fault"]),
            max_size=4,
        ),
        fail=st.booleans(),
    )
    def transaction_block(self, plan, fail):
        """psycopg 3's ``with db.transaction():``, one unit whatever it holds."""
        ref = self.ref
        outer = not ref.in_transaction
        self.block, entered = [], False
        try:
            with self.db.transaction():
                entered = True
                for step in plan:
                    if step == "write":
                        self.write(0, False, "fetchall", False)
                    elif step == "savepoint":
                        self.inner_block()
                    elif step == "rollback":
                        self.db.rollback()
                        ref.rollback()
                    elif step == "attempts":
                        self.nested_attempts()
                    else:
                        self.fault("drop")
                    if ref.needs_rollback:
                        raise self.left_unit()
                    if ref.failed:  # a write refused (read-only): it ends the block
                        raise ValueError("a statement of the block failed")
                if fail:
                    raise ValueError("the block fails")
        except Exception as error:
            if self.block_failed(error, outer, entered, (driver.ProgrammingError,)):
                self.db.rollback()  # a block left by Retry touches nothing
        else:
            if outer:
                self.block_over(committed=True)
            else:
                self.block = None

    def inner_block(self):
        keys_before = len(self.block)
        try:
            with self.db.transaction():
                self.write(0, False, "fetchall", False)
                if self.ref.needs_rollback:
                    raise self.left_unit()
                raise ValueError("the savepoint is rolled back")
        except ValueError:
            gone = self.block[keys_before:]
            del self.block[keys_before:]
            self.ref.absent.update(gone)
            self.ref.pending = [k for k in self.ref.pending if k not in gone]
            self.ref.failed = False  # rolled back to the savepoint: it goes on


def test_connection_model(pg, proxy):
    run_model(ConnectionModel, pg, proxy, default_examples=100)
