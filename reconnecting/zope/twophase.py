"""The data manager of ``two_phase=True``: prepare in the vote, commit after.

:class:`TwoPhaseDataManager` prepares the database transaction in the vote
with ``PREPARE TRANSACTION`` and commits it in ``tpc_finish`` with
``COMMIT PREPARED``.  A decision that is unknown stays unknown: prepared
work is rolled back only when the decision was abort, committed when it was
commit, and otherwise left prepared, noted by its gid in the adapter's
:class:`~reconnecting.zope.prepared.PreparedTransactions`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from reconnecting.connection import CommitOutcomeUnknown, Retry, StatementOutcomeUnknown
from reconnecting.zope.datamanager import (
    GID_PREFIX,
    ConnectionDataManager,
    PartialCommitError,
    Siblings,
)
from reconnecting.zope.prepared import ABORT, COMMIT, UNKNOWN, PreparedTransactions

__all__ = ["TwoPhaseDataManager"]

log = logging.getLogger("reconnecting")


class _EveryVote:
    """Joins a transaction that has prepared work, and votes after every
    other resource: its vote is reached only when all said yes, which is
    the decision to commit, even if a ``tpc_finish`` fails later."""

    def __init__(self, siblings: Siblings, transaction_manager: Any) -> None:
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


class TwoPhaseDataManager(ConnectionDataManager):
    """A data manager that prepares in :meth:`tpc_vote` and commits in
    :meth:`tpc_finish`, with PostgreSQL's ``PREPARE TRANSACTION``.

    Its prepared transaction is named :attr:`gid`, and noted in the
    adapter's ``prepared`` from the moment it is sent until the server
    confirms that it is finished.  The server must allow prepared
    transactions (``max_prepared_transactions`` above 0).
    """

    _phase = 1

    #: The prepared transaction's id:
    #: :data:`~reconnecting.zope.datamanager.GID_PREFIX`, the Zope
    #: transaction's random name, and this connection's number in it.
    gid: str

    def _joined(self, txn: Any) -> None:
        self.gid = self._gid = f"{GID_PREFIX}{self._siblings.name}:{self._number}"
        # "active", then "preparing", "prepared", and "finished", "left"
        # (prepared, the decision unknown) or "in doubt" (not finished yet)
        self._state = "active"
        if not self._siblings.counted:
            self._siblings.counted = True
            txn.join(_EveryVote(self._siblings, self.transaction_manager))

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
