"""How long until a half-open connection becomes Retry?

A network that silently stops delivering packets leaves a connection
half-open: nothing tells either side.  With libpq's defaults a call then
waits for many minutes.  docs/faults.rst recommends these settings:

    keepalives=1 keepalives_idle=10 keepalives_interval=5 keepalives_count=4
    tcp_user_timeout=30000 connect_timeout=10

This measures, with those settings, the time from the moment the proxy's
port is partitioned (packets dropped by the kernel, so this needs root) to
the Retry the caller gets, in the three cases of the page: a query sent
into the silence, a query waiting for its reply, and the reconnect after
``rollback()``.  Each is compared with the bound the settings promise.

    python benchmarks/half_open.py [scale]

``scale`` divides every setting (default 1: the real settings, about 70 s
in all; 10 gives a quick run of the same shape).
"""

import sys
import threading
import time

from reconnecting import ReconnectingConnection, Retry
from reconnecting.testing import PgTestSetup, PortForwardTestSetup

RECOMMENDED = dict(
    keepalives_idle=10,
    keepalives_interval=5,
    keepalives_count=4,
    tcp_user_timeout=30_000,
    connect_timeout=10,
)


def settings(scale):
    scaled = {name: max(1, round(value / scale)) for name, value in RECOMMENDED.items()}
    return dict(keepalives=1, **scaled)


def time_to_retry(call, before=lambda: None):
    """Run ``call`` in a thread, run ``before``, then time until Retry."""
    outcome = []

    def run():
        try:
            call()
            outcome.append("no Retry")
        except Retry as exc:
            outcome.append(f"Retry: {str(exc).splitlines()[0]}")

    thread = threading.Thread(target=run)
    started = time.monotonic()
    thread.start()
    before()
    thread.join()
    return time.monotonic() - started, outcome[0]


def backend_is_sleeping(pg, pid):
    conn = pg.connect()
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (pid,))
        row = cursor.fetchone()
        return row is not None and row[0] == "PgSleep"
    finally:
        conn.close()


def main(scale=1):
    scale = float(scale)
    reason = PortForwardTestSetup.partition_unavailable()
    if reason:
        sys.exit(f"cannot partition here: {reason}")
    options = settings(scale)
    user_timeout = options["tcp_user_timeout"] / 1000
    keepalive_bound = (
        options["keepalives_idle"]
        + options["keepalives_interval"] * options["keepalives_count"]
    )
    pg = PgTestSetup()
    pg.setUp()
    proxy = PortForwardTestSetup()
    proxy.setUp()
    try:
        db = ReconnectingConnection(
            lambda: pg.connect(host=proxy.host, port=proxy.port, **options)
        )
        cursor = db.cursor()
        cursor.execute("SELECT 1")
        print("settings:", " ".join(f"{k}={v}" for k, v in options.items()))

        proxy.partition()
        seconds, said = time_to_retry(lambda: cursor.execute("SELECT 1"))
        print(f"query sent into the silence: {seconds:.2f} s -> {said}")
        print(
            f"  expected: tcp_user_timeout ({user_timeout:g} s), rounded up to"
            " the next retransmission"
        )

        db.rollback()
        seconds, said = time_to_retry(lambda: cursor.execute("SELECT 1"))
        print(f"reconnect into the silence:  {seconds:.2f} s -> {said}")
        print(
            "  expected: tcp_user_timeout or connect_timeout, whichever is"
            f" shorter ({min(user_timeout, options['connect_timeout']):g} s)"
        )
        proxy.heal()
        db.rollback()

        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]

        def partition_once_sleeping():
            deadline = time.monotonic() + 30
            while not backend_is_sleeping(pg, pid):
                if time.monotonic() > deadline:
                    raise TimeoutError("the query did not start")
                time.sleep(0.005)
            proxy.partition()

        seconds, said = time_to_retry(
            lambda: cursor.execute("SELECT pg_sleep(3600)"), partition_once_sleeping
        )
        print(f"waiting for a reply:         {seconds:.2f} s -> {said}")
        print(
            f"  expected: the first keepalive probe after tcp_user_timeout"
            f" ({user_timeout:g} s), at most"
            f" {user_timeout + options['keepalives_interval']:g} s"
            f" (keepalives alone: {keepalive_bound:g} s)"
        )
        proxy.heal()
        pg.terminate_backends()
        db.close()
    finally:
        proxy.tearDown()
        pg.tearDown()


if __name__ == "__main__":
    main(*sys.argv[1:])
