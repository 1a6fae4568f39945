"""What does the asyncio wrapper cost per round trip?

Runs ``await cur.execute('SELECT 1'); await cur.fetchone()`` through an
AsyncReconnectingConnection and straight through psycopg 3's
AsyncConnection, on the same server connection, over the unix socket of the
throwaway test server, in one event loop.  Short blocks of each alternate,
each going first every other time, so both see the same machine; the
median of the per-pair ratios is printed, and the ratio of the fastest
blocks, which a busy machine (other processes taking the cores) disturbs
less: the wrapper's own cost shows in both.

    python benchmarks/overhead_async.py [pairs]

Target: a ratio of at most 1.03.
"""

import asyncio
import statistics
import sys
import time

import psycopg
from _common import BLOCK, test_database

from reconnecting import AsyncReconnectingConnection


async def round_trips(cursor, count=BLOCK):
    """Time ``count`` round trips (``SELECT 1`` and its row), in seconds."""
    started = time.perf_counter()
    for _ in range(count):
        await cursor.execute("SELECT 1")
        await cursor.fetchone()
    return time.perf_counter() - started


async def alternating_blocks(first, second, pairs):
    await round_trips(first), await round_trips(second)  # warm up
    times = []
    for pair in range(pairs):
        if pair % 2:
            a, b = await round_trips(first), await round_trips(second)
        else:
            b, a = await round_trips(second), await round_trips(first)
        times.append((a, b))
    return times


async def measure(pg, pairs):
    socket_dir = getattr(pg.server, "socket_dir", None)
    options = {"host": socket_dir} if socket_dir else {}
    raw = await psycopg.AsyncConnection.connect(pg.dsn, **options)

    async def same_connection():
        return raw

    # The same server connection for both: only the wrapper differs.
    wrapped = AsyncReconnectingConnection(same_connection).cursor()
    direct = raw.cursor()
    try:
        return await alternating_blocks(direct, wrapped, pairs)
    finally:
        await raw.close()


def main(pairs=400):
    with test_database() as pg:
        times = asyncio.run(measure(pg, pairs))
    ratios = [w / d for d, w in times]
    direct_times = [d / BLOCK for d, _ in times]
    print(
        "psycopg AsyncConnection direct: median"
        f" {statistics.median(direct_times) * 1e6:.1f} us per round trip"
    )
    best = min(w for _, w in times) / min(d for d, _ in times)
    print(
        f"async wrapper / direct: median ratio {statistics.median(ratios):.3f}"
        f" over {pairs} pairs of {BLOCK} round trips (target <= 1.03);"
        f" fastest blocks {best:.3f}"
    )


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:]))
