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

from _common import BLOCK, alternating_blocks, test_database

from reconnecting.testing import PortForwardTestSetup


def main(pairs=300):
    with test_database() as pg, PortForwardTestSetup() as proxy:
        direct_conn = pg.connect()  # TCP to 127.0.0.1, the server's port
        proxied_conn = pg.connect(host=proxy.host, port=proxy.port)
        direct, proxied = direct_conn.cursor(), proxied_conn.cursor()
        times = alternating_blocks(direct, proxied, pairs)
        direct_conn.close()
        proxied_conn.close()
    ratios = [p / d for d, p in times]
    direct_times = [d / BLOCK for d, _ in times]
    proxied_times = [p / BLOCK for _, p in times]
    print(f"direct TCP: median {statistics.median(direct_times) * 1e6:.1f} us")
    print(f"via proxy:  median {statistics.median(proxied_times) * 1e6:.1f} us")
    print(
        f"proxy / direct: median ratio {statistics.median(ratios):.2f}"
        f" over {pairs} pairs of {BLOCK} round trips (target <= 1.6)"
    )


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:]))
