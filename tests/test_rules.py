"""The core's pure parts, without a server: the outage rules row by row,
the decisions of resolving a commit branch by branch, the backoff of
attempts(), and the state machine's transitions.

The errors are the drivers' own exception classes, made as the drivers
make them; what a driver connection reports about itself (closed,
broken, a hot standby, autocommit) is passed in as a plain object that
reports it, since the rules only read those attributes.
"""

import weakref

import psycopg
import psycopg.errors as pg3
import psycopg2
import pytest

from reconnecting import connection
from reconnecting.connection import (
    ALREADY_DISCONNECTED,
    BLOCK_LOST,
    CONNECT_GRACE,
    SESSION_LOST,
    SESSION_REPLACED,
    Attempt,
    AttemptLoop,
    CommitOutcomeUnknown,
    ConnectionState,
    DisconnectedConnectionError,
    Resolution,
    Retry,
    is_disconnection,
    is_outage,
    status_questions,
)


class Info:
    def __init__(self, parameters):
        self.parameters = parameters

    def parameter_status(self, name):
        return self.parameters.get(name)


class Reports:
    """What a driver connection says of itself, and nothing more."""

    def __init__(self, closed=0, broken=False, autocommit=False, **parameters):
        self.closed = closed
        self.broken = broken
        self.autocommit = autocommit
        self.info = Info(parameters)


OPEN = Reports()
STANDBY = Reports(in_hot_standby="on")

# (error, raw connection's report (None: from the factory), disconnection?)
RULES = [
    # 1. the driver's own verdict on the connection, whatever the error
    (psycopg2.DatabaseError("anything at all"), Reports(closed=2), True),
    (psycopg2.DatabaseError("anything at all"), Reports(closed=1), True),
    (psycopg.DatabaseError("anything at all"), Reports(broken=True), True),
    # 2. the class, then the SQLSTATE (psycopg 3 errors carry it by class)
    (psycopg.errors.ConnectionTimeout("connection timeout expired"), OPEN, True),
    (
        pg3.AdminShutdown("terminating connection due to administrator command"),
        OPEN,
        True,
    ),
    (pg3.CrashShutdown("terminating connection because of crash"), OPEN, True),
    (
        pg3.IdleSessionTimeout("terminating connection due to idle-session timeout"),
        OPEN,
        True,
    ),
    (pg3.IdleInTransactionSessionTimeout("terminating connection"), OPEN, True),
    (pg3.TransactionTimeout("terminating connection"), OPEN, True),
    (pg3.ConnectionFailure("server conn crashed?"), OPEN, True),
    (pg3.QueryCanceled("canceling statement due to statement timeout"), OPEN, False),
    (pg3.SerializationFailure("could not serialize access"), OPEN, False),
    (pg3.DeadlockDetected("deadlock detected"), OPEN, False),
    (
        pg3.UniqueViolation("duplicate key value violates unique constraint"),
        OPEN,
        False,
    ),
    (pg3.SyntaxError('syntax error at or near "SELEC"'), OPEN, False),
    # A SQLSTATE decides: the text of an error with one is never read.
    (pg3.SyntaxError("server closed the connection unexpectedly"), OPEN, False),
    # read-only: the caller's own mistake on a primary, an outage on a standby
    (pg3.ReadOnlySqlTransaction("cannot execute INSERT"), OPEN, False),
    (pg3.ReadOnlySqlTransaction("cannot execute INSERT"), STANDBY, True),
    # 3. the message, when there is no SQLSTATE (psycopg2 made by hand has none)
    (
        psycopg2.OperationalError("server closed the connection unexpectedly\n"),
        OPEN,
        True,
    ),
    (psycopg2.OperationalError("SSL SYSCALL error: EOF detected"), OPEN, True),
    (psycopg2.InterfaceError("connection already closed"), OPEN, True),
    (
        psycopg2.OperationalError(
            "could not receive data from server: Connection reset"
        ),
        OPEN,
        True,
    ),
    (
        psycopg.OperationalError(
            "consuming input failed: server closed the connection unexpectedly"
        ),
        OPEN,
        True,
    ),
    (psycopg2.OperationalError("ERROR:  client_idle_timeout"), OPEN, True),
    (psycopg2.ProgrammingError("can't execute an empty query"), OPEN, False),
    # connecting (no driver connection yet): nobody there counts, a refusal not
    (
        psycopg2.OperationalError("could not connect to server: Connection refused"),
        None,
        True,
    ),
    (
        psycopg2.OperationalError("FATAL:  the database system is starting up"),
        None,
        True,
    ),
    (psycopg2.OperationalError("timeout expired"), None, True),
    (
        psycopg2.OperationalError(
            'FATAL:  password authentication failed for user "x"'
        ),
        None,
        False,
    ),
    (
        psycopg2.OperationalError('FATAL:  database "nowhere" does not exist'),
        None,
        False,
    ),
    (
        psycopg.OperationalError(
            "connection failed: multiple errors:\n"
            "- host: 'a', port: '5432', hostaddr: '10.0.0.1': connection refused\n"
            "- host: 'b', port: '5432', hostaddr: '10.0.0.2': "
            'password authentication failed for user "x"'
        ),
        None,
        False,
    ),
    (pg3.CannotConnectNow("the database system is starting up"), None, True),
    (pg3.TooManyConnections("sorry, too many clients already"), None, True),
    (pg3.TooManyConnections("sorry, too many clients already"), OPEN, False),
    (pg3.InvalidPassword("password authentication failed"), None, False),
]


