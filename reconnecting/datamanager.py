"""The part a Zope connection plays in a ``transaction``.

A data manager joins the current transaction for one
:class:`~reconnecting.adapter.ZopeConnection`.  The default one,
:class:`ConnectionDataManager`, commits the database transaction in the
two-phase commit's vote; :class:`TwoPhaseDataManager` (``two_phase=True``
on the adapter) prepares it there with ``PREPARE TRANSACTION`` and commits
it in ``tpc_finish``.  Both roll back on abort, and tell the transaction
manager to retry after a :class:`~reconnecting.Retry`, but never after
another connection of the same transaction committed: that raises
:class:`PartialCommitError`.  Needs ``transaction`` (the ``zope`` extra).

A data manager sees its connection only through :class:`JoinedConnection`,
so this module does not depend on :mod:`reconnecting.adapter`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from transaction.interfaces import IRetryDataManager
from zope.interface import implementer

from reconnecting.connection import (
    CommitOutcomeUnknown,
    ReconnectingConnection,
    Retry,
    StatementOutcomeUnknown,
)

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
        """The adapter: its ``redacted_dsn`` and ``resolve_timeout``."""

    def leave(self, txn: Any) -> None:
        """Forget ``txn``, if joined to it: the next use joins anew."""

    def roll_back_prepared(self, gid: str) -> None:
        """Roll back the prepared transaction ``gid``, now or, if the server
        cannot be reached, before the next transaction joins."""


class PartialCommitError(Exception):
    """Some connections of a transaction committed, and others did not.

    Not a :class:`~reconnecting.Retry`, and no data manager retries it:
    running the unit of work again would apply the committed part twice.
    ``committed`` and ``not_committed`` describe the connections by their
    DSN, without passwords.
    """

    def __init__(self, committed: list[str], not_committed: list[str], reason: str):
        super().__init__(committed, not_committed, reason)
        self.committed = tuple(committed)
        self.not_committed = tuple(not_committed)
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"the transaction committed only in part: committed"
            f" {', '.join(self.committed)}; not committed"
            f" {', '.join(self.not_committed)} ({self.reason}); not retried,"
            " since that would apply the committed part twice"
        )


class _Siblings:
    """What the data managers of one transaction know of each other."""

    def __init__(self) -> None:
        self.joined: list[ConnectionDataManager] = []  # in the order they joined
        self.name = uuid.uuid4().hex  # part of each prepared transaction's id
        self.decided = False  # every vote was yes: prepared work must commit


def _siblings(txn: Any) -> _Siblings:
    try:
        return txn.data(_Siblings)
    except KeyError:
        siblings = _Siblings()
        txn.set_data(_Siblings, siblings)
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
        self._siblings = _siblings(txn)
        self._siblings.joined.append(self)
        self._number = len(self._siblings.joined)
        #: True once this connection's work is committed.
        self.committed = False

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
        connection of the transaction committed already.
        """
        try:
            self._connection.connection.commit()
        except Exception as exc:
            self._refuse_partial_retry(exc)
            raise
        self.committed = True

    def _refuse_partial_retry(self, exc: Exception) -> None:
        """Raise :class:`PartialCommitError` if a sibling committed already."""
        joined = self._siblings.joined
        committed = [s.name for s in joined if s.committed]
        if committed:
            not_committed = [s.name for s in joined if not s.committed]
            message = (str(exc).strip().splitlines() or [""])[0]
            reason = f"{type(exc).__name__}: {message}"
            raise PartialCommitError(committed, not_committed, reason) from exc

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


