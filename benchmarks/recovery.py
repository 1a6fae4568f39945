"""How long from the end of an outage until work goes on?

Measures, on a ReconnectingConnection, the time from the end of an outage
to the first row of ``SELECT 1`` after the caller's ``rollback()``: the
call that finds the connection gone (and raises ``Retry``), ``rollback()``,
the reconnect through the factory, and the query.  Two outages:

* the proxy goes down and comes back (``tearDown()``, ``setUp()``): the
  clock starts when ``setUp()`` returns;
* the server restarts (``restart('fast')``): the clock starts when it
  returns, that is when the server accepts connections again.

Each is compared with a plain ``psycopg2.connect()`` over the same path
plus the first row of ``SELECT 1``, made right after an outage of the same
kind (a freshly restarted server serves its first connections more
slowly), measured in the same round; rounds alternate which goes first.
Prints medians, the median ratio, and for reference the plain connect on
a server that has been up for a while.

    python benchmarks/recovery.py [rounds]

Target: recovery / plain connect at most 1.2.
"""

import logging
import statistics
import sys
import time

from _common import test_database

from reconnecting import ReconnectingConnection, Retry
from reconnecting.testing import PortForwardTestSetup


def first_row(cursor):
    cursor.execute("SELECT 1")
    return cursor.fetchone()


def plain(connect, outage=None):
    """Time a new connection and its first row, made right after ``outage``."""
    if outage is not None:
        outage()
    started = time.perf_counter()
    conn = connect()
    first_row(conn.cursor())
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def recover(db, cursor, outage):
    """Break the connection with ``outage``; time from its end to a row."""
    try:  # connected beforehand (the last outage may have broken it)
        first_row(cursor)
    except Retry:
        db.rollback()
        first_row(cursor)
    db.commit()
    outage()
    started = time.perf_counter()
    try:
        first_row(cursor)
    except Retry:
        db.rollback()
        first_row(cursor)
    else:
        raise AssertionError("the outage went unnoticed")
    elapsed = time.perf_counter() - started
    db.rollback()
    return elapsed


def measure(label, connect, outage, rounds):
    db = ReconnectingConnection(connect)
    cursor = db.cursor()
    plain(connect), recover(db, cursor, outage)  # warm up
    ratios, plains, warm, recoveries = [], [], [], []
    for round_ in range(rounds):
        if round_ % 2:
            p, r = plain(connect, outage), recover(db, cursor, outage)
        else:
            r, p = recover(db, cursor, outage), plain(connect, outage)
        warm.append(plain(connect))
        plains.append(p)
        recoveries.append(r)
        ratios.append(r / p)
    db.close()
    print(f"{label}:")
    median_warm = statistics.median(warm) * 1e3
    median_plain = statistics.median(plains) * 1e3
    print(f"  plain connect + first row, server up a while: {median_warm:.2f} ms")
    print(
        f"  plain connect + first row, after the outage: median {median_plain:.2f} ms"
    )
    print(
        f"  end of outage to first row after rollback():"
        f" median {statistics.median(recoveries) * 1e3:.2f} ms"
    )
    print(
        f"  recovery / plain connect: median ratio {statistics.median(ratios):.2f}"
        f" over {rounds} rounds (target <= 1.2)"
    )


def main(rounds=100):
    logging.getLogger("reconnecting").setLevel(logging.ERROR)  # outages are the point
    with test_database() as pg, PortForwardTestSetup() as proxy:

        def bounce_proxy():
            proxy.tearDown()
            proxy.setUp()

        measure(
            "proxy down and up again (TCP through the proxy)",
            lambda: pg.connect(host=proxy.host, port=proxy.port),
            bounce_proxy,
            rounds,
        )
        measure(
            "server restart('fast') (TCP straight to the server)",
            pg.connect,
            lambda: pg.restart("fast"),
            max(rounds // 4, 5),
        )


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:]))
