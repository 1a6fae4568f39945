"""What the benchmarks share: the test database, and timing round trips."""

import argparse
import contextlib
import importlib
import itertools
import statistics
import time

from reconnecting.testing import PgTestSetup

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


def rotating_round_trips(cursors, rounds):
    """Time one round trip on each cursor per round, the first one changing
    from round to round; return each cursor's seconds, round by round."""
    times = [[] for _ in cursors]
    for index in rotation(len(cursors), rounds):
        cursor = cursors[index]
        started = time.perf_counter()
        cursor.execute("SELECT 1")
        cursor.fetchone()
        times[index].append(time.perf_counter() - started)
    return times


SLICES = 10  # the rounds are cut in this many slices to show the spread


def additions(times, base):
    """The median, over rounds, of what ``times`` took beyond ``base`` in the
    same round (seconds); and its lowest and highest over ``SLICES`` slices."""
    added = [t - b for t, b in zip(times, base, strict=True)]
    size = len(added) // SLICES
    slices = [
        statistics.median(added[i : i + size]) for i in range(0, size * SLICES, size)
    ]
    return statistics.median(added), min(slices), max(slices)


def report_three(label, times):
    """Print what the pass-through and ours add to the raw driver's round
    trip, from the times of ``rotating_round_trips([raw, pass, ours])``."""
    raw, passing, ours = times
    direct = statistics.median(raw)
    (p, p_low, p_high), (o, o_low, o_high) = (
        additions(passing, raw),
        additions(ours, raw),
    )
    us = 1e6
    # A pass-through addition lost in the noise makes no ratio.
    ratio = f"{o / p:.2f}" if p > 0 else "none (pass-through adds nothing measurable)"
    print(
        f"{label}: raw {direct * us:.1f} us per round trip;"
        f" pass-through adds {p * us:.2f} us ({p_low * us:.2f} to {p_high * us:.2f}),"
        f" ours {o * us:.2f} us ({o_low * us:.2f} to {o_high * us:.2f});"
        f" ours / pass-through addition {ratio} (by time: the target <= 1.5"
        " is counted by instructions.py);"
        f" ours / raw {(direct + o) / direct:.3f} (target <= 1.03);"
        f" {len(raw)} rounds"
    )
