"""Helpers that ``docs/sqlalchemy.rst`` uses to tell its story.

The page imports what it needs from here in one line: a way to show the
error a call raises, and the ledger as the database holds it, asked over
a connection of its own so that it does not depend on the engines the
page puts through outages.  SQLAlchemy is not imported here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reconnecting.testing.pages import print_error
from reconnecting.testing.pgsql import PgTestSetup

__all__ = ["ledger", "raised"]

_LEDGER = (
    "SELECT (SELECT array_agg(amount ORDER BY id) FROM transfer),"
    " (SELECT array_agg(balance ORDER BY id) FROM account)"
)


def raised(call: Callable[[], object]) -> BaseException | None:
    """Run *call*; print the error it raises in one line, and return it.

    The line is the error's class and the first line of its message, as
    :func:`~reconnecting.testing.pages.print_error` prints it; a call that
    raises nothing prints ``no error`` and returns None.
    """
    try:
        call()
    except Exception as error:
        print_error(error)
        return error
    print("no error")
    return None


def ledger(server: Any = None) -> tuple[list[int], list[int]]:
    """The transfers' amounts and the accounts' balances, by id.

    Asked of the test database, or of *server* (a ``Cluster``: its
    ``postgres`` database), directly.
    """
    if server is not None:
        conn = server.admin_connect()
    else:
        conn = PgTestSetup().connect()
    try:
        cursor = conn.cursor()
        cursor.execute(_LEDGER)
        transfers, balances = cursor.fetchone()
        return transfers or [], balances or []
    finally:
        conn.close()
