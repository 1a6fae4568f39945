"""The package's main job in one command: ``python -m reconnecting.demo``.

It starts a throwaway PostgreSQL server (found as the tests find one, see
:mod:`reconnecting.testing.pgsql`) and a fault-injecting proxy in front of
it, and books a ledger of transfers through a
:class:`~reconnecting.ReconnectingConnection` with ``resolve_commit=True``.
A transfer is not idempotent: booking it twice moves the money twice.
While it works, the proxy drops every connection, cuts ``COMMIT`` requests
and replies, and the server restarts, cleanly and by crashing.  Each
transfer runs in an :func:`~reconnecting.attempts` loop, and a commit whose
outcome nobody could tell is settled by reading the ledger.

At the end the ledger itself is counted: every transfer must be there
exactly once.  The last line says ``N transfers, K outages, R retries,
L lost, D duplicated``, and the exit status is 1 if anything was lost or
duplicated.  ``--no-resolve`` turns resolution off to show the duplicates
that in-doubt commits make without it.  The server, its files and the
proxy are gone when the demo ends, also after Ctrl-C.

    python -m reconnecting.demo [TRANSFERS] [--driver psycopg2|psycopg]
                                [--fault-rate RATE] [--no-resolve]
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from reconnecting.connection import (
    CommitOutcomeUnknown,
    ReconnectingConnection,
    Retry,
    attempts,
)

__all__ = ["main"]

# The faults, in the order they take turns.
FAULTS = (
    "cut the COMMIT reply",
    "drop every connection",
    "cut the COMMIT request",
    "restart the server",
    "cut the COMMIT reply",
    "drop every connection",
    "crash and restart the server",
)
RESTARTS = {"restart the server": "fast", "crash and restart the server": "immediate"}

_SCHEMA = """
    CREATE TABLE account (id int PRIMARY KEY, balance bigint NOT NULL);
    INSERT INTO account VALUES (1, 0), (2, 0);
    CREATE TABLE transfer (n int NOT NULL, amount int NOT NULL);
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reconnecting.demo",
        description="Book transfers through outages, then count them in the"
        " database: none may be lost or booked twice.",
    )
    parser.add_argument(
        "transfers", nargs="?", type=int, default=5000, help="default: 5000"
    )
    parser.add_argument("--driver", choices=("psycopg2", "psycopg"), default="psycopg2")
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=0.01,
        metavar="RATE",
        help="faults per transfer (default: 0.01, one in a hundred)",
    )
    parser.add_argument(
        "--no-resolve",
        action="store_true",
        help="do not resolve in-doubt commits (shows the duplicates)",
    )
    args = parser.parse_args(argv)
    if args.transfers < 1:
        parser.error("the number of transfers must be at least 1")
    if not 0 <= args.fault_rate <= 1:
        parser.error("the fault rate must be between 0 and 1")
    return args


class Progress:
    """What the screen shows: a bar redrawn in place on a terminal, plain
    lines otherwise."""

    def __init__(self, total: int, out: TextIO) -> None:
        self.total = total
        self.out = out
        self.live = out.isatty()
        self.done = self.outages = self.retries = 0
        self.now = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next_line = 0  # non-terminal: the next tenth to report
        self._thread = threading.Thread(target=self._redraw_often, daemon=True)

    def start(self) -> None:
        if self.live:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.live:
            self._write("\r\x1b[2K")

    def _write(self, text: str) -> None:
        with self._lock:
            if self.out.closed:
                return
            try:
                self.out.write(text)
                self.out.flush()
            except BrokenPipeError:
                # Piped into `head`: carry on unseen (the exit status still
                # tells), with nothing more to print, not even at exit.
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self.out.fileno())
                os.close(devnull)

    def say(self, line: str) -> None:
        """Print a line (above the bar, on a terminal)."""
        self._write(("\r\x1b[2K" if self.live else "") + line + "\n")
        if self.live:
            self._draw()

    def update(self, done: int, outages: int, retries: int) -> None:
        self.done, self.outages, self.retries = done, outages, retries
        if not self.live:
            while self._next_line <= 10 * done // self.total:
                if self._next_line:
                    self.say(self.counts())
                self._next_line += 1

    def counts(self) -> str:
        width = len(str(self.total))
        return (
            f"{self.done:{width}}/{self.total} transfers, {self.outages} outages,"
            f" {self.retries} retries"
        )

    def _draw(self) -> None:
        columns = shutil.get_terminal_size().columns
        text = self.counts() + (f" | {self.now}" if self.now else "")
        bar_width = max(10, min(40, columns - len(text) - 4))
        filled = bar_width * self.done // self.total
        line = f"[{'#' * filled}{'.' * (bar_width - filled)}] {text}"
        # Room left at the end of the line for the terminal's "^C".
        self._write("\r\x1b[2K" + line[: columns - 3])

    def _redraw_often(self) -> None:
        while not self._stop.wait(0.1):
            self._draw()


