"""What the benchmarks share: the test database, and timing round trips."""

import argparse
import contextlib
import importlib
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


def driver_arguments(description, count_name, count_default):
    """Parse ``[count] [--driver psycopg2|psycopg]``; return the count and
    the driver modules to measure (both unless one is named)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(count_name, type=int, nargs="?", default=count_default)
    parser.add_argument("--driver", choices=DRIVERS, help="default: both, in turn")
    args = parser.parse_args()
    names = [args.driver] if args.driver else DRIVERS
    return getattr(args, count_name), [importlib.import_module(n) for n in names]


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