@pytest.mark.parametrize(
    ("error", "raw", "expected"),
    RULES,
    ids=[
        f"{type(e).__name__}-{'factory' if r is None else 'open'}-{x}"
        for e, r, x in RULES
    ],
)
def test_the_rules_row_by_row(error, raw, expected):
    assert is_disconnection(error, raw) is expected


def test_what_is_not_an_exception_is_never_a_disconnection():
    assert is_disconnection(KeyboardInterrupt(), Reports(closed=2)) is False


def test_a_session_made_to_a_standby_stays_one_after_a_promotion():
    # The server reports itself a primary now; the transaction began on
    # the standby, and the connection, which remembers it, says so.
    error = pg3.ReadOnlySqlTransaction(
        "cannot execute INSERT in a read-only transaction"
    )
    assert is_disconnection(error, OPEN) is False
    assert is_disconnection(error, OPEN, standby_session=True) is True


def test_the_rules_keep_no_state_of_their_own():
    error = pg3.ReadOnlySqlTransaction("cannot execute INSERT")
    state = ConnectionState(None, False, 1.0)
    state._installed(STANDBY)  # a connection made to a standby ...
    assert is_disconnection(error, OPEN) is False  # ... changes no other answer
    registries = (weakref.WeakSet, weakref.WeakKeyDictionary, set)
    assert not [
        name
        for name, value in vars(connection).items()
        if isinstance(value, registries)
    ]


def test_an_unknown_prepared_statement_of_psycopg_is_another_session():
    lost = pg3.InvalidSqlStatementName('prepared statement "_pg3_3" does not exist')
    mine = pg3.InvalidSqlStatementName('prepared statement "mine" does not exist')
    assert is_outage(lost, OPEN) is True
    assert is_outage(mine, OPEN) is False


# -- resolving a commit: the questions, and what the answers mean -------------

SERVER = ("7300000000000000001", "2026-01-01 00:00:00+00")


def conclude(questions, *answers):
    """Answer ``questions`` in turn (an exception is thrown in); return
    the asked queries and the conclusion."""
    asked = [next(questions)[0]]
    try:
        for answer in answers:
            if isinstance(answer, BaseException):
                asked.append(questions.throw(answer)[0])
            else:
                asked.append(questions.send(answer)[0])
    except StopIteration as end:
        return asked, end.value
    raise AssertionError("the questions did not conclude")


def test_an_id_that_is_no_number_is_not_asked_about():
    with pytest.raises(StopIteration) as end:
        next(status_questions(160000, "1; DROP TABLE x", SERVER))
    assert end.value.value == "not a transaction id"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("committed", "committed"),
        ("aborted", "aborted"),
        ("in progress", "in progress"),
        (None, "the server no longer knows it"),
    ],
)
def test_the_same_server_tells(status, expected):
    asked, outcome = conclude(
        status_questions(160000, "745", SERVER), SERVER, (status,)
    )
    assert "pg_xact_status('745'::xid8)" in asked[1]
    assert outcome == expected


def test_before_postgresql_13_the_question_is_txid_status():
    asked, outcome = conclude(
        status_questions(120000, "745", SERVER), SERVER, ("committed",)
    )
    assert asked[1] == "SELECT txid_status(745)"
    assert outcome == "committed"


def test_another_cluster_cannot_tell():
    other = ("7300000000000000002", SERVER[1])
    asked, outcome = conclude(status_questions(160000, "745", SERVER), other)
    assert len(asked) == 1
    assert outcome == "reconnected to another cluster, which cannot tell"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("committed", "the server restarted, and the id may have been reused"),
        ("aborted", "aborted"),
        ("in progress", "aborted"),
    ],
)
def test_after_a_restart_only_a_commit_is_in_doubt(status, expected):
    restarted = (SERVER[0], "2026-01-01 00:05:00+00")
    _, outcome = conclude(status_questions(160000, "745", SERVER), restarted, (status,))
    assert outcome == expected


