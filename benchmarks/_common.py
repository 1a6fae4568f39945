"""What the benchmarks share: the test database, and timing round trips."""

import argparse
import contextlib
import importlib
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time
import types


def _shift_memory_layout():
    """Shift where the objects made from now on lie in memory, by a random
    amount per allocation size (seeded by ``BENCH_LAYOUT_SEED``).

    Where code and objects lie decides part of their cost (cache sets,
    addresses 4 KiB apart), and it is the same in every process that
    imports the same files in the same order.  Each measuring process
    shifts it differently before the package is imported, so the median
    over processes is over layouts, not one layout many times.
    """
    seed = os.environ.get("BENCH_LAYOUT_SEED")
    if seed is None:
        return []
    rng = random.Random(int(seed))
    kept = []
    for size in range(0, 512, 8):  # CPython's small-object size classes
        kept += [bytes(max(size - 33, 0)) for _ in range(rng.randrange(64))]
    kept += [bytes(rng.randrange(512, 65536)) for _ in range(rng.randrange(1, 16))]
    return kept


_LAYOUT_SHIFT = _shift_memory_layout()

from reconnecting.testing import PgTestSetup  # noqa: E402 (after the shift)

BLOCK = 100  # round trips, or transactions, per timed block


@contextlib.contextmanager
def test_database():
    """Yield a ``PgTestSetup`` with a fresh test database; drop it after."""
    pg = PgTestSetup()
    pg.setUp()
    try:
        yield pg
    finally:
        pg.tearDown()


DRIVERS = ("psycopg2", "psycopg")


def driver_arguments(description, count_name, count_default, processes=None):
    """Parse ``[count] [--driver psycopg2|psycopg]`` (and ``[--processes
    N]`` when a default is given); return the count and the driver modules
    to measure (both unless one is named), and the processes if asked."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(count_name, type=int, nargs="?", default=count_default)
    parser.add_argument("--driver", choices=DRIVERS, help="default: both, in turn")
    if processes is not None:
        parser.add_argument("--processes", type=int, default=processes)
    args = parser.parse_args()
    names = [args.driver] if args.driver else DRIVERS
    found = getattr(args, count_name), [importlib.import_module(n) for n in names]
    return found if processes is None else (*found, args.processes)


def in_processes(script, child_args, pg, processes):
    """Run ``script --child *child_args`` in ``processes`` processes, each
    with its own string hash seed and memory layout (1, 2, ...); return what
    each printed, as JSON.  The server is named in the environment, its
    password with it."""
    socket_dir = getattr(pg.server, "socket_dir", None) or ""
    env = dict(os.environ, BENCH_DSN=pg.dsn, BENCH_SOCKET_DIR=socket_dir)
    runs = []
    for seed in range(processes):
        env["PYTHONHASHSEED"] = env["BENCH_LAYOUT_SEED"] = str(seed + 1)
        args = [sys.executable, script, "--child", *map(str, child_args)]
        out = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout))
    return runs


def connect_over_unix_socket(pg, driver):
    """A connection of ``driver`` to the test database over the throwaway
    cluster's unix socket; over what ``pg.connect()`` uses on another server."""
    socket_dir = getattr(pg.server, "socket_dir", None)
    where = {"host": socket_dir} if socket_dir else {}
    if driver.__name__ == "psycopg2":
        return pg.connect(**where)  # with the password of an existing server
    return driver.connect(pg.dsn, **where)


def round_trips(cursor, count=BLOCK):
    """Time ``count`` round trips (``SELECT 1`` and its row), in seconds."""
    started = time.perf_counter()
    for _ in range(count):
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return time.perf_counter() - started


def alternating_blocks(first, second, pairs):
    """Time blocks of round trips on two cursors in turn, each going first
    every other time, after a warm-up; return the seconds of each pair."""
    round_trips(first), round_trips(second)  # warm up
    times = []
    for pair in range(pairs):
        if pair % 2:
            a, b = round_trips(first), round_trips(second)
        else:
            b, a = round_trips(second), round_trips(first)
        times.append((a, b))
    return times


class PassThrough:
    """The least a cursor wrapper can be: two methods passing the call on."""

    def __init__(self, cursor):
        self.cursor = cursor

    def execute(self, query, params=None):
        return self.cursor.execute(query, params)

    def fetchone(self):
        return self.cursor.fetchone()


def rotation(count, rounds):
    """The order of the round trips: one per cursor and round, the rounds
    going through every order of the cursors in turn.

    A round trip's time depends on the one before it (what it left in the
    caches, and to collect): with the same order in every round, a second
    pass-through put third measured 0.4 us more than the first one.  Every
    order in turn gives each cursor every predecessor equally often.
    """
    orders = list(itertools.permutations(range(count)))
    for number in range(rounds):
        yield from orders[number % len(orders)]


def round_trip(cursor):
    """Time one round trip (``SELECT 1`` and its row), in seconds."""
    started = time.perf_counter()
    cursor.execute("SELECT 1")
    cursor.fetchone()
    return time.perf_counter() - started


def own_copy(function):
    """``function`` with a code object, and so call sites, of its own.

    CPython specialises each call site for the type it meets.  One site
    shared by three cursors keeps changing its mind, and which cursor it
    favours shifts time between them: with one ``cursor.execute`` site for
    all three, giving ours the pass-through's signature made the
    pass-through's addition grow by half.  An application's call sites
    each meet one kind of cursor; so does each copy.
    """
    return types.FunctionType(function.__code__.replace(), function.__globals__)


def rotating_round_trips(cursors, rounds):
    """Time one round trip on each cursor per round, the first one changing
    from round to round, each cursor through its own copy of
    ``round_trip()``; return each cursor's seconds, round by round."""
    timers = [own_copy(round_trip) for _ in cursors]
    times = [[] for _ in cursors]
    for index in rotation(len(cursors), rounds):
        times[index].append(timers[index](cursors[index]))
    return times


def added(times, base):
    """The median, over rounds, of what ``times`` took beyond ``base`` in
    the same round (seconds)."""
    return statistics.median(t - b for t, b in zip(times, base, strict=True))


def three_additions(times):
    """From the times of ``rotating_round_trips([raw, pass, ours])``: the
    raw round trip's median, and what the pass-through and ours add to it."""
    raw, passing, ours = times
    return [statistics.median(raw), added(passing, raw), added(ours, raw)]


def report_processes(label, runs):
    """Print the medians over processes of ``three_additions()``'s figures,
    and each process's ratio of the additions."""
    direct, passing, ours = map(statistics.median, zip(*runs, strict=True))
    # A pass-through addition lost in the noise makes no ratio.
    ratios = [o / p if p > 0 else float("nan") for _, p, o in runs]
    us = 1e6
    print(
        f"{label}: raw {direct * us:.1f} us per round trip;"
        f" pass-through adds {passing * us:.2f} us, ours {ours * us:.2f} us;"
        f" ours / pass-through addition: median {statistics.median(ratios):.2f}"
        f" over {len(runs)} processes (each: {', '.join(f'{r:.2f}' for r in ratios)};"
        " target <= 1.5);"
        f" ours / raw {(direct + ours) / direct:.3f} (target <= 1.03)"
    )