class TwoPhaseDataManager(ConnectionDataManager):
    """A data manager that prepares in :meth:`tpc_vote` and commits in
    :meth:`tpc_finish`, with PostgreSQL's ``PREPARE TRANSACTION``.

    Its prepared transaction is named :attr:`gid`.  The server must allow
    prepared transactions (``max_prepared_transactions`` above 0).
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
        self.gid = f"{GID_PREFIX}{self._siblings.name}:{self._number}"
        # "active", then "preparing", "prepared", and "finished" or "in doubt"
        self._state = "active"
        self._xid: Any = None  # the database transaction's id, once known

    def tpc_vote(self, txn: Any) -> None:
        """Prepare the database transaction: ``PREPARE TRANSACTION``.

        The prepared work survives outages and server restarts, and waits
        for ``COMMIT PREPARED`` or ``ROLLBACK PREPARED``.
        """
        cursor = self._connection.connection.cursor()
        try:
            # Its id tells, once it is no longer prepared, what became of it.
            cursor.execute("SELECT txid_current()")
            self._xid = _first_value(cursor.fetchone())
            self._state = "preparing"
            cursor.execute(f"PREPARE TRANSACTION '{self.gid}'")
            self._state = "prepared"
        except Exception as exc:
            self._refuse_partial_retry(exc)
            raise
        finally:
            cursor.close()

    def tpc_finish(self, txn: Any) -> None:
        """``COMMIT PREPARED``; if its reply is lost, find out whether it
        committed, and commit it if it did not.

        :raises ~reconnecting.CommitOutcomeUnknown: if the server cannot be
            asked within the adapter's ``resolve_timeout``; the transaction
            stays prepared until somebody commits it.
        :raises PartialCommitError: if somebody rolled the prepared
            transaction back.
        """
        self._siblings.decided = True
        try:
            self._commit_prepared()
        finally:
            self._connection.leave(txn)

    def _commit_prepared(self) -> None:
        deadline = time.monotonic() + self._connection.getTypeInfo().resolve_timeout
        pause, asked = 0.01, False
        while True:
            try:
                with _autocommit(self._connection.connection) as cursor:
                    if asked and not _is_prepared(cursor, self.gid):
                        return self._gone(cursor)
                    asked = True
                    cursor.execute(f"COMMIT PREPARED '{self.gid}'")
                self._state, self.committed = "finished", True
                return
            except Retry as exc:  # in doubt: did the server commit it?
                error: Exception = exc
            except Exception as exc:
                # 55000 "is busy": the lost COMMIT PREPARED is still running;
                # 42704 "does not exist": it finished meanwhile.
                if _sqlstate(exc) not in ("55000", "42704"):
                    raise
                error = exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._state = "in doubt"  # for somebody to commit: no abort
                why = "unreachable" if isinstance(error, Retry) else "busy"
                reason = f"{why}; it stays prepared until committed"
                raise CommitOutcomeUnknown(self.gid, reason) from error
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.5)

    def _gone(self, cursor: Any) -> None:
        """The prepared transaction is gone: committed, unless someone rolled
        it back."""
        cursor.execute("SELECT txid_status(%s)", (self._xid,))
        status = _first_value(cursor.fetchone())
        if status == "committed":
            self._state, self.committed = "finished", True
            return
        self._state = "finished"
        if status == "aborted":
            others = [s.name for s in self._siblings.joined if s is not self]
            reason = f"{self.gid} was rolled back by somebody else"
            raise PartialCommitError(others, [self.name], reason)
        raise CommitOutcomeUnknown(self.gid, f"status {status!r}")

    def abort(self, txn: Any) -> None:
        """Roll back; a prepared transaction with ``ROLLBACK PREPARED``.

        Called after every vote said yes (a failing ``tpc_finish``), it
        commits instead: that was the decision.
        """
        try:
            if self._state in ("preparing", "prepared"):
                if self._siblings.decided:
                    self._commit_prepared()
                else:
                    self._state = "finished"
                    self._connection.roll_back_prepared(self.gid)
        finally:
            super().abort(txn)


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
        # What runs here is safe to do again: it first asks whether the
        # prepared transaction is still there.
        cause = exc.__cause__ or exc
        raise Retry((type(cause), cause, cause.__traceback__)) from cause
    finally:
        connection.autocommit = False


def _is_prepared(cursor: Any, gid: str) -> bool:
    cursor.execute("SELECT count(*) FROM pg_prepared_xacts WHERE gid = %s", (gid,))
    return _first_value(cursor.fetchone()) > 0


def roll_back_prepared(connection: Any, gid: str) -> None:
    """``ROLLBACK PREPARED`` the transaction ``gid`` on ``connection`` (a
    :class:`~reconnecting.ReconnectingConnection`), if it is prepared.

    :raises ~reconnecting.Retry: if the server cannot be reached.
    """
    with _autocommit(connection) as cursor:
        if _is_prepared(cursor, gid):
            cursor.execute(f"ROLLBACK PREPARED '{gid}'")
            log.info("Rolled back prepared transaction %s", gid)


def _first_value(row: Any) -> Any:
    # Whatever row factory the caller chose: tuple, list, dict or namedtuple.
    if isinstance(row, Mapping):
        return next(iter(row.values()))
    return row[0]


def _sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "pgcode", None) or getattr(exc, "sqlstate", None)