def test_an_id_in_the_future_was_never_logged_so_never_committed():
    future = pg3.InvalidParameterValue("transaction ID 745 is in the future")
    _, outcome = conclude(status_questions(160000, "745", SERVER), SERVER, future)
    assert outcome == "aborted"


def test_another_error_of_the_question_goes_on():
    questions = status_questions(160000, "745", SERVER)
    next(questions)
    questions.send(SERVER)
    with pytest.raises(pg3.InsufficientPrivilege):
        questions.throw(pg3.InsufficientPrivilege("permission denied"))


class Clock:
    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


def test_a_resolution_asks_again_with_growing_pauses_until_its_deadline():
    clock = Clock()
    resolution = Resolution("745", SERVER, 2.0, 0.002, clock)
    assert resolution.until == pytest.approx(102.0 + CONNECT_GRACE + 0.02)
    pauses = []
    resolution.status = "in progress"
    while (pause := resolution.pause()) is not None:
        pauses.append(pause)
        clock.now += pause
    assert pauses[:6] == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.16, 0.32])
    assert pauses[6:8] == [0.5, 0.5]  # no longer apart than that
    assert clock.now == pytest.approx(102.0)  # the last pause ends at the deadline


def test_a_final_status_ends_a_resolution_at_once():
    resolution = Resolution("745", SERVER, 10.0, 0.0, Clock())
    resolution.status = "committed"
    assert resolution.pause() is None


def test_an_outage_while_asking_is_unreachable_and_asked_again():
    resolution = Resolution("745", SERVER, 10.0, 0.0, Clock())
    assert resolution.failed(pg3.AdminShutdown("terminating connection"), OPEN)
    assert resolution.status == "unreachable"
    assert resolution.pause() == 0.01


def test_another_error_while_asking_is_the_answer():
    resolution = Resolution("745", SERVER, 10.0, 0.0, Clock())
    error = pg3.InsufficientPrivilege("permission denied for function pg_xact_status")
    assert not resolution.failed(error, OPEN)
    assert resolution.status == (
        "status query failed (InsufficientPrivilege:"
        " permission denied for function pg_xact_status)"
    )
    assert resolution.pause() is None


# -- the backoff of attempts() -----------------------------------------------


class RolledBack:
    """Anything with rollback() will do for attempts()."""

    def __init__(self):
        self.rollbacks = 0

    def rollback(self):
        self.rollbacks += 1


def loop(tries=5, deadline=30.0, jitter=1.0, clock=None):
    return AttemptLoop(
        RolledBack(), tries, deadline, 0.01, 0.25, lambda: jitter, clock or Clock()
    )


def test_the_pauses_are_capped_exponential_steps():
    steps = [loop(tries=10).pause_after(n) for n in range(1, 10)]
    assert steps == pytest.approx(
        [0.01, 0.02, 0.04, 0.08, 0.16, 0.25, 0.25, 0.25, 0.25]
    )


def test_the_pause_is_a_random_fraction_of_the_step():
    assert loop(jitter=0.5).pause_after(3) == pytest.approx(0.02)


def test_no_pause_after_the_last_try_or_past_the_deadline():
    assert loop(tries=3).pause_after(3) is None
    clock = Clock()
    late = loop(deadline=1.0, clock=clock)
    clock.now += 0.995
    assert late.pause_after(1) is None  # the next try would start after it


def test_at_least_one_try():
    with pytest.raises(ValueError, match="tries must be at least 1, not 0"):
        loop(tries=0)


def test_a_retry_is_retried_and_anything_else_goes_on():
    attempts = loop()
    first, second, *_ = attempts.attempts(Attempt)
    retry = Retry()
    assert attempts.retried(first, retry) is True
    assert (first.error, first.pause) == (retry, 0.01)
    assert attempts.retried(second, ValueError("mine")) is False
    assert second.pause is None


def test_an_attempt_rolls_back_whatever_ends_it():
    attempts = loop()
    db = attempts.db
    with pytest.raises(ValueError), next(attempts.attempts(Attempt)):
        raise ValueError("mine")
    with next(attempts.attempts(Attempt)) as attempt:
        raise Retry()
    assert db.rollbacks == 2
    assert attempt.pause == 0.01


# -- the state machine -------------------------------------------------------


@pytest.fixture
def state():
    state = ConnectionState(None, True, 1.0)
    state._blocks = []
    return state


def test_connecting_and_losing_count(state):
    first, second = Reports(), Reports()
    assert state._state() == "not connected"
    state._installed(first)
    assert (state._state(), state.reconnects) == ("connected", 0)
    lost = pg3.AdminShutdown("terminating connection")
    assert state._dropped(second, lost) is False  # not the current one
    assert state._dropped(first, lost) is True
    assert (state._state(), state.disconnects) == ("disconnected", 1)
    assert state._dropped(first, lost) is False  # counted once
    assert state.disconnects == 1
    state._installed(second)
    assert (state._state(), state.reconnects) == ("connected", 1)


