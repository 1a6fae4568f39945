"""Helpers that the asyncio page uses to tell its story.

``docs/asyncio.rst`` imports what it needs from here in one line, as the
sync pages do from :mod:`reconnecting.testing.pages`: a ledger table whose
totals the examples check, and a way to wait, inside the event loop, for
something another task is doing.  Each query here runs over a short
psycopg 3 connection of its own, straight to the test database, so that
it survives the server restarts the page makes; psycopg is imported when
first needed, not with this module.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

from reconnecting.testing.pgsql import PgTestSetup
from reconnecting.testing.waiting import name_of

__all__ = ["Ledger", "backends_running", "gone", "until"]


async def until(
    condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.005
) -> None:
    """:func:`~reconnecting.testing.waiting.wait_until` for asyncio.

    *condition* returns a value, or an awaitable of one; between calls
    the event loop runs other tasks for *interval* seconds.

    :raises TimeoutError: naming *condition*, if it is still false after
        *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    while not await _value(condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name_of(condition)} still false after {timeout} s")
        await asyncio.sleep(interval)


async def _value(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


async def _fetchone(query: str, params: tuple[Any, ...] = ()) -> Any:
    import psycopg

    async with await psycopg.AsyncConnection.connect(
        PgTestSetup().dsn, autocommit=True
    ) as connection:
        cursor = await connection.execute(query, params)
        return await cursor.fetchone() if cursor.description else None


async def backends_running(query: str) -> int:
    """How many server connections are running *query* right now."""
    (count,) = await _fetchone(
        "SELECT count(*) FROM pg_stat_activity WHERE query = %s AND state = 'active'",
        (query,),
    )
    return int(count)


async def gone(query: str) -> bool:
    """True when no server connection runs *query* any more."""
    return await backends_running(query) == 0


class Ledger:
    """The table of transfers, ``transfer (id serial PRIMARY KEY, amount int)``.

    Make it with ``await Ledger.create()``; its methods read and empty the
    table from outside the connection under test.
    """

    table = "transfer"

    @classmethod
    async def create(cls) -> Ledger:
        """Create the table in the test database and return its ledger."""
        await _fetchone(f"CREATE TABLE {cls.table} (id serial PRIMARY KEY, amount int)")
        return cls()

    async def totals(self) -> tuple[int, int | None]:
        """How many transfers the table holds, and the sum of their amounts."""
        count, total = await _fetchone(
            f"SELECT count(*), sum(amount) FROM {self.table}"
        )
        return int(count), None if total is None else int(total)

    async def count(self, amount: int) -> int:
        """How many transfers of *amount* the table holds."""
        (count,) = await _fetchone(
            f"SELECT count(*) FROM {self.table} WHERE amount = %s", (amount,)
        )
        return int(count)

    async def clear(self) -> None:
        """Remove every transfer."""
        await _fetchone(f"TRUNCATE {self.table}")
