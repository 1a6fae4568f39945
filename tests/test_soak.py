"""Soak: a ledger that must not lose money, run through outages.

Each transfer has a client-chosen id and moves an amount between two
accounts: two ``UPDATE``s and an ``INSERT`` into ``applied``, then
``commit()``.  ``applied`` deliberately has no unique constraint, so a
transfer applied twice shows up as two rows (and moves the money twice)
instead of failing with a unique violation.  The caller does what
docs/connection.rst recommends: on ``Retry``, ``rollback()`` and redo the
same transfer, same id, until it commits.

Meanwhile a fault thread drops and resets the proxied connections every few
tens of milliseconds and restarts the server, fast and immediate; with
``resolve_commit=True`` it also cuts connections at the moment of
``COMMIT``.  Afterwards: no transfer lost, no driver exception escaped the
wrapper, the total balance intact and every balance equal to what the
``applied`` rows imply, and no backend, proxied connection, file
descriptor or thread left over.  Without commit resolution a commit whose
reply was lost is applied twice: those duplicates are counted and reported,
not hidden; with it there must be none.

Every scenario runs once with psycopg2 and once with psycopg 3 as the
driver under the wrapper.  The figures of each scenario are printed
(``pytest -s``) and recorded as the ``soak`` user property of its test
report.

The connections ask for ``synchronous_commit=on`` (the throwaway cluster's
default too): with it off, an immediate restart (a crash) loses commits
that were already acknowledged, as any ledger would refuse to.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import logging
import os
import random
import threading
import time
import traceback
from contextlib import nullcontext, suppress

import pytest

from reconnecting import CommitOutcomeUnknown, ReconnectingConnection, Retry
from reconnecting.testing import PgTestSetup, PortForwardTestSetup, wait_until

ACCOUNTS = 16
OPENING_BALANCE = 1_000_000
DURABLE = "-c synchronous_commit=on"
JOIN_SECONDS = 90.0  # a deadlock detector, not a performance limit
STALL_SECONDS = 60.0  # no transfer committed for this long: the workers are stuck
SETTLE_SECONDS = 15.0  # for backends, sockets and threads to go away
MAX_ERRORS = 20  # per worker, before it gives up


# -- the ledger ---------------------------------------------------------------


@pytest.fixture(params=["psycopg2", "psycopg"])
def driver(request):
    """Every scenario runs under each driver; the wrapper is the same."""
    return importlib.import_module(request.param)


def admin(pg):
    """A new autocommit connection to the test database, not through a proxy."""
    conn = pg.connect(options=DURABLE)
    conn.autocommit = True
    return conn


@pytest.fixture
def ledger(pg):
    conn = admin(pg)
    try:
        create_ledger(conn.cursor())
    finally:
        conn.close()
    return pg


def create_ledger(cursor):
    """Make the ledger's tables afresh, with the opening balances."""
    cursor.execute("DROP TABLE IF EXISTS account, applied")
    cursor.execute("CREATE TABLE account (id int PRIMARY KEY, balance bigint)")
    cursor.execute(
        "CREATE TABLE applied (n serial, transfer_id text NOT NULL,"
        " src int NOT NULL, dst int NOT NULL, amount int NOT NULL)"
    )
    cursor.execute(
        "INSERT INTO account SELECT i, %s FROM generate_series(1, %s) i",
        (OPENING_BALANCE, ACCOUNTS),
    )


def transfer_once(db, cursor, transfer):
    """The unit of work; rows are locked in id order, so workers never deadlock."""
    transfer_id, src, dst, amount = transfer
    for account, delta in sorted([(src, -amount), (dst, amount)]):
        cursor.execute(
            "UPDATE account SET balance = balance + %s WHERE id = %s",
            (delta, account),
        )
    cursor.execute(
        "INSERT INTO applied (transfer_id, src, dst, amount) VALUES (%s, %s, %s, %s)",
        transfer,
    )
    db.commit()


def transfer_reading_first(db, cursor, transfer):
    """The unit of work as programs often write it: it reads before it
    writes, and reads what it wrote (``RETURNING``) before ``commit()``."""
    transfer_id, src, dst, amount = transfer
    cursor.execute(
        "SELECT id, balance FROM account WHERE id IN (%s, %s) ORDER BY id",
        (src, dst),
    )
    assert len(cursor.fetchall()) == 2
    for account, delta in sorted([(src, -amount), (dst, amount)]):
        cursor.execute(
            "UPDATE account SET balance = balance + %s WHERE id = %s",
            (delta, account),
        )
    cursor.execute(
        "INSERT INTO applied (transfer_id, src, dst, amount)"
        " VALUES (%s, %s, %s, %s) RETURNING transfer_id",
        transfer,
    )
    assert cursor.fetchone()[0] == transfer_id
    db.commit()
    assert cursor.fetchone() is None  # read to its end, as the driver's