def test_disconnected_refuses_work_until_rollback(state):
    raw = Reports()
    state._installed(raw)
    state._dropped(raw, pg3.AdminShutdown("terminating connection"))
    refused = state._refuse_work()
    assert isinstance(refused, Retry)
    assert str(refused) == f"DisconnectedConnectionError: {ALREADY_DISCONNECTED}"
    assert state._to_roll_back() is None  # nothing to roll back: it is gone
    assert state._state() == "not connected"  # the next call reconnects


def test_a_failed_connect_is_disconnected(state):
    retry = state._connect_failed(psycopg2.OperationalError("Connection refused"))
    assert isinstance(retry.orig_exc[1], psycopg2.OperationalError)
    assert (state._state(), state.disconnects) == ("disconnected", 1)


@pytest.mark.parametrize("why", [SESSION_LOST, SESSION_REPLACED])
def test_a_lost_session_is_told_before_rollback_leaves(state, why):
    raw = Reports()
    state._installed(raw)
    state._dropped(raw, pg3.AdminShutdown("terminating connection"))
    state._session_gone(why)
    assert state._to_roll_back() is None
    assert state._state() == "disconnected"  # not told yet: rollback() stays
    assert str(state._refuse_work()) == (
        f"DisconnectedConnectionError: {ALREADY_DISCONNECTED}{why}"
    )
    state._to_roll_back()
    assert state._state() == "not connected"


def test_a_gone_session_needs_a_disconnected_connection(state):
    state._installed(Reports())
    state._session_gone(SESSION_LOST)
    assert state._state() == "connected"


def test_closed_is_for_good(state):
    raw = Reports()
    state._installed(raw)
    state._closed = True
    assert state.closed
    assert state._state() == "closed"
    with pytest.raises(DisconnectedConnectionError, match="connection already closed"):
        state._to_roll_back()
    assert not state._outage(pg3.AdminShutdown("terminating connection"), raw)
    with pytest.raises(DisconnectedConnectionError):
        state._connect_failed(psycopg2.OperationalError("Connection refused"))


def test_a_statement_in_autocommit_mode_may_have_committed(state):
    lost = psycopg2.OperationalError("server closed the connection unexpectedly")
    autocommit = Reports(autocommit=True)
    assert state._may_have_committed(autocommit, lost)
    assert not state._may_have_committed(Reports(autocommit=False), lost)
    assert not state._may_have_committed(
        Reports(autocommit=True, default_transaction_read_only="on"), lost
    )
    state._installed(Reports(autocommit=True, in_hot_standby="on"))
    assert not state._may_have_committed(state._raw, lost)
    state._blocks.append("a transaction() block")
    assert not state._may_have_committed(autocommit, lost)


def test_a_with_block_ends(state):
    assert state._block_ending(failed=False) == "commit"
    assert state._block_ending(failed=True) == "rollback"
    assert state._block_ending(failed=False, began=0) == "commit"
    state._disconnects = 1
    assert state._block_ending(failed=False, began=0) == "lost"
    assert "committed nothing" in BLOCK_LOST
    state._closed = True
    assert state._block_ending(failed=False) == "nothing"


def test_what_a_resolved_commit_means(state):
    raw = Reports()
    state._installed(raw)
    lost = pg3.AdminShutdown("terminating connection")
    state._dropped(raw, lost)
    retry = Retry((type(lost), lost, None))
    with pytest.raises(Retry) as raised:
        state._resolved("745", "aborted", retry, lost)
    assert raised.value is retry
    with pytest.raises(CommitOutcomeUnknown) as raised:
        state._resolved("745", "no answer in time", retry, lost)
    assert str(raised.value) == "transaction 745: no answer in time"
    state._resolved("745", "committed", retry, lost)  # returns: committed
    assert str(state._refuse_work()).endswith(SESSION_REPLACED)


def test_the_id_question_asks_the_server_once_per_connection(state):
    class Transaction(Reports):
        def __init__(self):
            super().__init__()
            self.info.transaction_status = 2  # in a transaction
            self.info.server_version = 160000

    raw = Transaction()
    questions = state._written(raw)
    query, _ = next(questions)
    assert "pg_current_xact_id_if_assigned()" in query and "system_identifier" in query
    with pytest.raises(StopIteration) as end:
        questions.send(("745", *SERVER))
    assert end.value.value == ("745", SERVER)
    questions = state._written(raw)
    query, _ = next(questions)
    assert "system_identifier" not in query  # known for this connection
    with pytest.raises(StopIteration) as end:
        questions.send((None,))
    assert end.value.value is None  # it wrote nothing: safe to redo