class Demo:
    """The throwaway server, the proxy, the ledger, and the faults."""

    def __init__(self, args: argparse.Namespace, progress: Progress) -> None:
        self.args = args
        self.progress = progress
        self.driver = importlib.import_module(args.driver)
        self.pg: Any = None
        self.proxy: Any = None
        self.db: ReconnectingConnection | None = None
        self.restarting: threading.Thread | None = None
        self.outages = 0  # transfers that met a lost connection
        self.retries = 0  # attempts made again after Retry
        self.in_doubt = 0  # commits whose outcome only the ledger could tell
        self.gave_up = 0  # attempts() loops that ran out of tries

    def set_up(self) -> None:
        from reconnecting.testing import PgTestSetup, PortForwardTestSetup
        from reconnecting.testing.server import ExistingServer

        pg = PgTestSetup()
        pg.setUp()  # interrupted, it leaves nothing (and no database to drop)
        self.pg = pg
        self.can_restart = not isinstance(self.pg.server, ExistingServer)
        admin = self.pg.connect()
        try:
            admin.cursor().execute(_SCHEMA)
            admin.commit()
        finally:
            admin.close()
        self.proxy = PortForwardTestSetup()
        self.proxy.setUp()
        from psycopg2.extensions import make_dsn  # the fixtures need psycopg2

        dsn = make_dsn(self.pg.dsn, host=self.proxy.host, port=self.proxy.port)
        connect = self.driver.connect
        self.db = ReconnectingConnection(
            lambda: connect(dsn), resolve_commit=not self.args.no_resolve
        )

    def describe(self) -> str:
        server = self.pg.server
        if self.can_restart:
            version = re.search(r"\) (\S+)", server.version or "")
            name = f"PostgreSQL {version.group(1)}" if version else "PostgreSQL"
            where = f"{name} in {server.directory}"
        else:
            where = "the one named by RECONNECTING_TEST_SERVER (not restarted)"
        return f"Server: {where}\nProxy: {self.proxy.host}:{self.proxy.port}"

    def tear_down(self) -> None:
        if self.restarting is not None:
            self.restarting.join()
        if self.db is not None:
            self.db.close()
        if self.proxy is not None:
            self.proxy.tearDown()
        if self.pg is not None:
            server = self.pg.server
            self.pg.tearDown()
            if hasattr(server, "destroy"):
                server.destroy()  # the cluster was made for this run

    def fault(self, kind: str) -> None:
        """Arm or start the fault ``kind``; it hits the next transfer."""
        if kind in RESTARTS and not self.can_restart:
            kind = "drop every connection"  # an existing server is not ours
        self.progress.now = kind
        if kind == "cut the COMMIT reply":
            self.proxy.cut_on_commit(deliver=True)
        elif kind == "cut the COMMIT request":
            self.proxy.cut_on_commit(deliver=False)
        elif kind == "drop every connection":
            self.proxy.drop()
        else:
            # Down now, so that the next transfer meets the outage; back up
            # in the background while that transfer retries.
            server = self.pg.server
            server.stop(RESTARTS[kind])
            self.restarting = threading.Thread(target=server.start, daemon=True)
            self.restarting.start()

    def book(self, n: int, amount: int) -> int:
        """Book transfer ``n`` exactly once; return the retries it took."""
        db = self.db
        assert db is not None
        cursor = db.cursor()
        retries = 0
        while True:
            try:
                for attempt in attempts(db, tries=50, deadline=30.0):
                    with attempt:
                        cursor.execute(
                            "INSERT INTO transfer (n, amount) VALUES (%s, %s)",
                            (n, amount),
                        )
                        cursor.execute(
                            "UPDATE account SET balance = balance"
                            " + CASE id WHEN 1 THEN -%s ELSE %s END",
                            (amount, amount),
                        )
                        db.commit()
                    retries += attempt.error is not None
                return retries
            except CommitOutcomeUnknown:
                # Committed or not, nobody could tell: the ledger can.
                self.in_doubt += 1
                if self._booked(n):
                    return retries
                retries += 1
            except Retry:
                self.gave_up += 1  # a long outage: start over
                retries += 1

    def _booked(self, n: int) -> bool:
        db = self.db
        assert db is not None
        cursor = db.cursor()
        for attempt in attempts(db, tries=50, deadline=30.0):
            with attempt:
                cursor.execute("SELECT count(*) FROM transfer WHERE n = %s", (n,))
                found = cursor.fetchone()[0]
                db.rollback()
        return bool(found)

    def run(self) -> None:
        total, rate = self.args.transfers, self.args.fault_rate
        faults = round(total * rate)
        # Evenly spread, none on the very last transfer.
        at = {
            (i + 1) * total // (faults + 1): FAULTS[i % len(FAULTS)]
            for i in range(faults)
        }
        db = self.db
        assert db is not None
        for n in range(1, total + 1):
            kind = at.get(n)
            if kind is not None:
                self.fault(kind)
            disconnects, retries = db.disconnects, self.retries
            started = time.monotonic()
            self.retries += self.book(n, 1 + n % 100)
            if db.disconnects > disconnects:
                self.outages += 1
            if kind is not None:
                self.progress.now = ""
                self.progress.say(
                    f"transfer {n:{len(str(total))}}: {kind}: "
                    + self._outcome(
                        db.disconnects - disconnects, self.retries - retries
                    )
                    + f", {(time.monotonic() - started) * 1000:.0f} ms"
                )
            self.progress.update(n, self.outages, self.retries)

    def _outcome(self, disconnects: int, retries: int) -> str:
        if not disconnects:
            return "not noticed"
        if retries:
            return f"{retries} retr{'y' if retries == 1 else 'ies'}"
        return "the server confirmed the commit"

    def count(self) -> tuple[int, int]:
        """Count the ledger, over a connection of its own: (lost, duplicated)."""
        if self.restarting is not None:
            self.restarting.join()
        conn = self.pg.connect()
        try:
            cursor = conn.cursor()
            cursor.execute(
                "SELECT count(DISTINCT n), count(*) FROM transfer"
                " WHERE n BETWEEN 1 AND %s",
                (self.args.transfers,),
            )
            distinct, rows = cursor.fetchone()
            cursor.execute("SELECT balance FROM account WHERE id = 2")
            balance = cursor.fetchone()[0]
            cursor.execute("SELECT sum(amount) FROM transfer")
            if balance != cursor.fetchone()[0]:
                raise AssertionError("the balance does not match the ledger")
        finally:
            conn.close()
        return self.args.transfers - distinct, rows - distinct


