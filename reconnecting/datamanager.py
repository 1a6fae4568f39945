"""The part a Zope connection plays in a ``transaction``.

A :class:`ConnectionDataManager` joins the current transaction for one
:class:`~reconnecting.adapter.ZopeConnection`: it commits the database
transaction in the two-phase commit's vote, rolls it back on abort, and
tells the transaction manager to retry after a :class:`~reconnecting.Retry`.
Needs ``transaction`` (the ``zope`` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transaction.interfaces import IRetryDataManager
from zope.interface import implementer

from reconnecting.connection import Retry

if TYPE_CHECKING:  # not at run time: reconnecting.adapter imports this module
    import reconnecting.adapter

__all__ = ["ConnectionDataManager"]


@implementer(IRetryDataManager)
class ConnectionDataManager:
    """Takes part, for one :class:`~reconnecting.adapter.ZopeConnection`, in one
    transaction.

    The database transaction is committed in :meth:`tpc_vote` and rolled
    back by :meth:`abort` and :meth:`tpc_abort`.
    """

    def __init__(
        self, connection: reconnecting.adapter.ZopeConnection, transaction_manager: Any
    ) -> None:
        self._connection = connection
        #: The transaction manager whose transaction this one joined.
        self.transaction_manager = transaction_manager

    def abort(self, txn: Any) -> None:
        """Roll back; doing it again does no harm."""
        self._connection._left(txn)
        if not self._connection.closed:  # closing rolled back already
            self._connection.rollback()

    def tpc_begin(self, txn: Any) -> None:
        """Nothing to prepare."""

    def commit(self, txn: Any) -> None:
        """Nothing to do: the work is in the database transaction already."""

    def tpc_vote(self, txn: Any) -> None:
        """Commit the database transaction.

        PostgreSQL cannot promise a commit without making it, so it is made
        here, where a failure still aborts the whole transaction.  A
        :class:`~reconnecting.Retry` raised here means the commit may or may
        not have happened.
        """
        self._connection.commit()

    def tpc_finish(self, txn: Any) -> None:
        """Forget the finished transaction."""
        self._connection._left(txn)

    def tpc_abort(self, txn: Any) -> None:
        """Roll back, as :meth:`abort` (a commit made by the vote stays)."""
        self.abort(txn)

    def sortKey(self) -> str:  # noqa: N802 (transaction API)
        """Return a key that sorts after the usual ones."""
        # Vote last: every other resource has then voted yes before the
        # commit that cannot be taken back.
        return f"~reconnecting:{id(self)}"

    def should_retry(self, exception: BaseException) -> bool:
        """Tell the transaction manager to retry after a :class:`~reconnecting.Retry`.

        A commit whose outcome is unknown must not be retried; an error
        saying so must therefore not be a ``Retry``.
        """
        return isinstance(exception, Retry)
