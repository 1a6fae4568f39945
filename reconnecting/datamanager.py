"""The part a Zope connection plays in a ``transaction``.

A data manager joins the current transaction for one
:class:`~reconnecting.adapter.ZopeConnection`.  The default one,
:class:`ConnectionDataManager`, commits the database transaction in the
two-phase commit's vote; :class:`TwoPhaseDataManager` (``two_phase=True``
on the adapter) prepares it there with ``PREPARE TRANSACTION`` and commits
it in ``tpc_finish``.  Both roll back on abort, take savepoints
(``SAVEPOINT``), and tell the transaction manager to retry after a
:class:`~reconnecting.Retry`, but never after another connection of the
same transaction committed: that raises :class:`PartialCommitError`.
Needs ``transaction`` (the ``zope`` extra).

The rule for prepared work: a decision that is unknown stays unknown.
Prepared work is rolled back only when the decision was abort, committed
when it was commit, and otherwise left prepared, noted by its gid in the
adapter's :class:`~reconnecting.prepared.PreparedTransactions`.

A data manager sees its connection only through :class:`JoinedConnection`,
so this module does not depend on :mod:`reconnecting.adapter`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from transaction.interfaces import IDataManagerSavepoint, IRetryDataManager
from zope.interface import implementer

from reconnecting.connection import (
    CommitOutcomeUnknown,
    ReconnectingConnection,
    Retry,
    StatementOutcomeUnknown,
)
from reconnecting.prepared import ABORT, COMMIT, UNKNOWN, PreparedTransactions

__all__ = [
    "GID_PREFIX",
    "AdapterSettings",
    "ConnectionDataManager",
    "JoinedConnection",
    "PartialCommitError",
    "TwoPhaseDataManager",
]

log = logging.getLogger("reconnecting")

#: How every prepared transaction of the adapter is named: this prefix, the
#: Zope transaction's own random id, ``:`` and the connection's number in it.
GID_PREFIX = "reconnecting:"


class AdapterSettings(Protocol):
    """What a data manager reads of the adapter's settings."""

    #: Seconds to wait for the server to tell what became of a commit.
    resolve_timeout: float
    #: The prepared transactions of the adapter not known to be finished.
    prepared: PreparedTransactions

    @property
    def redacted_dsn(self) -> str:
        """The DSN without passwords, naming the connection in messages."""


class JoinedConnection(Protocol):
    """What a data manager needs of the connection it joined a transaction for.

    :class:`~reconnecting.adapter.ZopeConnection` provides it; a data
    manager knows its connection through these members only.
    """

    @property
    def connection(self) -> ReconnectingConnection:
        """The connection whose database transaction is committed."""

    def getTypeInfo(self) -> AdapterSettings:  # noqa: N802 (Zope API)
        """The adapter: its ``redacted_dsn``, ``resolve_timeout`` and
        ``prepared``."""

    def leave(self, txn: Any) -> None:
        """Forget ``txn``, if joined to it: the next use joins anew."""


class PartialCommitError(Exception):
    """Some connections of a transaction committed, and others did not, or
    may not have.

    Not a :class:`~reconnecting.Retry`, and no data manager retries it:
    running the unit of work again would apply the committed part twice.
    ``committed``, ``not_committed`` and ``unknown`` (whose commit is in
    doubt, or whose prepared work waits for a decision that is in doubt)
    describe the connections by their DSN, without passwords.
    """

    def __init__(
        self,
        committed: list[str],
        not_committed: list[str],
        reason: str,
        unknown: list[str] | tuple[str, ...] = (),
    ):
        super().__init__(committed, not_committed, reason, unknown)
        self.committed = tuple(committed)
        self.not_committed = tuple(not_committed)
        self.unknown = tuple(unknown)
        self.reason = reason

    def __str__(self) -> str:
        parts = [
            f"{label} {', '.join(names)}"
            for label, names in (
                ("committed", self.committed),
                ("not committed", self.not_committed),
                ("outcome unknown", self.unknown),
            )
            if names
        ]
        return (
            f"the transaction committed only in part: {'; '.join(parts)}"
            f" ({self.reason}); not retried, since that would apply the"
            " committed part twice"
        )


class _Siblings:
    """What the data managers of one transaction know of each other."""

    def __init__(self) -> None:
        self.joined: list[ConnectionDataManager] = []  # in the order they joined
        self.name = uuid.uuid4().hex  # part of each prepared transaction's id
        # None while voting; COMMIT once every vote said yes; UNKNOWN when
        # a one-phase commit, which decides for the prepared ones, is in doubt.
        self.decision: str | None = None
        self.counted = False  # _EveryVote joined


def _siblings(txn: Any) -> _Siblings:
    try:
        return txn.data(_Siblings)
    except KeyError:
        siblings = _Siblings()
        txn.set_data(_Siblings, siblings)
        return siblings


