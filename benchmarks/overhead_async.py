"""What does the asyncio wrapper cost per round trip?

Runs ``await cur.execute('SELECT 1'); await cur.fetchone()`` on three
cursors of one psycopg 3 AsyncConnection in turn, query by query, in one
event loop: the driver's own, that of a pass-through wrapper (two methods
that only pass the call on) and an AsyncReconnectingConnection's, over the
unix socket of the throwaway test server.  Ours gives that connection the
``wait()`` it gives every psycopg connection it makes (see aio.py's
``_close_when_cancelled``), which costs what psycopg's own costs; the
three cursors then share it, so only the wrappers differ.  Printed as by
overhead.py.

    python benchmarks/overhead_async.py [rounds]

Target: ours / raw is at most 1.03; the ratio of the two additions is
counted by ``instructions.py`` (see overhead.py).
"""

import asyncio
import sys
import time

import psycopg
from _common import report_three, rotation, test_database

from reconnecting import AsyncReconnectingConnection


class AsyncPassThrough:
    """The least an asyncio cursor wrapper can be: two methods passing the
    call on."""

    def __init__(self, cursor):
        self.cursor = cursor

    async def execute(self, query, params=None):
        return await self.cursor.execute(query, params)

    async def fetchone(self):
        return await self.cursor.fetchone()


async def rotating_round_trips(cursors, rounds):
    """As ``_common.rotating_round_trips``, awaiting."""
    times = [[] for _ in cursors]
    for index in rotation(len(cursors), rounds):
        cursor = cursors[index]
        started = time.perf_counter()
        await cursor.execute("SELECT 1")
        await cursor.fetchone()
        times[index].append(time.perf_counter() - started)
    return times


async def measure(pg, rounds):
    socket_dir = getattr(pg.server, "socket_dir", None)
    options = {"host": socket_dir} if socket_dir else {}
    raw = await psycopg.AsyncConnection.connect(pg.dsn, **options)

    async def same_connection():
        return raw

    try:
        # One server connection for all three: only the wrapper differs.
        ours = AsyncReconnectingConnection(same_connection).cursor()
        cursors = [raw.cursor(), AsyncPassThrough(raw.cursor()), ours]
        await rotating_round_trips(cursors, 1000)  # warm up
        return await rotating_round_trips(cursors, rounds)
    finally:
        await raw.close()


def main(rounds=20000):
    with test_database() as pg:
        times = asyncio.run(measure(pg, rounds))
    report_three("psycopg AsyncConnection, unix socket", times)


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:]))
