"""Soak for asyncio: the ledger of test_soak.py, run by tasks in one loop.

Twenty tasks, each with its own :class:`AsyncReconnectingConnection` with
``resolve_commit=True``, make transfers (two ``UPDATE``s and an ``INSERT``
into ``applied``, then ``await db.commit()``) through a proxy, as a careful
caller does: on ``Retry``, ``await db.rollback()`` and redo the same
transfer, same id; on ``CommitOutcomeUnknown``, roll back and look for the
transfer itself.  Meanwhile test_soak.py's fault thread drops and resets
the proxied connections, keeps a ``cut_on_commit()`` trap armed (the
``COMMIT`` delivered or not, at random), and restarts the server twice,
fast and then immediate.

Afterwards, as for the sync soak: no transfer lost, none applied twice, no
driver exception reached a task, the total balance intact and every
balance equal to what the ``applied`` rows imply; no backend, proxied
connection, file descriptor or task left over.  The figures are printed
(``pytest -s``) and recorded as the ``soak`` user property.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

import psycopg
from test_soak import (
    ACCOUNTS,
    DURABLE,
    JOIN_SECONDS,
    MAX_ERRORS,
    STALL_SECONDS,
    Faults,
    Tally,
    assert_intact,
    inject,
    ledger,  # noqa: F401 (a fixture)
    log_counter,  # noqa: F401 (a fixture)
    open_fds,
    report,
    wind_down,
)

from reconnecting import AsyncReconnectingConnection, CommitOutcomeUnknown, Retry
from reconnecting.testing import PgTestSetup, PortForwardTestSetup

TASKS = 20
MINIMUM = 2000
RESTARTS = {15: "fast", 30: "immediate"}  # at these fault actions
TRAP_PAUSE = (0.002, 0.03)  # seconds from one cut COMMIT to the next trap


async def transfer_once(db, cursor, transfer):
    """The unit of work; rows are locked in id order, so tasks never deadlock."""
    transfer_id, src, dst, amount = transfer
    for account, delta in sorted([(src, -amount), (dst, amount)]):
        await cursor.execute(
            "UPDATE account SET balance = balance + %s WHERE id = %s",
            (delta, account),
        )
    await cursor.execute(
        "INSERT INTO applied (transfer_id, src, dst, amount) VALUES (%s, %s, %s, %s)",
        transfer,
    )
    await db.commit()


async def apply(db, cursor, transfer, tally):
    """Apply ``transfer`` until it commits."""
    while True:
        try:
            await transfer_once(db, cursor, transfer)
            return
        except Retry:
            tally.add("Retry")
            await db.rollback()
        except CommitOutcomeUnknown as exc:
            tally.add("CommitOutcomeUnknown")
            with tally._lock:
                tally.unknown.append((transfer[0], str(exc)))
            await db.rollback()
            if await look_up(db, cursor, transfer[0]) == "committed":
                return
        except Exception:
            tally.error(f"transfer {transfer}")
            if len(tally.errors) > MAX_ERRORS:
                raise
            await db.rollback()  # if this raises too, the task ends


async def look_up(db, cursor, transfer_id):
    """After CommitOutcomeUnknown: once the server is back, look for the work."""
    deadline = time.monotonic() + JOIN_SECONDS
    while time.monotonic() < deadline:
        try:
            await cursor.execute(
                "SELECT count(*) FROM applied WHERE transfer_id = %s", (transfer_id,)
            )
            (count,) = await cursor.fetchone()
            await db.rollback()
            return "committed" if count else "aborted"
        except Retry:
            await db.rollback()
        await asyncio.sleep(0.01)
    raise TimeoutError(f"transfer {transfer_id} still unresolved")


async def teller(name, db, tally, enough):
    rng = random.Random(name)
    cursor = db.cursor()
    number = 0
    try:
        while not enough():
            number += 1
            src, dst = rng.sample(range(1, ACCOUNTS + 1), 2)
            transfer = (f"{name}-{number}", src, dst, rng.randint(1, 100))
            await apply(db, cursor, transfer, tally)
            tally.done(transfer[0])
    except Exception:
        tally.error(f"task {name} gave up")


def set_traps(proxy, tally, stop):
    """Keep cutting COMMITs, delivered or not, a few tens of ms apart."""
    rng = random.Random("traps")
    try:
        while not stop.is_set():
            cuts, deliver = proxy.commit_cuts, rng.random() < 0.5
            proxy.cut_on_commit(deliver=deliver)
            tally.add(f"commit traps set (deliver={deliver})")
            while proxy.commit_cuts == cuts and not stop.wait(0.001):
                pass
            stop.wait(rng.uniform(*TRAP_PAUSE))
    except Exception:
        tally.error("trap thread")
    finally:
        proxy.restore()  # disarm a trap that did not fire
        tally.add("commit traps fired", proxy.commit_cuts)


async def run_tellers(connections, tally, enough):
    tasks = [
        asyncio.create_task(teller(f"t{i}", db, tally, enough))
        for i, db in enumerate(connections)
    ]
    # As the sync soak: stuck only once nothing has committed for a while, so
    # that a loaded machine makes the soak longer, not red.
    committed, last_progress, stuck = -1, time.monotonic(), set()
    while True:
        _, running = await asyncio.wait(tasks, timeout=1.0)
        if not running:
            break
        if len(tally.completed) != committed:
            committed, last_progress = len(tally.completed), time.monotonic()
        elif time.monotonic() - last_progress > STALL_SECONDS:
            stuck = running
            break
    for task in stuck:
        task.cancel()
    await asyncio.wait(tasks)
    for db in connections:
        tally.add("disconnects", db.disconnects)
        tally.add("reconnects", db.reconnects)
        await db.close()
    return len(stuck)


def test_tasks_through_drops_cut_commits_and_restarts(
    ledger,  # noqa: F811
    log_counter,  # noqa: F811
    record_property,
):
    tally = Tally("async")
    threads_before, fds_before = threading.active_count(), open_fds()
    started = time.monotonic()
    proxy = PortForwardTestSetup()
    proxy.setUp()

    def factory():
        return psycopg.AsyncConnection.connect(
            PgTestSetup().dsn,
            host=proxy.host,
            port=proxy.port,
            connect_timeout=5,
            options=DURABLE,
        )

    connections = [
        AsyncReconnectingConnection(factory, resolve_commit=True, resolve_timeout=30.0)
        for _ in range(TASKS)
    ]
    faults = Faults(
        actions=None,
        interval=(0.1, 0.3),
        reset_share=0.2,
        restarts=RESTARTS,
    )
    tasks_done = threading.Event()
    fault_threads = [
        threading.Thread(
            target=inject, args=(faults, proxy, ledger, tally, tasks_done, "async")
        ),
        threading.Thread(target=set_traps, args=(proxy, tally, tasks_done)),
    ]

    def enough():
        restarts = sum(n for k, n in tally.counts.items() if k.startswith("restart"))
        return restarts == len(RESTARTS) and len(tally.completed) >= MINIMUM

    for thread in fault_threads:
        thread.start()
    try:
        stuck = asyncio.run(run_tellers(connections, tally, enough))
    finally:
        tasks_done.set()
        for thread in fault_threads:
            thread.join(JOIN_SECONDS)
    wall = time.monotonic() - started

    left = wind_down(proxy, ledger, tally, threads_before, fds_before)
    figures = left.pop("ledger")
    shown = {"Retry": 0, "CommitOutcomeUnknown": 0, **tally.counts}
    report(
        "soak async",
        {
            "tasks": TASKS,
            "transfers": len(tally.completed),
            **{key: shown[key] for key in sorted(shown)},
            **{k: v for k, v in figures.items() if k != "duplicate ids"},
            "raw driver errors": len(tally.errors),
            "confirmed commits (log)": log_counter[
                "Commit of transaction %s confirmed"
            ],
            "rolled-back commits (log)": log_counter[
                "Transaction %s was rolled back; retrying"
            ],
            "wall seconds": round(wall, 2),
        },
        figures,
        tally,
        record_property,
    )

    assert not stuck, f"deadlock: {stuck} tasks committed nothing for {STALL_SECONDS} s"
    assert not any(t.is_alive() for t in fault_threads), "a fault thread did not stop"
    assert_intact(figures, tally, left, threads_before, fds_before)
    assert figures["duplicates"] == 0, figures["duplicate ids"]
    assert len(tally.completed) >= MINIMUM
    assert tally.counts["commit traps fired"] >= 100
