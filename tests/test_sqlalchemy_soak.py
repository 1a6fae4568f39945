"""Soak: ORM units of work through the dialects, through outages.

The ledger of test_soak.py, mapped by the ORM (sqlalchemy_ledger.py): each
transfer reads and locks two accounts, updates both, inserts a row flushed
with ``RETURNING``, and commits, driven by ``attempts(session)``.  Through
a proxy that drops and resets connections every 100-300 ms and cuts about
3 % of the COMMITs (reply lost or COMMIT never delivered), and two server
restarts, fast then immediate.  Then through a failover: a primary and its
synchronous standby, both hosts in the URL, the primary crashed, the
standby promoted a moment later.

Afterwards: no transfer lost, none applied twice, nothing but
``CommitOutcomeUnknown`` reached the caller of ``attempts()`` (and each
across a restart), the total balance intact and every balance what the
``applied`` rows imply; for the proxied runs also no backend, proxied
connection, file descriptor or thread left over.  Under psycopg2 and
psycopg 3, and with ``AsyncSession``.  The figures are printed (``pytest
-s``) and recorded as the ``soak`` user property.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from sqlalchemy import URL, create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy_ledger import (
    async_teller,
    cut_commits,
    start,
    teller,
    thread,
)
from test_soak import (
    ACCOUNTS,
    DURABLE,
    JOIN_SECONDS,
    OPENING_BALANCE,
    Faults,
    Tally,
    assert_intact,
    audit,
    create_ledger,
    figures_of,
    inject,
    ledger,  # noqa: F401 (a fixture)
    log_counter,  # noqa: F401 (a fixture)
    open_fds,
    report,
    wait_for_workers,
    wind_down,
)

from reconnecting.testing import PortForwardTestSetup
from reconnecting.testing.cluster import Cluster
from reconnecting.testing.standby import make_standby

WORKERS = 4
TASKS = 10
MINIMUM = 1500
FAILOVER_MINIMUM = 600
RESTARTS = {15: "fast", 30: "immediate"}  # at these fault actions
CONNECT_ARGS = {"connect_timeout": 5, "options": DURABLE}


def faults():
    return Faults(actions=None, interval=(0.1, 0.3), reset_share=0.2, restarts=RESTARTS)


def restarts_done(tally):
    done = sum(n for key, n in tally.counts.items() if key.startswith("restart"))
    return done == len(RESTARTS)


def assert_only_unknowns_across_restarts(tally, figures):
    assert figures["duplicates"] == 0, figures["duplicate ids"]
    for transfer_id, text in tally.unknown:
        assert "restarted" in text or "another cluster" in text, (transfer_id, text)


def proxied_url(drivername, pg, proxy):
    return URL.create(
        drivername,
        username=pg.user,
        host=proxy.host,
        port=proxy.port,
        database=pg.dbname,
    )


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_sessions_through_drops_cut_commits_and_restarts(
    ledger,  # noqa: F811
    log_counter,  # noqa: F811
    record_property,
    driver,
):
    tally = Tally(f"sqlalchemy-{driver}")
    threads_before, fds_before = threading.active_count(), open_fds()
    started = time.monotonic()
    proxy = PortForwardTestSetup()
    proxy.setUp()
    url = proxied_url(f"postgresql+reconnecting_{driver}", ledger, proxy)
    engine = create_engine(
        url, connect_args=CONNECT_ARGS, resolve_timeout=30.0, pool_size=WORKERS
    )
    stop = threading.Event()

    def enough():
        return stop.is_set() or (
            restarts_done(tally) and len(tally.completed) >= MINIMUM
        )

    def make_session():
        return Session(engine)

    helpers = start(
        thread(inject, faults(), proxy, ledger, tally, stop, driver),
        thread(cut_commits, proxy, tally, stop, driver),
    )
    tellers = start(
        *(
            thread(teller, f"{driver}-w{i}", make_session, tally, enough)
            for i in range(WORKERS)
        )
    )
    stuck = wait_for_workers(tellers, tally)
    stop.set()
    for helper in helpers:
        helper.join(JOIN_SECONDS)
    wall = time.monotonic() - started
    assert not stuck, f"deadlock: {stuck}"
    engine.dispose()

    left = wind_down(proxy, ledger, tally, threads_before, fds_before)
    ledger_figures = left.pop("ledger")
    figures = figures_of(tally, ledger_figures, log_counter, wall, workers=WORKERS)
    report(f"soak sqlalchemy {driver}", figures, ledger_figures, tally, record_property)
    assert_intact(ledger_figures, tally, left, threads_before, fds_before)
    assert_only_unknowns_across_restarts(tally, ledger_figures)
    assert len(tally.completed) >= MINIMUM
    assert tally.counts["commit cuts fired"] >= MINIMUM * 0.01


def test_async_sessions_through_drops_cut_commits_and_restarts(
    ledger,  # noqa: F811
    log_counter,  # noqa: F811
    record_property,
):
    tally = Tally("sqlalchemy-async")
    threads_before, fds_before = threading.active_count(), open_fds()
    started = time.monotonic()
    proxy = PortForwardTestSetup()
    proxy.setUp()
    url = proxied_url("postgresql+reconnecting_psycopg_async", ledger, proxy)
    stop = threading.Event()

    def enough():
        return stop.is_set() or (
            restarts_done(tally) and len(tally.completed) >= MINIMUM
        )

    helpers = start(
        thread(inject, faults(), proxy, ledger, tally, stop, "async"),
        thread(cut_commits, proxy, tally, stop, "async"),
    )
    try:
        run_async_tellers(url, tally, enough, resolve_timeout=30.0)
    finally:
        stop.set()
        for helper in helpers:
            helper.join(JOIN_SECONDS)
    wall = time.monotonic() - started

    left = wind_down(proxy, ledger, tally, threads_before, fds_before)
    ledger_figures = left.pop("ledger")
    figures = figures_of(tally, ledger_figures, log_counter, wall, tasks=TASKS)
    report("soak sqlalchemy async", figures, ledger_figures, tally, record_property)
    assert_intact(ledger_figures, tally, left, threads_before, fds_before)
    assert_only_unknowns_across_restarts(tally, ledger_figures)
    assert len(tally.completed) >= MINIMUM
    assert tally.counts["commit cuts fired"] >= MINIMUM * 0.01


# -- failover ---------------------------------------------------------------------


def make_ledger(server):
    conn = server.admin_connect()
    try:
        create_ledger(conn.cursor())
    finally:
        conn.close()


def fail_over(primary, standby, tally, after, stop):
    """Crash the primary after ``after`` transfers; promote the standby
    half a second later."""
    try:
        while len(tally.completed) < after and not stop.wait(0.005):
            pass
        primary.stop("immediate")
        tally.add("primary crashed")
        stop.wait(0.5)  # the tellers meet the standby meanwhile
        standby.promote()
        tally.add("standby promoted")
    except Exception:
        tally.error("failover thread")


@pytest.fixture
def pair():
    primary = Cluster()
    primary.start()
    standby = make_standby(primary, synchronous=True)
    make_ledger(primary)
    standby.catch_up()
    yield primary, standby
    standby.destroy()
    primary.destroy()


@pytest.mark.parametrize(
    "driver",
    ["psycopg2", "psycopg", "psycopg_async"],
    ids=["psycopg2", "psycopg", "async"],
)
def test_sessions_through_a_failover(pair, log_counter, record_property, driver):  # noqa: F811
    primary, standby = pair
    tally = Tally(f"failover-{driver}")
    started = time.monotonic()
    url = URL.create(
        f"postgresql+reconnecting_{driver}",
        username="postgres",
        database="postgres",
        query={"host": [f"127.0.0.1:{primary.port}", f"127.0.0.1:{standby.port}"]},
    )
    stop = threading.Event()

    def enough():
        promoted = tally.counts["standby promoted"] > 0
        return stop.is_set() or (promoted and len(tally.completed) >= FAILOVER_MINIMUM)

    helper = start(
        thread(fail_over, primary, standby, tally, FAILOVER_MINIMUM // 3, stop)
    )[0]
    try:
        if driver == "psycopg_async":
            run_async_tellers(url, tally, enough)
        else:
            run_tellers(url, tally, enough)
    finally:
        stop.set()
        helper.join(JOIN_SECONDS)
    wall = time.monotonic() - started

    check = standby.admin_connect()
    try:
        ledger_figures = audit(check, tally)
    finally:
        check.close()
    figures = figures_of(tally, ledger_figures, log_counter, wall)
    report(f"soak failover {driver}", figures, ledger_figures, tally, record_property)
    assert not tally.errors, "\n".join(tally.errors)
    assert ledger_figures["lost"] == 0, ledger_figures
    assert ledger_figures["phantoms"] == 0, ledger_figures
    assert ledger_figures["total balance"] == ACCOUNTS * OPENING_BALANCE
    assert ledger_figures["inconsistent accounts"] == 0, ledger_figures
    assert_only_unknowns_across_restarts(tally, ledger_figures)
    assert len(tally.completed) >= FAILOVER_MINIMUM


def run_tellers(url, tally, enough):
    engine = create_engine(url, connect_args=CONNECT_ARGS, pool_size=WORKERS)
    tellers = start(
        *(
            thread(teller, f"f{i}", lambda: Session(engine), tally, enough)
            for i in range(WORKERS)
        )
    )
    stuck = wait_for_workers(tellers, tally)
    engine.dispose()
    assert not stuck, f"deadlock: {stuck}"


def run_async_tellers(url, tally, enough, **engine_args):
    async def run():
        engine = create_async_engine(
            url, connect_args=CONNECT_ARGS, pool_size=TASKS, **engine_args
        )
        try:
            await asyncio.gather(
                *(
                    async_teller(f"a{i}", lambda: AsyncSession(engine), tally, enough)
                    for i in range(TASKS)
                )
            )
        finally:
            await engine.dispose()

    asyncio.run(run())
