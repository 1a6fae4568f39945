"""A ledger workload through a real failover, and through PgBouncer's faults.

One writer applies 600 transfers, each with a reference of its own, one
transaction each, through a ``ReconnectingConnection`` with
``resolve_commit=True``, as a careful caller does: on ``Retry`` it rolls
back and does the transfer again; on ``CommitOutcomeUnknown`` it rolls
back and looks for the transfer before doing it again.  The ledger has no
unique constraint, so a transfer applied twice shows as two rows.

* Failover: a synchronous streaming standby follows the primary; after a
  third of the transfers the primary crashes (``stop('immediate')``) and the
  standby is promoted one second later.  With and without
  ``target_session_attrs=read-write`` in the two-host connection string.
* PgBouncer in transaction mode in front of the test server: ``KILL`` (and
  ``RESUME`` a moment later), ``RECONNECT``, a fast and an immediate server
  restart, and a PgBouncer restart, spread over the run.

Afterwards: no driver exception escaped the wrapper, every acknowledged
transfer is in the ledger, none twice.  The figures are printed (``pytest
-s``) and recorded as the ``soak`` user property of the test report.  The
driver is the one ``RECONNECTING_TEST_DRIVER`` names, as for the pages.
"""

from __future__ import annotations

import collections
import importlib
import logging
import os
import threading
import time

import pytest

from reconnecting import CommitOutcomeUnknown, ReconnectingConnection, Retry
from reconnecting.testing import wait_until
from reconnecting.testing.cluster import Cluster
from reconnecting.testing.pgbouncer import PgBouncer, pgbouncer_unavailable
from reconnecting.testing.standby import make_standby

DRIVER = os.environ.get("RECONNECTING_TEST_DRIVER", "psycopg2")
driver = importlib.import_module(DRIVER)
TRANSFERS = 600
BACKOFF = 0.01  # seconds between tries while there is no server
JOIN_SECONDS = 120.0  # a deadlock detector, not a performance limit


class Writer:
    """Applies the transfers; counts what it meets."""

    def __init__(self, db):
        self.db = db
        self.cursor = db.cursor()
        self.acknowledged = []
        self.counts = collections.Counter()
        self.raw_errors = []

    def run(self):
        for ref in range(1, TRANSFERS + 1):
            self.apply(ref)

    def apply(self, ref):
        maybe_done = False
        while True:
            try:
                if maybe_done and self.recorded(ref):
                    break
                self.cursor.execute("INSERT INTO ledger VALUES (%s, 10)", (ref,))
                self.db.commit()
                break
            except Retry:
                self.counts["Retry"] += 1
                self.db.rollback()
                time.sleep(BACKOFF)
            except CommitOutcomeUnknown:
                self.counts["CommitOutcomeUnknown"] += 1
                self.db.rollback()
                maybe_done = True
            except Exception as exc:
                self.raw_errors.append(f"{type(exc).__name__}: {exc}")
                if len(self.raw_errors) > 20:
                    raise
                self.db.rollback()
                time.sleep(BACKOFF)
        self.acknowledged.append(ref)

    def recorded(self, ref):
        self.cursor.execute("SELECT count(*) FROM ledger WHERE ref = %s", (ref,))
        found = self.cursor.fetchone()[0]
        self.db.rollback()
        return found > 0


def run_workload(db, faults, check):
    """Run the writer with *faults* in a thread; check the ledger with *check*
    (a driver connection factory); return the figures."""
    writer = Writer(db)
    fault_thread = threading.Thread(target=faults, args=(writer,))
    started = time.monotonic()
    fault_thread.start()
    writer.run()
    elapsed = time.monotonic() - started
    fault_thread.join(JOIN_SECONDS)
    conn = check()
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT ref, count(*) FROM ledger GROUP BY ref")
        rows = dict(cursor.fetchall())
    finally:
        conn.close()
    db.close()
    return {
        "transfers": len(writer.acknowledged),
        "lost": sum(1 for ref in writer.acknowledged if ref not in rows),
        "duplicated": sum(1 for count in rows.values() if count > 1),
        "raw errors": len(writer.raw_errors),
        "Retry": writer.counts["Retry"],
        "CommitOutcomeUnknown": writer.counts["CommitOutcomeUnknown"],
        "seconds": round(elapsed, 2),
        "first raw errors": writer.raw_errors[:3],
    }


def report(request, name, figures):
    line = f"{name} ({DRIVER}): " + ", ".join(f"{k} {v}" for k, v in figures.items())
    print(line)
    request.node.user_properties.append(("soak", line))
    assert figures["raw errors"] == 0, figures
    assert figures["lost"] == 0, figures
    assert figures["duplicated"] == 0, figures
    assert figures["transfers"] == TRANSFERS


def after(writer, count):
    wait_until(lambda: len(writer.acknowledged) >= count, JOIN_SECONDS)


@pytest.fixture
def quiet():
    logger = logging.getLogger("reconnecting")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # the outages are the point
    yield
    logger.setLevel(level)


@pytest.mark.parametrize("target_session_attrs", [True, False])
def test_failover_to_a_promoted_standby(request, quiet, target_session_attrs):
    primary = Cluster()
    servers = [primary]
    try:
        primary.start()
        primary._execute("CREATE TABLE ledger (ref int, amount int)")
        standby = make_standby(primary, synchronous=True)
        servers.append(standby)
        dsn = (
            f"host=127.0.0.1,127.0.0.1 port={primary.port},{standby.port}"
            f" dbname=postgres user=postgres password={primary.password}"
        )
        if target_session_attrs:
            dsn += " target_session_attrs=read-write"

        def faults(writer):
            after(writer, TRANSFERS // 3)
            primary.stop("immediate")
            time.sleep(1.0)  # the outage: promoted one second later
            standby.promote()

        db = ReconnectingConnection(lambda: driver.connect(dsn), resolve_commit=True)
        figures = run_workload(db, faults, lambda: driver.connect(standby.dsn()))
        name = "failover " + ("with" if target_session_attrs else "without")
        report(request, f"{name} target_session_attrs", figures)
    finally:
        for server in reversed(servers):
            server.destroy()


@pytest.mark.skipif(pgbouncer_unavailable() is not None, reason="needs PgBouncer")
def test_pgbouncer_faults(request, quiet, pg):
    pg.server._execute("CREATE TABLE ledger (ref int, amount int)", dbname=pg.dbname)
    settings = {"server_login_retry": 1, "query_wait_timeout": 10}
    bouncer = PgBouncer(pool_mode="transaction", settings=settings)
    bouncer.start()
    try:
        options = {"prepare_threshold": None} if DRIVER == "psycopg" else {}

        def kill_and_resume():
            bouncer.kill(pg.dbname)
            time.sleep(0.2)  # the outage: held until RESUME
            bouncer.resume(pg.dbname)

        steps = [
            kill_and_resume,
            lambda: bouncer.reconnect(pg.dbname),
            lambda: pg.restart("fast"),
            lambda: pg.restart("immediate"),
            bouncer.restart,
        ]

        def faults(writer):
            for n, step in enumerate(steps, 1):
                after(writer, n * TRANSFERS // (len(steps) + 1))
                step()

        def connect():
            return driver.connect(bouncer.dsn(pg.dbname), **options)

        db = ReconnectingConnection(connect, resolve_commit=True)
        figures = run_workload(db, faults, lambda: driver.connect(pg.dsn))
        report(request, "PgBouncer transaction mode", figures)
    finally:
        bouncer.close()