# -- bookkeeping --------------------------------------------------------------


class Tally:
    """What happened in one scenario; every method is thread-safe."""

    def __init__(self, name):
        self.name = name
        self.counts = collections.Counter()
        self.completed = []  # transfer ids the callers saw committed
        self.unknown = []  # (transfer id, CommitOutcomeUnknown text)
        self.errors = []  # tracebacks of exceptions that should not escape
        self._lock = threading.Lock()

    def add(self, name, n=1):
        with self._lock:
            self.counts[name] += n

    def done(self, transfer_id):
        with self._lock:
            self.completed.append(transfer_id)
            return len(self.completed)

    def error(self, where):
        with self._lock:
            self.errors.append(f"{where}:\n{traceback.format_exc()}")


class LogCounter(logging.Handler):
    """Counts the package's log records by message template."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.counts = collections.Counter()

    def emit(self, record):
        self.counts[record.msg] += 1


@pytest.fixture
def log_counter():
    logger = logging.getLogger("reconnecting")
    handler, level = LogCounter(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.counts
    logger.removeHandler(handler)
    logger.setLevel(level)


def settle(condition):
    """Give ``condition`` time to come true; the caller checks what is left."""
    with suppress(TimeoutError):
        wait_until(condition, timeout=SETTLE_SECONDS)


def open_fds():
    return len(os.listdir("/proc/self/fd"))


# -- the caller ---------------------------------------------------------------


def apply(db, cursor, transfer, lock, tally, stop, unit=transfer_once):
    """Apply ``transfer`` until it commits, as a careful caller does."""
    while True:
        try:
            with lock:  # a shared connection: one unit of work at a time
                try:
                    unit(db, cursor, transfer)
                    return
                except Retry:
                    tally.add("Retry")
                    db.rollback()
                except CommitOutcomeUnknown as exc:
                    tally.add("CommitOutcomeUnknown")
                    with tally._lock:
                        tally.unknown.append((transfer[0], str(exc)))
                    db.rollback()
                    if look_up(db, cursor, transfer[0], stop) == "committed":
                        return
        except Exception:
            tally.error(f"transfer {transfer}")
            if len(tally.errors) > MAX_ERRORS:
                raise
            with lock:
                db.rollback()  # if this raises too, the worker ends


def look_up(db, cursor, transfer_id, stop):
    """What the docs advise after CommitOutcomeUnknown: once the server is
    back, look for the work itself (after a crash, the transaction id may
    belong to another transaction)."""
    deadline = time.monotonic() + JOIN_SECONDS
    while time.monotonic() < deadline:
        try:
            cursor.execute(
                "SELECT count(*) FROM applied WHERE transfer_id = %s", (transfer_id,)
            )
            count = cursor.fetchone()[0]
            db.rollback()
            return "committed" if count else "aborted"
        except Retry:
            db.rollback()
        stop.wait(0.01)
    raise TimeoutError(f"transfer {transfer_id} still unresolved")


def worker(name, db, lock, tally, enough, stop, seed, unit=transfer_once):
    rng = random.Random(seed)
    cursor = db.cursor()
    number = 0
    try:
        while not enough():
            number += 1
            src, dst = rng.sample(range(1, ACCOUNTS + 1), 2)
            transfer = (f"{name}-{number}", src, dst, rng.randint(1, 100))
            apply(db, cursor, transfer, lock, tally, stop, unit)
            tally.done(transfer[0])
    except Exception:
        tally.error(f"worker {name} gave up")


# -- the faults ---------------------------------------------------------------


@dataclasses.dataclass
class Faults:
    """A bounded fault plan: ``actions`` drops or resets, ``restarts`` among them."""

    actions: int | None  # None: until the workers are done
    interval: tuple[float, float] = (0.01, 0.05)  # seconds between actions
    reset_share: float = 0.15
    restarts: dict[int, str] = dataclasses.field(default_factory=dict)  # at action
    commit_traps: bool = False  # keep a cut_on_commit() trap armed
    commit_cut_share: float | None = None  # or cut this share of COMMIT replies


def inject(plan, proxy, pg, tally, stop, seed):
    """Run ``plan`` until it is complete, or until ``stop`` is set."""
    rng = random.Random(seed)
    pause = threading.Event()
    action, armed, due = 0, 0, 0
    next_action = time.monotonic() + rng.uniform(*plan.interval)
    try:
        while not stop.is_set() and (plan.actions is None or action < plan.actions):
            if plan.commit_traps and proxy.commit_cuts >= armed:
                # The previous trap fired (or none was set): set the next one.
                deliver = rng.random() < 0.5
                proxy.cut_on_commit(deliver=deliver)
                tally.add(f"commit traps set (deliver={deliver})")
                armed = proxy.commit_cuts + 1
            share = plan.commit_cut_share
            if share and proxy.commit_cuts >= armed and len(tally.completed) >= due:
                # The previous trap fired: the next fires after a geometric
                # number of commits, so that ``share`` of the replies are cut.
                proxy.cut_on_commit(deliver=True)
                tally.add("commit traps set (deliver=True)")
                armed = proxy.commit_cuts + 1
                due = len(tally.completed) + int(rng.expovariate(share))
            if time.monotonic() >= next_action:
                action += 1
                if action in plan.restarts:
                    mode = plan.restarts[action]
                    pg.restart(mode)
                    tally.add(f"restart({mode!r})")
                elif rng.random() < plan.reset_share:
                    proxy.reset()
                    tally.add("reset")
                else:
                    proxy.drop()
                    tally.add("drop")
                next_action = time.monotonic() + rng.uniform(*plan.interval)
            wait = max(0.0, next_action - time.monotonic())
            watching = plan.commit_traps or plan.commit_cut_share
            pause.wait(min(wait, 0.001) if watching else wait)
    except Exception:
        tally.error("fault thread")
    finally:
        proxy.restore()  # disarm a trap that did not fire
        if plan.commit_traps or plan.commit_cut_share:
            tally.add("commit traps fired", proxy.commit_cuts)


# -- a scenario ---------------------------------------------------------------


def soak(
    pg,
    name,
    *,
    driver,
    workers,
    shared=False,
    minimum,
    faults,
    resolve_commit=False,
    unit=transfer_once,
    log_counts,
    record_property,
):
    """Run ``workers`` threads until the fault plan is done and at least
    ``minimum`` transfers committed; check everything; return the tally."""
    name = f"{name}-{driver.__name__}"
    tally = Tally(name)
    threads_before, fds_before = threading.active_count(), open_fds()
    started = time.monotonic()
    proxy = PortForwardTestSetup()
    proxy.setUp()

    def factory():
        return driver.connect(
            PgTestSetup().dsn,
            host=proxy.host,
            port=proxy.port,
            connect_timeout=5,
            options=DURABLE,
        )

    def connection():
        return ReconnectingConnection(
            factory, resolve_commit=resolve_commit, resolve_timeout=30.0
        )

    stop, faults_done = threading.Event(), threading.Event()

    def enough():
        if stop.is_set():
            return True
        plan_done = faults.actions is None or faults_done.is_set()
        return plan_done and len(tally.completed) >= minimum

    if shared:
        one = connection()
        dbs, lock = [one] * workers, threading.Lock()
    else:
        dbs, lock = [connection() for _ in range(workers)], nullcontext()

    def run_faults():
        try:
            inject(faults, proxy, pg, tally, workers_done, seed=name)
        finally:
            faults_done.set()

    workers_done = threading.Event()
    fault_thread = threading.Thread(target=run_faults, name=f"faults-{name}")
    threads = [
        threading.Thread(
            target=worker,
            args=(f"{name}{i}", db, lock, tally, enough, stop, f"{name}{i}", unit),
            name=f"worker-{name}{i}",
        )
        for i, db in enumerate(dbs)
    ]
    fault_thread.start()
    for thread in threads:
        thread.start()
    stuck = wait_for_workers(threads, tally)
    stop.set()  # on a deadlock: let the rest end, to report it
    workers_done.set()
    fault_thread.join(JOIN_SECONDS)
    stuck += [fault_thread.name] if fault_thread.is_alive() else []
    for thread in threads:
        thread.join(SETTLE_SECONDS)
    wall = time.monotonic() - started
    assert not stuck, f"deadlock: {stuck} committed nothing for {STALL_SECONDS} s"

    for db in set(dbs):
        tally.add("disconnects", db.disconnects)
        tally.add("reconnects", db.reconnects)
        db.close()
    left = wind_down(proxy, pg, tally, threads_before, fds_before)
    ledger_figures = left.pop("ledger")
    figures = figures_of(tally, ledger_figures, log_counts, wall)
    report(f"soak {name}", figures, ledger_figures, tally, record_property)

    assert_intact(ledger_figures, tally, left, threads_before, fds_before)
    assert len(tally.completed) >= minimum
    return tally, ledger_figures


def wind_down(proxy, pg, tally, threads_before, fds_before):
    """Once the workers are done: close the proxy, audit the ledger, and
    return the audit (``ledger``) with what was left over."""
    # Every server connection the wrappers made is closed: the proxy sees it.
    settle(lambda: proxy.connections == 0)
    proxied = proxy.connections
    proxy.tearDown()
    check = admin(pg)
    try:
        leftovers = list_backends(check)
        ledger_figures = audit(check, tally)
    finally:
        check.close()
    settle(lambda: threading.active_count() <= threads_before)
    settle(lambda: open_fds() <= fds_before)
    return {
        "ledger": ledger_figures,
        "proxied": proxied,
        "backends": leftovers,
        "threads": threading.active_count(),
        "fds": open_fds(),
    }


def figures_of(tally, ledger_figures, log_counts, wall, **first):
    """A soak's figures, to report: *first*, then the tally's, the audit's
    and the package's log counts."""
    shown = {"Retry": 0, "CommitOutcomeUnknown": 0, **tally.counts}
    return {
        **first,
        "transfers": len(tally.completed),
        "escaped errors": len(tally.errors),
        **{key: shown[key] for key in sorted(shown)},
        **{k: v for k, v in ledger_figures.items() if k != "duplicate ids"},
        "confirmed commits (log)": log_counts["Commit of transaction %s confirmed"],
        "rolled-back commits (log)": log_counts[
            "Transaction %s was rolled back; retrying"
        ],
        "wall seconds": round(wall, 2),
    }


