"""A reconnect storm: 100 clients come back to a server with room for 17.

A throwaway cluster runs with ``max_connections = 20`` (3 of them kept for
superusers), and 100 threads, each with its own ReconnectingConnection
(role ``storm``, not a superuser), each have one unit of work to do,
``SELECT pg_sleep(0.1)`` and commit, after which the thread closes its
connection and ends.  The server stops (``fast``) just before the threads
start, so every one of them meets the outage, and starts again.  Measured:
the time from the moment the server accepts connections again until all
100 units of work are done ("resumed"), in two ways of retrying:

* immediate: ``except Retry: rollback()`` and straight on, no pause;
* attempts(): ``reconnecting.attempts(db, tries=1000, deadline=30.0)``,
  with its default pauses (full jitter, 10 ms doubling, 0.25 s cap).

Against it, in the same round, the same 100 threads make plain
``psycopg2.connect()`` calls and the same unit of work right after the
same kind of restart, never more at once than the server has room for (a
semaphore): 100 connects that queue instead of being refused, the least a
storm can cost.  (A slot is free again only once the server process of the
client that left has exited, so even these meet a refusal now and then;
they retry at once, and the count is printed.)

Printed: medians over the rounds, the median ratio to the plain connects
(target for attempts(): at most 1.5), the refusals ("too many clients",
SQLSTATE 53300) that came back as Retry, and the raw errors (anything but
Retry) that reached a caller, which must be none.

    python benchmarks/storm.py [rounds]
"""

import logging
import statistics
import sys
import threading
import time

import psycopg2
from psycopg2.extensions import make_dsn

from reconnecting import ReconnectingConnection, Retry, attempts
from reconnecting.testing.cluster import Cluster

CLIENTS = 100
MAX_CONNECTIONS = 20
ROOM = MAX_CONNECTIONS - 3  # superuser_reserved_connections
WORK = "SELECT pg_sleep(0.1)"  # a unit of work holds its connection a while
PLAIN = "plain connect(), never more at once than the server has room for"
REFUSALS = ("too many clients", "remaining connection slots are reserved")


class SmallCluster(Cluster):
    """A throwaway cluster with room for fewer clients than the storm has."""

    def _server_command(self):
        return [
            f"max_connections={MAX_CONNECTIONS}" if arg.startswith("max_conn") else arg
            for arg in super()._server_command()
        ]


class Storm:
    """One wave of clients: when each resumed, and what it met on the way."""

    def __init__(self):
        self.lock = threading.Lock()
        self.resumed = []  # perf_counter() of each finished unit of work
        self.retries = 0
        self.refusals = 0  # 53300 at connect, as Retry
        self.raw_errors = []  # anything but Retry that reached a caller
        self.gave_up = 0

    def note_retry(self, retry):
        with self.lock:
            self.retries += 1
            if any(text in str(retry) for text in REFUSALS):
                self.refusals += 1

    def note_raw(self, error):
        with self.lock:
            self.raw_errors.append(f"{type(error).__name__}: {error}".strip())

    def done(self):
        with self.lock:
            self.resumed.append(time.perf_counter())


def unit_of_work(db):
    cursor = db.cursor()
    cursor.execute(WORK)
    cursor.fetchone()
    db.commit()


def immediate_client(db, go, storm):
    go.wait()
    while True:
        try:
            unit_of_work(db)
            break
        except Retry as retry:
            storm.note_retry(retry)
            db.rollback()
        except Exception as error:
            storm.note_raw(error)
            db.rollback()
    storm.done()
    db.close()


def attempts_client(db, go, storm, **options):
    go.wait()
    while True:
        try:
            for attempt in attempts(db, tries=1000, deadline=30.0, **options):
                with attempt:
                    unit_of_work(db)
                if attempt.error is not None:
                    storm.note_retry(attempt.error)
            break
        except Retry:
            storm.gave_up += 1
        except Exception as error:
            storm.note_raw(error)
    storm.done()
    db.close()