class _EveryVote:
    """Joins a transaction that has prepared work, and votes after every
    other resource: its vote is reached only when all said yes, which is
    the decision to commit, even if a ``tpc_finish`` fails later."""

    def __init__(self, siblings: _Siblings, transaction_manager: Any) -> None:
        self._siblings = siblings
        self.transaction_manager = transaction_manager

    def sortKey(self) -> str:  # noqa: N802 (transaction API)
        return "\U0010ffffreconnecting: every vote said yes"

    def tpc_vote(self, txn: Any) -> None:
        if self._siblings.decision is None:
            self._siblings.decision = COMMIT

    def abort(self, txn: Any) -> None:
        # Unjoined (a savepoint rolled back to before it joined): the next
        # two-phase data manager of the transaction joins it again.
        self._siblings.counted = False

    def _nothing(self, txn: Any) -> None:
        """Nothing to do."""

    tpc_begin = commit = tpc_finish = tpc_abort = _nothing

    def savepoint(self) -> _NothingToUndo:
        return _NothingToUndo()


class _NothingToUndo:
    def rollback(self) -> None:
        """Nothing to undo."""


@implementer(IRetryDataManager)
class ConnectionDataManager:
    """Takes part, for one :class:`JoinedConnection`, in one transaction.

    The database transaction is committed in :meth:`tpc_vote` and rolled
    back by :meth:`abort` and :meth:`tpc_abort`.
    """

    _phase = 2  # sorts after the two-phase data managers: votes last

    def __init__(
        self,
        connection: JoinedConnection,
        transaction_manager: Any,
        txn: Any,
    ) -> None:
        self._connection = connection
        #: The transaction manager whose transaction this one joined.
        self.transaction_manager = transaction_manager
        self._siblings = _siblings(txn)
        self._siblings.joined.append(self)
        self._number = len(self._siblings.joined)
        self._savepoints = 0
        #: True once this connection's work is committed.
        self.committed = False
        #: True when its commit lost its reply and nobody could tell.
        self.in_doubt = False

    @property
    def name(self) -> str:
        """The connection's DSN, without its password."""
        return self._connection.getTypeInfo().redacted_dsn

    def abort(self, txn: Any) -> None:
        """Roll back; doing it again does no harm."""
        self._connection.leave(txn)
        if not self._connection.connection.closed:  # closing rolled back already
            self._connection.connection.rollback()

    def tpc_begin(self, txn: Any) -> None:
        """Nothing to prepare."""

    def commit(self, txn: Any) -> None:
        """Nothing to do: the work is in the database transaction already."""

    def tpc_vote(self, txn: Any) -> None:
        """Commit the database transaction.

        PostgreSQL cannot promise a commit without making it, so it is made
        here, where a failure still aborts the whole transaction.  A
        :class:`~reconnecting.Retry` raised here means the commit did not
        happen; it becomes :class:`PartialCommitError` if another
        connection of the transaction committed already.  When the outcome
        is unknown (:class:`~reconnecting.CommitOutcomeUnknown`), the
        decision for the prepared connections is unknown too: they stay
        prepared, and the error names them.
        """
        try:
            self._connection.connection.commit()
        except CommitOutcomeUnknown as exc:
            self.in_doubt = True
            self._siblings.decision = UNKNOWN
            left = [s.gid for s in self._siblings.joined if s._answer() == "unknown"]
            gids = [gid for gid in left if gid is not None]
            if not gids:
                self._refuse_partial_retry(exc)
                raise
            reason = f"{exc.reason}; left prepared: {', '.join(gids)}"
            unknown = CommitOutcomeUnknown(exc.transaction_id, reason)
            unknown.__cause__ = exc
            self._refuse_partial_retry(unknown)
            raise unknown from exc
        except Exception as exc:
            self._refuse_partial_retry(exc)
            raise
        self.committed = True

    gid: str | None = None  # one-phase commits have no prepared transaction

    def _answer(self) -> str:
        """``"committed"``, ``"not committed"`` or ``"unknown"``."""
        if self.committed:
            return "committed"
        return "unknown" if self.in_doubt else "not committed"

    def _pending(self) -> bool:
        """Prepared, and not finished yet."""
        return False

    def _refuse_partial_retry(self, exc: Exception) -> None:
        """Raise :class:`PartialCommitError` if a sibling committed already."""
        joined = self._siblings.joined
        if not any(s.committed for s in joined):
            return
        answers: dict[str, list[str]] = {
            "committed": [],
            "not committed": [],
            "unknown": [],
        }
        for sibling in joined:
            answers[sibling._answer()].append(sibling.name)
        message = (str(exc).strip().splitlines() or [""])[0]
        reason = f"{type(exc).__name__}: {message}"
        raise PartialCommitError(
            answers["committed"],
            answers["not committed"],
            reason,
            unknown=answers["unknown"],
        ) from exc

    def tpc_finish(self, txn: Any) -> None:
        """Forget the finished transaction."""
        self._connection.leave(txn)

    def tpc_abort(self, txn: Any) -> None:
        """Roll back, as :meth:`abort` (a commit made by the vote stays, and
        is logged as an error)."""
        if self.committed:
            # Whoever retries the transaction now applies this part twice.
            log.error("%s committed before the transaction failed", self.name)
        self.abort(txn)

    def sortKey(self) -> str:  # noqa: N802 (transaction API)
        """Return a key that sorts after the usual ones, then by joining order."""
        # Vote last: every other resource has then voted yes before the
        # commit that cannot be taken back.
        return f"~reconnecting:{self._phase}:{self._number:06d}"

    def should_retry(self, exception: BaseException) -> bool:
        """Tell the transaction manager to retry after a :class:`~reconnecting.Retry`.

        A commit whose outcome is unknown must not be retried, nor one that
        committed in part; the errors saying so are therefore not ``Retry``.
        """
        return isinstance(exception, Retry)

    def savepoint(self) -> Savepoint:
        """Take a savepoint of the database transaction: ``SAVEPOINT``."""
        self._savepoints += 1
        savepoint = Savepoint(self._connection.connection, self._savepoints)
        savepoint.run("SAVEPOINT")
        return savepoint


