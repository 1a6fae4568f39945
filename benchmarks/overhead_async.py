"""What does the asyncio wrapper cost per round trip?

Runs ``await cur.execute('SELECT 1'); await cur.fetchone()`` on three
cursors of one psycopg 3 AsyncConnection in turn, query by query, in one
event loop: the driver's own, that of a pass-through wrapper (two methods
that only pass the call on) and an AsyncReconnectingConnection's, over the
unix socket of the throwaway test server.  Ours gives that connection the
``wait()`` it gives every psycopg connection it makes (see aio.py's
``_close_when_cancelled``), which costs what psycopg's own costs; the
three cursors then share it, so only the wrappers differ.  Measured in
several processes and printed as by overhead.py.

    python benchmarks/overhead_async.py [rounds] [--processes 25]

Targets, as for overhead.py: ours adds at most 1.5 times what the
pass-through adds, and ours / raw is at most 1.03.
"""

import argparse
import asyncio
import json
import os
import sys
import time

import psycopg
from _common import (
    in_processes,
    own_copy,
    report_processes,
    rotation,
    test_database,
    three_additions,
)

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


async def round_trip(cursor):
    """As ``_common.round_trip``, awaiting."""
    started = time.perf_counter()
    await cursor.execute("SELECT 1")
    await cursor.fetchone()
    return time.perf_counter() - started


async def rotating_round_trips(cursors, rounds):
    """As ``_common.rotating_round_trips``, awaiting."""
    timers = [own_copy(round_trip) for _ in cursors]
    times = [[] for _ in cursors]
    for index in rotation(len(cursors), rounds):
        times[index].append(await timers[index](cursors[index]))
    return times


async def measure(rounds):
    """One process's measurement (the parent's server is named in the
    environment)."""
    socket_dir = os.environ["BENCH_SOCKET_DIR"]
    options = {"host": socket_dir} if socket_dir else {}
    raw = await psycopg.AsyncConnection.connect(os.environ["BENCH_DSN"], **options)

    async def same_connection():
        return raw

    try:
        # One server connection for all three: only the wrapper differs.
        ours = AsyncReconnectingConnection(same_connection).cursor()
        cursors = [raw.cursor(), AsyncPassThrough(raw.cursor()), ours]
        await rotating_round_trips(cursors, 1000)  # warm up
        return three_additions(await rotating_round_trips(cursors, rounds))
    finally:
        await raw.close()


def main():
    if sys.argv[1:2] == ["--child"]:
        return print(json.dumps(asyncio.run(measure(int(sys.argv[2])))))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rounds", type=int, nargs="?", default=20000)
    parser.add_argument("--processes", type=int, default=25)
    args = parser.parse_args()
    with test_database() as pg:
        runs = in_processes(__file__, (args.rounds,), pg, args.processes)
    report_processes("psycopg AsyncConnection, unix socket", runs)


if __name__ == "__main__":
    main()
