"""attempts(): the pauses, the limits, and what is not retried.

The outages are real (a proxy that stops listening); only the passing of
time is played: ``sleep`` records the pauses, and ``clock`` advances by
them, so no test waits.
"""

import pytest

from reconnecting import CommitOutcomeUnknown, ReconnectingConnection, Retry, attempts
from reconnecting.testing import PortForwardTestSetup


@pytest.fixture
def proxy(pg):
    proxy = PortForwardTestSetup()
    proxy.setUp()
    yield proxy
    proxy.tearDown()


@pytest.fixture
def db(pg, proxy):
    db = ReconnectingConnection(
        lambda: pg.connect(host=proxy.host, port=proxy.port),
        resolve_commit=True,
        resolve_timeout=0.2,
    )
    yield db
    db.close()


class Clock:
    """Time that passes only when the loop sleeps."""

    def __init__(self):
        self.now = 100.0
        self.pauses = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.pauses.append(seconds)
        self.now += seconds


def select_until_given_up(db, **options):
    tried = []
    with pytest.raises(Retry) as raised:
        for attempt in attempts(db, **options):
            with attempt:
                tried.append(attempt)
                db.cursor().execute("SELECT 1")
    return tried, raised.value


def test_success_at_once_does_not_pause(db):
    clock = Clock()
    tried = []
    for attempt in attempts(db, sleep=clock.sleep, clock=clock):
        with attempt:
            tried.append(attempt)
            db.cursor().execute("SELECT 1")
    assert [a.number for a in tried] == [1]
    assert (tried[0].pause, tried[0].error, clock.pauses) == (None, None, [])


def test_pauses_double_up_to_the_cap(db, proxy):
    proxy.tearDown()  # away for good
    clock = Clock()
    tried, error = select_until_given_up(
        db,
        tries=6,
        base_pause=0.01,
        max_pause=0.05,
        jitter=lambda: 1.0,
        sleep=clock.sleep,
        clock=clock,
    )
    assert clock.pauses == pytest.approx([0.01, 0.02, 0.04, 0.05, 0.05])
    assert [a.pause for a in tried[:-1]] == clock.pauses
    assert [a.number for a in tried] == [1, 2, 3, 4, 5, 6]
    # The last Retry is the one raised, not one of those retried before.
    assert tried[-1].error is None
    assert error not in [a.error for a in tried]
    assert "refused" in str(error).lower()


def test_jitter_is_a_fraction_of_each_step(db, proxy):
    proxy.tearDown()
    clock = Clock()
    fractions = iter([0.5, 0.0, 0.25])
    select_until_given_up(
        db, tries=4, jitter=lambda: next(fractions), sleep=clock.sleep, clock=clock
    )
    assert clock.pauses == pytest.approx([0.005, 0.0, 0.01])


def test_no_attempt_starts_after_the_deadline(db, proxy):
    proxy.tearDown()
    clock = Clock()
    tried, _ = select_until_given_up(
        db,
        tries=100,
        deadline=2.5,
        base_pause=1.0,
        max_pause=10.0,
        jitter=lambda: 1.0,
        sleep=clock.sleep,
        clock=clock,
    )
    # Pauses of 1 s, then 2 s: the third attempt would start at 3 s.
    assert clock.pauses == [1.0]
    assert len(tried) == 2


def test_an_unknown_commit_outcome_is_not_retried(db, proxy):
    clock = Clock()
    tried = []
    with pytest.raises(CommitOutcomeUnknown):
        for attempt in attempts(db, sleep=clock.sleep, clock=clock):
            with attempt:
                tried.append(attempt)
                db.cursor().execute("CREATE TABLE t (x int)")
                proxy.cut_on_commit(deliver=True, go_down=True)
                db.commit()
    assert len(tried) == 1 and clock.pauses == []
    # Rolled back on the way out: ready to reconnect, not disconnected.
    assert "not connected" in repr(db)


def test_at_least_one_try():
    with pytest.raises(ValueError, match="tries must be at least 1"):
        next(attempts(None, tries=0))