def report(title, figures, ledger_figures, tally, record_property):
    """Print a soak's figures (kept for the terminal summary, pass or fail)."""
    line = f"{title}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
    print("\n" + line)
    for transfer_id, count in ledger_figures["duplicate ids"]:
        print(f"  applied {count} times: {transfer_id}")
    for transfer_id, text in tally.unknown:
        print(f"  CommitOutcomeUnknown for {transfer_id}: {text}")
    record_property("soak", line)


def assert_intact(ledger_figures, tally, left, threads_before, fds_before):
    """Nothing escaped, nothing lost or invented, nothing left over."""
    assert not tally.errors, "\n".join(tally.errors)
    assert ledger_figures["lost"] == 0, ledger_figures
    assert ledger_figures["phantoms"] == 0, ledger_figures
    assert ledger_figures["total balance"] == ACCOUNTS * OPENING_BALANCE
    assert ledger_figures["inconsistent accounts"] == 0, ledger_figures
    proxied = left["proxied"]
    assert proxied == 0, f"{proxied} server connections were left open"
    assert left["backends"] == [], left["backends"]
    assert left["threads"] <= threads_before, threading.enumerate()
    assert left["fds"] <= fds_before, (fds_before, left["fds"])


def wait_for_workers(threads, tally):
    """Wait while the workers make progress; return the names of those still
    running once no transfer has committed for ``STALL_SECONDS`` (a loaded
    machine only makes the wait longer)."""
    committed, last_progress = -1, time.monotonic()
    while True:
        alive = [thread for thread in threads if thread.is_alive()]
        if not alive:
            return []
        if len(tally.completed) != committed:
            committed, last_progress = len(tally.completed), time.monotonic()
        elif time.monotonic() - last_progress > STALL_SECONDS:
            return [thread.name for thread in alive]
        alive[0].join(1.0)


