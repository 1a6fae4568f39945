"""The part a Zope connection plays in a ``transaction``.

A data manager joins the current transaction for one
:class:`~reconnecting.zope.adapter.ZopeConnection`.  The default one,
:class:`ConnectionDataManager`, commits the database transaction in the
two-phase commit's vote; :class:`~reconnecting.zope.twophase.TwoPhaseDataManager`
(``two_phase=True`` on the adapter) prepares it there with ``PREPARE
TRANSACTION`` and commits it in ``tpc_finish``.  Both roll back on abort,
take savepoints (``SAVEPOINT``), and tell the transaction manager to retry
after a :class:`~reconnecting.Retry`, but never after another connection of
the same transaction committed: that raises :class:`PartialCommitError`.
Needs ``transaction`` (the ``zope`` extra).

A data manager sees its connection only through :class:`JoinedConnection`,
so this module does not depend on :mod:`reconnecting.zope.adapter`.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Protocol

from transaction.interfaces import IDataManagerSavepoint, IRetryDataManager
from zope.interface import implementer

from reconnecting.connection import (
    CommitOutcomeUnknown,
    ReconnectingConnection,
    Retry,
)
from reconnecting.zope.prepared import UNKNOWN, PreparedTransactions

__all__ = [
    "GID_PREFIX",
    "AdapterSettings",
    "ConnectionDataManager",
    "JoinedConnection",
    "PartialCommitError",
    "Savepoint",
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

    :class:`~reconnecting.zope.adapter.ZopeConnection` provides it; a data
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


class Siblings:
    """What the data managers of one transaction know of each other."""

    def __init__(self) -> None:
        self.joined: list[ConnectionDataManager] = []  # in the order they joined
        self.name = uuid.uuid4().hex  # part of each prepared transaction's id
        # None while voting; COMMIT once every vote said yes; UNKNOWN when
        # a one-phase commit, which decides for the prepared ones, is in doubt.
        self.decision: str | None = None
        self.counted = False  # the vote of every vote joined (two-phase)


def siblings_of(txn: Any) -> Siblings:
    try:
        return txn.data(Siblings)
    except KeyError:
        siblings = Siblings()
        txn.set_data(Siblings, siblings)
        return siblings


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
        self._siblings = siblings_of(txn)
        self._siblings.joined.append(self)
        self._number = len(self._siblings.joined)
        self._joined(txn)
        self._savepoints = 0
        #: True once this connection's work is committed.
        self.committed = False
        #: True when its commit lost its reply and nobody could tell.
        self.in_doubt = False

    def _joined(self, txn: Any) -> None:
        """Called once the data manager has joined *txn*'s siblings."""

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