@implementer(IDataManagerSavepoint)
class Savepoint:
    """A savepoint of one connection's database transaction.

    :meth:`rollback` undoes what the connection did since, with
    ``ROLLBACK TO SAVEPOINT``, as often as asked.  After an outage the
    database transaction is gone, savepoints and all: it raises
    :class:`~reconnecting.Retry`.
    """

    def __init__(self, connection: ReconnectingConnection, number: int) -> None:
        self._connection = connection
        self.name = f"reconnecting_{number}"

    def run(self, command: str) -> None:
        cursor = self._connection.cursor()
        try:
            cursor.execute(f"{command} {self.name}")
        finally:
            cursor.close()

    def rollback(self) -> None:
        """Undo the work done since the savepoint was taken."""
        self.run("ROLLBACK TO SAVEPOINT")


class TwoPhaseDataManager(ConnectionDataManager):
    """A data manager that prepares in :meth:`tpc_vote` and commits in
    :meth:`tpc_finish`, with PostgreSQL's ``PREPARE TRANSACTION``.

    Its prepared transaction is named :attr:`gid`, and noted in the
    adapter's ``prepared`` from the moment it is sent until the server
    confirms that it is finished.  The server must allow prepared
    transactions (``max_prepared_transactions`` above 0).
    """

    _phase = 1

    def __init__(
        self,
        connection: JoinedConnection,
        transaction_manager: Any,
        txn: Any,
    ) -> None:
        super().__init__(connection, transaction_manager, txn)
        #: The prepared transaction's id: :data:`GID_PREFIX`, the Zope
        #: transaction's random name, and this connection's number in it.
        self.gid = self._gid = f"{GID_PREFIX}{self._siblings.name}:{self._number}"
        # "active", then "preparing", "prepared", and "finished", "left"
        # (prepared, the decision unknown) or "in doubt" (not finished yet)
        self._state = "active"
        if not self._siblings.counted:
            self._siblings.counted = True
            txn.join(_EveryVote(self._siblings, transaction_manager))

    @property
    def _prepared(self) -> PreparedTransactions:
        return self._connection.getTypeInfo().prepared

    @property
    def _timeout(self) -> float:
        return self._connection.getTypeInfo().resolve_timeout

    def _answer(self) -> str:
        if self.committed:
            return "committed"
        if self._state == "prepared" and self._siblings.decision == UNKNOWN:
            return "unknown"
        return "not committed"

    def _pending(self) -> bool:
        return self._state == "prepared"

    def tpc_vote(self, txn: Any) -> None:
        """Prepare the database transaction: ``PREPARE TRANSACTION``.

        The prepared work survives outages and server restarts, and waits
        for ``COMMIT PREPARED`` or ``ROLLBACK PREPARED``.  If the connection
        breaks before the reply, the transaction may be prepared, or still
        being prepared: :meth:`abort` asks the server.
        """
        cursor = self._connection.connection.cursor()
        try:
            # Its id tells, once it is no longer prepared, what became of it.
            cursor.execute(
                "SELECT txid_current()::text, pg_postmaster_start_time()::text"
            )
            xid, started = _values(cursor.fetchone())
            self._prepared.note(self._gid, xid, started)
            self._state = "preparing"
            cursor.execute(f"PREPARE TRANSACTION '{self._gid}'")
            self._state = "prepared"
            self._prepared.confirm(self._gid)
        except Exception as exc:
            if self._state == "preparing" and not isinstance(exc, Retry):
                # The server refused it (a deferred constraint, ...).
                self._state = "active"
                self._prepared.forget(self._gid)
            self._refuse_partial_retry(exc)
            raise
        finally:
            cursor.close()

    def tpc_finish(self, txn: Any) -> None:
        """``COMMIT PREPARED``; if its reply is lost, find out whether it
        committed, and commit it if it did not.

        :raises ~reconnecting.CommitOutcomeUnknown: if the server cannot be
            asked within the adapter's ``resolve_timeout``; the transaction
            stays prepared, noted with the decision to commit, which the
            adapter carries out before its next transaction.
        :raises PartialCommitError: if somebody rolled the prepared
            transaction back.
        """
        try:
            outcome = self._carry_out(COMMIT)
        finally:
            self._connection.leave(txn)
        if outcome == "committed":
            return
        if outcome == "rolled back":
            joined = self._siblings.joined
            committed = [s.name for s in joined if s.committed]
            # The prepared ones still to finish: commits that may yet fail.
            unknown = [s.name for s in joined if s is not self and s._pending()]
            reason = f"{self._gid} was rolled back by somebody else"
            raise PartialCommitError(committed, [self.name], reason, unknown=unknown)
        reason = f"{outcome}; it stays prepared until committed"
        raise CommitOutcomeUnknown(self._gid, reason)

    def _carry_out(self, decision: str) -> str:
        """Commit or roll back the prepared transaction; return the outcome:
        ``"committed"``, ``"rolled back"``, or why it is not known."""
        outcome = None
        if self._state == "prepared":  # the connection is fine: one try on it
            verb = "COMMIT" if decision == COMMIT else "ROLLBACK"
            try:
                with _autocommit(self._connection.connection) as cursor:
                    cursor.execute(f"{verb} PREPARED '{self._gid}'")
            except Exception as exc:
                # A lost reply; 55000 "is busy": the lost command is still
                # running; 42704 "does not exist": it finished meanwhile.
                if not (isinstance(exc, Retry) or _sqlstate(exc) in ("55000", "42704")):
                    raise
                # Ready for the next transaction; the server is asked anew.
                self._connection.connection.rollback()
            else:
                outcome = "committed" if decision == COMMIT else "rolled back"
                self._prepared.forget(self._gid)
        if outcome is None:  # ask the server, within the time allowed
            self._prepared.decide(self._gid, decision)
            outcome = self._prepared.settle(self._gid, self._timeout)
        if outcome in ("committed", "rolled back"):
            self._state = "finished"
            self.committed = outcome == "committed"
        else:
            self._state = "in doubt"  # noted, with its decision, for later
            log.warning(
                "Prepared transaction %s not finished (%s): %s",
                self._gid,
                decision,
                outcome,
            )
        return outcome

    def abort(self, txn: Any) -> None:
        """Roll back; a prepared transaction with ``ROLLBACK PREPARED``.

        Called after every vote said yes (a ``tpc_finish`` failed), it
        commits instead: that was the decision.  When the decision is
        unknown, the prepared transaction stays, noted as such.
        """
        try:
            if self._state in ("preparing", "prepared"):
                decision = self._siblings.decision or ABORT
                if decision == UNKNOWN:
                    self._state = "left"
                    self._prepared.decide(self._gid, UNKNOWN)
                    log.error(
                        "Prepared transaction %s left prepared: whether to commit"
                        " it is unknown",
                        self._gid,
                    )
                else:
                    self._carry_out(decision)
        finally:
            super().abort(txn)

    def tpc_abort(self, txn: Any) -> None:
        """As :meth:`abort`."""
        self.abort(txn)


@contextmanager
def _autocommit(connection: Any) -> Iterator[Any]:
    """A cursor of ``connection`` in autocommit mode, as ``COMMIT PREPARED``
    needs; leaves a disconnected state first."""
    # psycopg2 still believes a transaction is open after PREPARE TRANSACTION.
    connection.rollback()
    connection.autocommit = True
    try:
        cursor = connection.cursor()
        try:
            yield cursor
        finally:
            cursor.close()
    except StatementOutcomeUnknown as exc:
        # In doubt, as after any outage: the data manager asks the server
        # next whether the prepared transaction is still there.
        cause = exc.__cause__ or exc
        raise Retry((type(cause), cause, cause.__traceback__)) from cause
    finally:
        connection.autocommit = False


def _values(row: Any) -> list[Any]:
    # Whatever row factory the caller chose: tuple, list, dict or namedtuple.
    if isinstance(row, Mapping):
        return list(row.values())
    return list(row)


def _sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "pgcode", None) or getattr(exc, "sqlstate", None)