def list_backends(conn):
    """Client backends of the test database other than ``conn``'s own."""
    cursor = conn.cursor()

    def backends():  # autocommit: a fresh snapshot each time
        cursor.execute(
            "SELECT pid, state, query FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'"
        )
        return cursor.fetchall()

    settle(lambda: not backends())
    return backends()


def audit(conn, tally):
    """Compare the ledger with what the callers believe happened."""
    cursor = conn.cursor()
    cursor.execute("SELECT transfer_id, count(*) FROM applied GROUP BY transfer_id")
    applied = dict(cursor.fetchall())
    completed = collections.Counter(tally.completed)
    assert max(completed.values(), default=1) == 1  # ids are unique per caller
    duplicates = sorted(
        ((tid, n) for tid, n in applied.items() if n > 1), key=lambda item: item[0]
    )
    cursor.execute("SELECT sum(balance) FROM account")
    total = cursor.fetchone()[0]
    # Every balance is the opening balance moved by exactly the applied rows.
    cursor.execute(
        """SELECT count(*) FROM account a WHERE balance <> %s
             + (SELECT coalesce(sum(amount), 0) FROM applied WHERE dst = a.id)
             - (SELECT coalesce(sum(amount), 0) FROM applied WHERE src = a.id)""",
        (OPENING_BALANCE,),
    )
    inconsistent = cursor.fetchone()[0]
    return {
        "lost": len(set(completed) - set(applied)),
        "duplicates": sum(n - 1 for _, n in duplicates),
        "duplicate ids": duplicates,
        "phantoms": len(set(applied) - set(completed)),
        "total balance": total,
        "inconsistent accounts": inconsistent,
    }