def _terminate_as_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parse_args(argv)
    # A `kill` cleans up as Ctrl-C does (the cluster's watchdog covers -9).
    previous: Callable[..., Any] | int | None = signal.signal(
        signal.SIGTERM, _terminate_as_exit
    )
    progress = Progress(args.transfers, out)
    demo = Demo(args, progress)
    try:
        started = time.monotonic()
        progress.say("Starting a throwaway PostgreSQL server and a fault proxy...")
        demo.set_up()
        progress.say(demo.describe())
        progress.say(
            f"Booking {args.transfers} transfers ({args.driver},"
            f" resolve_commit={not args.no_resolve}),"
            f" {round(args.transfers * args.fault_rate)} faults:"
        )
        progress.start()
        demo.run()
        progress.stop()
        lost, duplicated = demo.count()
        seconds = time.monotonic() - started
        notes = f"Done in {seconds:.1f} s."
        if demo.in_doubt:
            notes += f" {demo.in_doubt} in-doubt commit(s) settled from the ledger."
        if duplicated and args.no_resolve:
            notes += " Duplicates: commits whose reply was cut, booked again."
        progress.say(notes)
        progress.say(
            f"{args.transfers} transfers, {demo.outages} outages,"
            f" {demo.retries} retries, {lost} lost, {duplicated} duplicated"
        )
        return 1 if lost or duplicated else 0
    except KeyboardInterrupt:
        progress.stop()
        progress.say("Interrupted; removing the server and the proxy.")
        return 130
    finally:
        progress.stop()
        demo.tear_down()
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
