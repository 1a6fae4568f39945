"""What the benchmarks share: the test database, and timing round trips."""

import contextlib
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


def connect_over_unix_socket(pg):
    """A psycopg2 connection to the test database over the throwaway
    cluster's unix socket; over what ``pg.connect()`` uses on another server."""
    socket_dir = getattr(pg.server, "socket_dir", None)
    return pg.connect(host=socket_dir) if socket_dir else pg.connect()


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
