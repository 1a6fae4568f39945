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

from _common import BLOCK, alternating_blocks, connect_over_unix_socket, test_database

from reconnecting import ReconnectingConnection


def main(pairs=400):
    with test_database() as pg:
        raw = connect_over_unix_socket(pg)
        # The same server connection for both: only the wrapper differs.
        wrapped = ReconnectingConnection(lambda: raw).cursor()
        direct = raw.cursor()
        times = alternating_blocks(direct, wrapped, pairs)
        raw.close()
    ratios = [w / d for d, w in times]
    direct_times = [d / BLOCK for d, _ in times]
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
