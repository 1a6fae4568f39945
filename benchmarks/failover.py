"""How long after a standby's promotion does work go on?

Each round makes a real failover: a streaming standby follows the primary,
the primary crashes (``stop('immediate')``), and the standby is promoted
(``promote()`` returns once it takes writes).  From that moment, two
clients commit one transaction each, side by side in two threads started
together, so that both meet the new primary in the same state (the first
moments after a promotion are the slowest, and vary):

* a ``ReconnectingConnection`` that was connected to the old primary: its
  first attempt raises ``Retry``, it rolls back, reconnects and commits;
* a fresh ``connect()`` and the same transaction.

Both use the same connection string, naming the old primary first and the
standby second, with ``target_session_attrs=read-write``.  The promoted
server then gets a standby of its own for the next round.  Prints medians
and the median ratio, per driver.

    python benchmarks/failover.py [rounds]

Target: reconnecting / fresh connect at most 1.2.
"""

import functools
import importlib
import logging
import statistics
import sys
import threading
import time

from reconnecting import ReconnectingConnection, Retry
from reconnecting.testing.cluster import Cluster
from reconnecting.testing.standby import make_standby

DRIVERS = ("psycopg2", "psycopg")


def dsn(primary, standby):
    return (
        f"host=127.0.0.1,127.0.0.1 port={primary.port},{standby.port}"
        " dbname=postgres user=postgres target_session_attrs=read-write"
        f" password={primary.password}"
    )


def transfer(conn):
    cursor = conn.cursor()
    cursor.execute("INSERT INTO transfer (amount) VALUES (1)")
    conn.commit()


def fresh(connect):
    """Time a new connection and one committed transaction."""
    started = time.perf_counter()
    conn = connect()
    transfer(conn)
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def reconnecting(db):
    """Time the first committed transaction of a connection whose server died."""
    started = time.perf_counter()
    try:
        transfer(db)
    except Retry:
        db.rollback()
        transfer(db)
    else:
        raise AssertionError("the failover went unnoticed")
    return time.perf_counter() - started


def side_by_side(*timed):
    """Run the *timed* functions in threads started together; their results."""
    results = [None] * len(timed)
    start = threading.Barrier(len(timed))

    def run(index):
        start.wait()
        results[index] = timed[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(timed))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def measure(driver_name, rounds):
    driver = importlib.import_module(driver_name)
    primary = Cluster()
    primary.start()
    primary._execute("CREATE TABLE transfer (id serial PRIMARY KEY, amount int)")
    standby = make_standby(primary)
    ratios, fresh_times, reconnecting_times = [], [], []
    try:
        for round_ in range(rounds + 1):  # the first is a warm-up
            connect = functools.partial(driver.connect, dsn(primary, standby))
            db = ReconnectingConnection(connect)
            transfer(db)  # connected to the primary
            primary.stop("immediate")
            standby.promote()
            timed = (
                functools.partial(reconnecting, db),
                functools.partial(fresh, connect),
            )
            r, f = side_by_side(*timed)
            db.close()
            if round_:
                fresh_times.append(f)
                reconnecting_times.append(r)
                ratios.append(r / f)
            primary.destroy()
            primary, standby = standby, make_standby(standby)
    finally:
        standby.destroy()
        primary.destroy()
    print(f"{driver_name}:")
    print(
        "  promotion to first commit, fresh connect():"
        f" median {statistics.median(fresh_times) * 1e3:.2f} ms"
    )
    print(
        "  promotion to first commit, ReconnectingConnection (Retry, rollback,"
        f" reconnect): median {statistics.median(reconnecting_times) * 1e3:.2f} ms"
    )
    print(
        f"  reconnecting / fresh connect: median ratio {statistics.median(ratios):.2f}"
        f" over {rounds} failovers (target <= 1.2)"
    )


def main(rounds=20):
    logging.getLogger("reconnecting").setLevel(logging.ERROR)  # outages are the point
    for driver_name in DRIVERS:
        measure(driver_name, rounds)


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:]))
