"""How many instructions does each cursor add per round trip?

Timings of a fraction of a microsecond drift with whatever else the
machine runs. Valgrind's callgrind counts the instructions the client
process executes, which no other process changes. For each of three
cursors on one server connection (the driver's own, a two-method
pass-through and ours) this runs ``execute('SELECT 1'); fetchone()``
``N`` and ``5 N`` times, each in a process of its own, and divides the
difference by ``4 N``, so start-up cancels out.

Each figure is the median over several string hash seeds: where names
collide in CPython's type attribute cache (one table of 4,096 entries for
all classes) depends on the seed, and moves the counts by hundreds of
instructions per round trip, as much as a wrapper adds.

    python benchmarks/instructions.py [N] [--driver psycopg2|psycopg|asyncio]
        [--seeds 5]

Needs valgrind. Target: ours adds at most 1.5 times what the pass-through
adds.
"""

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from _common import PassThrough, test_database

KINDS = ("driver", "pass-through", "ours")


def round_trips(kind, driver_name, count):
    """The child: ``count`` round trips (after a warm-up) on one cursor."""
    dsn, host = os.environ["BENCH_DSN"], os.environ["BENCH_SOCKET_DIR"]
    if driver_name == "asyncio":
        return asyncio.run(async_round_trips(kind, dsn, host, count))
    driver = __import__(driver_name)
    from reconnecting import ReconnectingConnection

    raw = driver.connect(dsn, host=host)
    if kind == "driver":
        cursor = raw.cursor()
    elif kind == "pass-through":
        cursor = PassThrough(raw.cursor())
    else:
        cursor = ReconnectingConnection(lambda: raw).cursor()
    for _ in range(50 + count):
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def async_round_trips(kind, dsn, host, count):
    import psycopg
    from overhead_async import AsyncPassThrough

    from reconnecting import AsyncReconnectingConnection

    raw = await psycopg.AsyncConnection.connect(dsn, host=host)

    async def same_connection():
        return raw

    if kind == "driver":
        cursor = raw.cursor()
    elif kind == "pass-through":
        cursor = AsyncPassThrough(raw.cursor())
    else:
        cursor = AsyncReconnectingConnection(same_connection).cursor()
    for _ in range(50 + count):
        await cursor.execute("SELECT 1")
        await cursor.fetchone()


def instructions(env, kind, driver_name, count, seed):
    """What callgrind counts in a child making ``count`` round trips."""
    args = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    args += [sys.executable, __file__, "--child", kind, driver_name, str(count)]
    env = dict(env, PYTHONHASHSEED=str(seed))
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return int(re.search(r"Collected : (\d+)", done.stderr).group(1))


def main():
    if sys.argv[1:2] == ["--child"]:
        kind, driver_name, count = sys.argv[2:5]
        return round_trips(kind, driver_name, int(count))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, nargs="?", default=500)
    parser.add_argument("--driver", choices=("psycopg2", "psycopg", "asyncio"))
    parser.add_argument("--seeds", type=int, default=5, help="hash seeds 0, 1, ...")
    options = parser.parse_args()
    seeds = range(options.seeds)
    drivers = [options.driver] if options.driver else ["psycopg2", "psycopg", "asyncio"]
    n = options.count
    with test_database() as pg:
        socket_dir = getattr(pg.server, "socket_dir", None)
        if socket_dir is None:
            sys.exit("instructions.py needs the throwaway server's unix socket")
        env = dict(os.environ, BENCH_DSN=pg.dsn, BENCH_SOCKET_DIR=socket_dir)
        jobs = [
            (kind, driver_name, count, seed)
            for driver_name in drivers
            for seed in seeds
            for kind in KINDS
            for count in (n, 5 * n)
        ]
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            counts = dict(
                zip(
                    jobs,
                    pool.map(lambda job: instructions(env, *job), jobs),
                    strict=True,
                )
            )
    for driver_name in drivers:
        added = {"pass-through": [], "ours": []}
        for seed in seeds:
            per = {
                kind: (
                    counts[kind, driver_name, 5 * n, seed]
                    - counts[kind, driver_name, n, seed]
                )
                / (4 * n)
                for kind in KINDS
            }
            for kind in added:
                added[kind].append(per[kind] - per["driver"])
        passing, ours = (statistics.median(added[k]) for k in ("pass-through", "ours"))
        print(
            f"{driver_name:>8}: the driver runs {per['driver']:,.0f} instructions per"
            f" round trip; the pass-through adds {passing:,.0f}, ours adds"
            f" {ours:,.0f}: {ours / passing:.2f} times as much (target <= 1.5);"
            f" medians over hash seeds 0 to {seeds[-1]} (pass-through"
            f" {', '.join(f'{a:,.0f}' for a in added['pass-through'])};"
            f" ours {', '.join(f'{a:,.0f}' for a in added['ours'])})"
        )


if __name__ == "__main__":
    main()