# -- the scenarios ------------------------------------------------------------

# Drops and resets every 10-50 ms, with two fast and two immediate restarts.
OUTAGES = Faults(
    actions=120, restarts={30: "fast", 55: "immediate", 80: "fast", 105: "immediate"}
)


def test_one_thread(ledger, driver, log_counter, record_property):
    _, figures = soak(
        ledger,
        "a",
        driver=driver,
        workers=1,
        minimum=400,
        faults=OUTAGES,
        log_counts=log_counter,
        record_property=record_property,
    )


def test_threads_with_their_own_connections(
    ledger, driver, log_counter, record_property
):
    soak(
        ledger,
        "b",
        driver=driver,
        workers=4,
        minimum=1500,
        faults=OUTAGES,
        log_counts=log_counter,
        record_property=record_property,
    )


def test_two_threads_sharing_a_connection(ledger, driver, log_counter, record_property):
    # Sharing a connection shares its transaction: each unit of work holds a
    # lock, from its first statement to its commit or rollback.
    soak(
        ledger,
        "c",
        driver=driver,
        workers=2,
        shared=True,
        minimum=400,
        faults=OUTAGES,
        log_counts=log_counter,
        record_property=record_property,
    )


def soak_resolving(ledger, name, faults, **options):
    """Four workers, commits resolved: nothing lost and, since every
    in-doubt commit is resolved, nothing applied twice either."""
    tally, figures = soak(
        ledger,
        name,
        workers=4,
        minimum=2000,
        faults=faults,
        resolve_commit=True,
        **options,
    )
    assert figures["duplicates"] == 0, figures["duplicate ids"]
    # The server resolves every in-doubt commit, except across a restart,
    # where a transaction id may have been handed out again.
    for transfer_id, text in tally.unknown:
        assert "the server restarted" in text, (transfer_id, text)
    return tally.counts["commit traps fired"]


def test_resolved_commits_are_applied_exactly_once(
    ledger, driver, log_counter, record_property
):
    # Commits cut one after the other, before and after the server got them,
    # drops, and restarts, fast and immediate (after a crash, a resolved
    # commit must not trust a transaction id the server may have reused).
    faults = Faults(
        actions=None,
        interval=(0.03, 0.1),
        reset_share=0.2,
        restarts={20: "fast", 40: "immediate", 60: "fast", 80: "immediate"},
        commit_traps=True,
    )
    fired = soak_resolving(
        ledger,
        "d",
        faults,
        driver=driver,
        log_counts=log_counter,
        record_property=record_property,
    )
    assert fired >= 100


def test_reading_before_commit_with_resolved_commits(
    ledger, driver, log_counter, record_property
):
    # Each unit of work reads (fetchall), then writes and reads back
    # (INSERT ... RETURNING, fetchone) before its COMMIT; 3 % of the COMMIT
    # replies are cut after the server committed, among drops and restarts.
    faults = Faults(
        actions=None,
        interval=(0.03, 0.1),
        reset_share=0.2,
        restarts={10: "fast", 20: "immediate", 30: "fast", 40: "immediate"},
        commit_cut_share=0.03,
    )
    fired = soak_resolving(
        ledger,
        "e",
        faults,
        driver=driver,
        unit=transfer_reading_first,
        log_counts=log_counter,
        record_property=record_property,
    )
    assert fired >= 20
