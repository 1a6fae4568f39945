"""What happens between threads: close() during a reconnect, and a commit's
question answered after commit() stopped waiting for it."""

import importlib
import threading

import pytest
from helpers import sessions_named

from reconnecting import CommitOutcomeUnknown, ReconnectingConnection
from reconnecting.testing import PortForwardTestSetup, wait_until

DRIVERS = ["psycopg2", "psycopg"]


class GatedFactory:
    """Connects only once the test opens the gate; keeps what it made."""

    def __init__(self, connect, gated_from=1):
        self.connect = connect
        self.calls = 0
        self.gated_from = gated_from
        self.waiting = threading.Event()
        self.gate = threading.Event()
        self.made = []

    def __call__(self):
        self.calls += 1
        if self.calls >= self.gated_from:
            self.waiting.set()
            self.gate.wait()
        raw = self.connect()
        self.made.append(raw)
        return raw


def in_thread(function):
    outcome = []

    def run():
        try:
            outcome.append(function())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("driver_name", DRIVERS)
def test_close_does_not_wait_for_a_reconnect(pg, direct, driver_name):
    driver = importlib.import_module(driver_name)
    name = f"close-{driver_name}"
    factory = GatedFactory(lambda: driver.connect(pg.dsn, application_name=name))
    db = ReconnectingConnection(factory)
    using, used = in_thread(lambda: db.cursor().execute("SELECT 1"))
    wait_until(factory.waiting.is_set)

    closing, closed = in_thread(db.close)
    wait_until(lambda: closed)  # returns while the connect is still blocked
    assert closed == [None] and db.closed and not factory.made

    factory.gate.set()  # the reconnect finishes after close()
    using.join()
    assert isinstance(used[0], driver.InterfaceError)
    assert factory.made[0].closed
    wait_until(lambda: sessions_named(direct, name) == 0)


@pytest.mark.parametrize("driver_name", DRIVERS)
def test_a_late_answer_is_closed(pg, direct, driver_name):
    driver = importlib.import_module(driver_name)
    name = f"late-{driver_name}"
    with PortForwardTestSetup() as proxy:

        def connect():
            return driver.connect(
                pg.dsn, host=proxy.host, port=proxy.port, application_name=name
            )

        factory = GatedFactory(connect, gated_from=2)  # the question waits
        db = ReconnectingConnection(factory, resolve_commit=True, resolve_timeout=0)
        cursor = db.cursor()
        cursor.execute("CREATE TEMP TABLE t (x int)")
        proxy.cut_on_commit(deliver=True)
        with pytest.raises(CommitOutcomeUnknown) as unknown:
            db.commit()
        assert unknown.value.reason == "no answer in time"

        factory.gate.set()
        wait_until(lambda: len(factory.made) == 2)
        wait_until(lambda: factory.made[1].closed)
        wait_until(lambda: sessions_named(direct, name) == 0)
        db.rollback()
        db.close()
