"""The workload of test_copy.py: a ledger run through copied files.

Run by a fresh interpreter, as a project that copied the core would::

    python -I copied_ledger.py FOLDER sync|async installed|absent

``FOLDER`` holds the package ``myapp.db``: a copy of connection.py, and for
``async`` of aio.py beside it.  With ``absent``, importing ``reconnecting``
fails, as in a project that does not have the package; with ``installed``
it would work, and the copies must not use it.  The server connections go
through the proxy at ``COPY_HOST``:``COPY_PORT`` to the database of
``COPY_DSN``; the sync driver is the one ``RECONNECTING_TEST_DRIVER`` names.

Transfers are made one after the other, each in ``attempts()`` with few
tries and ``resolve_commit=True``, until standard input closes.  A loop that
gives up (``except myapp.db.connection.Retry``) starts again with the same
transfer; a ``CommitOutcomeUnknown`` is settled by looking for the transfer.
Each event is a line on standard output (``committed ID``, ``gave-up``,
``unknown ID``), and the last is ``summary {json}``.  Logging is left
unconfigured: whatever the copies print goes to standard error.
"""

import asyncio
import importlib
import importlib.abc
import itertools
import json
import os
import random
import sys
import threading
import time

folder, shell, package = sys.argv[1:]


class Absent(importlib.abc.MetaPathFinder):
    """Finds ``reconnecting`` nowhere, whatever site-packages holds."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "reconnecting":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


if package == "absent":
    sys.meta_path.insert(0, Absent())
sys.path.insert(0, folder)

from myapp.db import connection  # noqa: E402 (the copy, once the path is set)

DSN, HOST, PORT = (
    os.environ["COPY_DSN"],
    os.environ["COPY_HOST"],
    os.environ["COPY_PORT"],
)
ACCOUNTS = 8
GIVE_UP_PAUSE = 0.05  # after attempts() gave up: the server is down
UPDATE = "UPDATE account SET balance = balance + %s WHERE id = %s"
INSERT = "INSERT INTO applied (transfer_id, src, dst, amount) VALUES (%s, %s, %s, %s)"
FIND = "SELECT count(*) FROM applied WHERE transfer_id = %s"


def say(*words):
    print(*words, flush=True)


def transfers(stop):
    """The transfers to make, until ``stop`` is set."""
    rng = random.Random(shell)
    for number in itertools.count(1):
        if stop.is_set():
            return
        src, dst = rng.sample(range(1, ACCOUNTS + 1), 2)
        yield (f"{shell}-{number}", src, dst, rng.randint(1, 100))


def statements(transfer):
    """The unit of work; rows locked in id order."""
    _, src, dst, amount = transfer
    for account, delta in sorted([(src, -amount), (dst, amount)]):
        yield UPDATE, (delta, account)
    yield INSERT, transfer


# -- sync ---------------------------------------------------------------------


def run_sync(stop):
    driver = importlib.import_module(
        os.environ.get("RECONNECTING_TEST_DRIVER", "psycopg2")
    )

    def factory():
        return driver.connect(DSN, host=HOST, port=PORT, connect_timeout=5)

    db = connection.ReconnectingConnection(
        factory, resolve_commit=True, resolve_timeout=30.0
    )
    cursor = db.cursor()
    for transfer in transfers(stop):
        while not settled(db, cursor, transfer):
            time.sleep(GIVE_UP_PAUSE)
        say("committed", transfer[0])
    db.close()
    return db


def settled(db, cursor, transfer):
    """Try ``transfer``; True once it is known committed, False to try again."""
    try:
        for attempt in connection.attempts(db, tries=3):
            with attempt:
                for statement in statements(transfer):
                    cursor.execute(*statement)
                db.commit()
        return True
    except connection.Retry:
        say("gave-up")
        return False
    except connection.CommitOutcomeUnknown:
        say("unknown", transfer[0])
    while True:
        try:
            for attempt in connection.attempts(db, tries=3):
                with attempt:
                    cursor.execute(FIND, (transfer[0],))
                    (count,) = cursor.fetchone()
                    db.rollback()
                    return count > 0
        except connection.Retry:
            say("gave-up")
            time.sleep(GIVE_UP_PAUSE)


# -- asyncio ------------------------------------------------------------------


async def run_async(stop):
    import psycopg
    from myapp.db import aio

    def factory():
        return psycopg.AsyncConnection.connect(
            DSN, host=HOST, port=PORT, connect_timeout=5
        )

    db = aio.AsyncReconnectingConnection(
        factory, resolve_commit=True, resolve_timeout=30.0
    )
    cursor = db.cursor()
    for transfer in transfers(stop):
        while not await settled_async(aio, db, cursor, transfer):
            await asyncio.sleep(GIVE_UP_PAUSE)
        say("committed", transfer[0])
    await db.close()
    return db


async def settled_async(aio, db, cursor, transfer):
    """``settled()``, awaited; the errors caught are the copied connection.py's."""
    try:
        async for attempt in aio.attempts(db, tries=3):
            async with attempt:
                for statement in statements(transfer):
                    await cursor.execute(*statement)
                await db.commit()
        return True
    except connection.Retry:
        say("gave-up")
        return False
    except connection.CommitOutcomeUnknown:
        say("unknown", transfer[0])
    while True:
        try:
            async for attempt in aio.attempts(db, tries=3):
                async with attempt:
                    await cursor.execute(FIND, (transfer[0],))
                    (count,) = await cursor.fetchone()
                    await db.rollback()
                    return count > 0
        except connection.Retry:
            say("gave-up")
            await asyncio.sleep(GIVE_UP_PAUSE)


def main():
    stop = threading.Event()

    def wait_for_eof():
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    db = run_sync(stop) if shell == "sync" else asyncio.run(run_async(stop))
    summary = {
        "disconnects": db.disconnects,
        "reconnects": db.reconnects,
        "reconnecting modules": sorted(
            name for name in sys.modules if name.partition(".")[0] == "reconnecting"
        ),
    }
    say("summary", json.dumps(summary))


main()
