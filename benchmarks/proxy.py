"""What does the fault-injecting proxy cost per round trip?

Runs ``execute('SELECT 1'); fetchone()`` on two psycopg2 connections to the
same throwaway test server, both over TCP on 127.0.0.1: one straight to the
server, one through ``PortForwardTestSetup``.  Short blocks of each
alternate, so both see the same machine; prints the median time per round
trip of each and the median of the per-pair ratios.

    python benchmarks/proxy.py [pairs]

Target: proxy / direct at most 1.6.  The proxy adds two loopback hops and a
Python selector loop per round trip, so on a small VM the figure depends on
which CPUs the proxy thread, the client and the backend land on.
"""

import statistics
import sys
import time

from reconnecting.testing import PgTestSetup, PortForwardTestSetup

BLOCK = 100  # round trips per block


def round_trips(cursor, count=BLOCK):
    started = time.perf_counter()
    for _ in range(count):
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return time.perf_counter() - started


def main(pairs=300):
    pg = PgTestSetup()
    pg.setUp()
    proxy = PortForwardTestSetup()
    proxy.setUp()
    try:
        direct_conn = pg.connect()  # TCP to 127.0.0.1, the server's port
        proxied_conn = pg.connect(host=proxy.host, port=proxy.port)
        direct, proxied = direct_conn.cursor(), proxied_conn.cursor()
        round_trips(direct), round_trips(proxied)  # warm up
        ratios, direct_times, proxied_times = [], [], []
        for pair in range(pairs):
            if pair % 2:
                d, p = round_trips(direct), round_trips(proxied)
            else:
                p, d = round_trips(proxied), round_trips(direct)
            ratios.append(p / d)
            direct_times.append(d / BLOCK)
            proxied_times.append(p / BLOCK)
        direct_conn.close()
        proxied_conn.close()
    finally:
        proxy.tearDown()
        pg.tearDown()
    print(f"direct TCP: median {statistics.median(direct_times) * 1e6:.1f} us")
    print(f"via proxy:  median {statistics.median(proxied_times) * 1e6:.1f} us")
    print(
        f"proxy / direct: median ratio {statistics.median(ratios):.2f}"
        f" over {pairs} pairs of {BLOCK} round trips (target <= 1.6)"
    )


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:]))