def reconnecting_wave(cluster, dsn, client):
    """Stop the server, start the clients, start the server: time to resumed."""
    storm = Storm()
    go = threading.Event()
    threads = []
    for _ in range(CLIENTS):
        db = ReconnectingConnection(lambda: psycopg2.connect(dsn))
        thread = threading.Thread(target=client, args=(db, go, storm))
        thread.start()
        threads.append(thread)
    cluster.stop("fast")
    go.set()
    cluster.start()
    accepting = time.perf_counter()
    for thread in threads:
        thread.join()
    # A client may have got in before start() saw the server ready.
    accepting = min([accepting, *storm.resumed])
    return max(storm.resumed) - accepting, storm


def plain_wave(cluster, dsn):
    """Restart the server; time 100 plain connects and their first rows."""
    storm = Storm()
    go = threading.Event()
    room = threading.Semaphore(ROOM)

    def client():
        go.wait()
        with room:
            while True:
                try:
                    conn = psycopg2.connect(dsn)
                    break
                except psycopg2.OperationalError as error:
                    # A slot freed by a client that just left is free once
                    # its server process has exited: rare, counted, retried.
                    if not any(text in str(error) for text in REFUSALS):
                        raise
                    storm.note_retry(error)
            cursor = conn.cursor()
            cursor.execute(WORK)
            cursor.fetchone()
            conn.close()
        storm.done()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    cluster.restart("fast")
    accepting = time.perf_counter()
    go.set()
    for thread in threads:
        thread.join()
    return max(storm.resumed) - accepting, storm


def main(rounds=7):
    logging.getLogger("reconnecting").setLevel(logging.CRITICAL)  # storms are loud
    cluster = SmallCluster()
    try:
        cluster.start()
        cluster._execute(
            f"CREATE ROLE storm LOGIN PASSWORD '{cluster.password}'",
            "CREATE DATABASE storm",
        )
        dsn = make_dsn(cluster.dsn("storm"), user="storm")
        waves = {
            PLAIN: (lambda: plain_wave(cluster, dsn)),
            "ReconnectingConnection, immediate retries": (
                lambda: reconnecting_wave(cluster, dsn, immediate_client)
            ),
            "ReconnectingConnection, attempts()": (
                lambda: reconnecting_wave(cluster, dsn, attempts_client)
            ),
        }
        times = {name: [] for name in waves}
        storms = {name: [] for name in waves}
        for round_ in range(rounds):
            order = list(waves)
            if round_ % 2:
                order.reverse()
            for name in order:
                seconds, storm = waves[name]()
                times[name].append(seconds)
                storms[name].append(storm)
        plain = times[PLAIN]
        print(
            f"{CLIENTS} clients, max_connections = {MAX_CONNECTIONS},"
            f" {rounds} rounds; from 'server accepting' to 'all resumed':"
        )
        for name in waves:
            median = statistics.median(times[name])
            ratios = [t / p for t, p in zip(times[name], plain, strict=True)]
            ratio = "" if name == PLAIN else f", {statistics.median(ratios):.2f}x plain"
            print(f"  {name}: median {median * 1e3:.0f} ms{ratio}")
            waves_of = storms[name]
            retries = sum(s.retries for s in waves_of) / rounds
            refusals = sum(s.refusals for s in waves_of) / rounds
            raw = [e for s in waves_of for e in s.raw_errors]
            gave_up = sum(s.gave_up for s in waves_of)
            if name == PLAIN:
                print(f"    per round: {refusals:.1f} refusals, retried at once")
                continue
            print(
                f"    per round: {retries:.0f} retries, of which {refusals:.0f}"
                " 'too many clients' refusals as Retry"
            )
            print(
                f"    raw errors reaching a caller: {len(raw)} in all;"
                f" loops that gave up: {gave_up}"
            )
            for error in sorted(set(raw))[:5]:
                print(f"      {error.splitlines()[0]}")
        print("  target: attempts() at most 1.5x plain, no raw error")
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:]))
