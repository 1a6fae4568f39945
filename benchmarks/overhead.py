"""What does the wrapper cost per round trip?

Runs ``execute('SELECT 1'); fetchone()`` through a ReconnectingConnection
and straight through psycopg2, on the same server connection, over the unix
socket of the throwaway test server.  Short blocks of each alternate, so both
see the same machine; the median of the per-pair ratios is printed.

    python benchmarks/overhead.py [pairs]

Target: a ratio of at most 1.03.
"""

import statistics
import sys
import time

import psycopg2

from reconnecting import ReconnectingConnection
from reconnecting.testing import PgTestSetup

BLOCK = 100  # round trips per block


def round_trips(cursor, count=BLOCK):
    started = time.perf_counter()
    for _ in range(count):
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return time.perf_counter() - started


def main(pairs=400):
    pg = PgTestSetup()
    pg.setUp()
    try:
        socket_dir = getattr(pg.server, "socket_dir", None)
        if socket_dir:
            raw = psycopg2.connect(
                host=socket_dir, port=pg.port, dbname=pg.dbname, user=pg.user
            )
        else:
            raw = pg.connect()
        # The same server connection for both: only the wrapper differs.
        wrapped = ReconnectingConnection(lambda: raw).cursor()
        direct = raw.cursor()
        round_trips(direct), round_trips(wrapped)  # warm up
        ratios, direct_times = [], []
        for pair in range(pairs):
            if pair % 2:
                d, w = round_trips(direct), round_trips(wrapped)
            else:
                w, d = round_trips(wrapped), round_trips(direct)
            ratios.append(w / d)
            direct_times.append(d / BLOCK)
        raw.close()
    finally:
        pg.tearDown()
    print(
        f"psycopg2 direct: median {statistics.median(direct_times) * 1e6:.1f} us"
        " per round trip"
    )
    print(
        f"wrapper / direct: median ratio {statistics.median(ratios):.3f}"
        f" over {pairs} pairs of {BLOCK} round trips (target <= 1.03)"
    )


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:]))
