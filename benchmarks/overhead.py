"""What does the wrapper cost per round trip?

For each driver, runs ``execute('SELECT 1'); fetchone()`` through a
ReconnectingConnection and straight through the driver, on the same server
connection: over the unix socket of the throwaway test server (the fastest
round trip, so the largest ratio), then over loopback TCP.  Short blocks of
each alternate, so both see the same machine; the median of the per-pair
ratios is printed, one line per driver and transport.

    python benchmarks/overhead.py [pairs] [--driver psycopg2|psycopg]

Target: a ratio of at most 1.03 with each driver.
"""

import statistics

from _common import (
    BLOCK,
    alternating_blocks,
    connect_over_unix_socket,
    driver_arguments,
    test_database,
)

from reconnecting import ReconnectingConnection


def measure(pg, driver, pairs, transport):
    if transport == "unix socket":
        raw = connect_over_unix_socket(pg, driver)
    else:
        raw = pg.connect() if driver.__name__ == "psycopg2" else driver.connect(pg.dsn)
    try:
        # The same server connection for both: only the wrapper differs.
        wrapped = ReconnectingConnection(lambda: raw).cursor()
        times = alternating_blocks(raw.cursor(), wrapped, pairs)
    finally:
        raw.close()
    ratios = [w / d for d, w in times]
    direct = statistics.median(d / BLOCK for d, _ in times)
    added = statistics.median((w - d) / BLOCK for d, w in times)
    print(
        f"{driver.__name__:>8}, {transport:>12}:"
        f" direct median {direct * 1e6:.1f} us per round trip,"
        f" the wrapper adds {added * 1e6:.2f} us;"
        f" wrapper / direct: median ratio {statistics.median(ratios):.3f}"
        f" over {pairs} pairs of {BLOCK} round trips (target <= 1.03)"
    )


def main():
    pairs, drivers = driver_arguments(__doc__.splitlines()[0], "pairs", 400)
    with test_database() as pg:
        for driver in drivers:
            for transport in ("unix socket", "TCP"):
                measure(pg, driver, pairs, transport)


if __name__ == "__main__":
    main()
