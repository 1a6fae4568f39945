"""``postgresql+reconnecting_psycopg_async://``: SQLAlchemy's asyncio psycopg
dialect, its connections following the package's rules.

SQLAlchemy's adapter (which runs asyncio calls for the ORM's sync code)
wraps an :class:`~reconnecting.AsyncReconnectingConnection` instead
of psycopg's ``AsyncConnection``; the rest is as in the sync dialects.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.dialects.postgresql.psycopg import PGDialectAsync_psycopg
from sqlalchemy.util import await_

from reconnecting.aio import AsyncReconnectingConnection
from reconnecting.sqlalchemy.dialect import ReconnectingDialect, standby_wanted

__all__ = ["ReconnectingAsyncPsycopgDialect"]


log = logging.getLogger("sqlalchemy.dialects.postgresql")


def _log_notice(diagnostic: Any) -> None:
    log.info("%s: %s", diagnostic.severity, diagnostic.message_primary)


class AsyncConnector:
    """The connection factory of one pooled asyncio connection: its first
    call returns the connection made at checkout, later ones new ones."""

    def __init__(
        self, connect: Callable[[], Awaitable[Any]], standby_wanted: bool
    ) -> None:
        self._connect = connect
        self.standby_wanted = standby_wanted
        self.latest: Any = None
        self._first: Any = None

    async def start(self) -> None:
        self.latest = self._first = await self._connect()

    async def __call__(self) -> Any:
        raw, self._first = self._first, None
        if raw is None:
            raw = self.latest = await self._connect()
        return raw

    def close_unused(self) -> None:
        """Close the connection made at checkout if it was never asked for
        (called by the pool, in SQLAlchemy's greenlet)."""
        raw, self._first = self._first, None
        if raw is not None:
            await_(raw.close())


class ReconnectingAsyncPsycopgDialect(ReconnectingDialect, PGDialectAsync_psycopg):
    """SQLAlchemy's asyncio psycopg dialect on
    :class:`~reconnecting.AsyncReconnectingConnection`."""

    driver = "reconnecting_psycopg_async"
    supports_statement_cache = True

    @classmethod
    def get_async_dialect_cls(cls, url: Any) -> Any:
        return cls  # not SQLAlchemy's, which psycopg's dialect names

    def on_connect(self) -> Any:
        # Notices are logged from each driver connection (see connect());
        # an isolation level given to create_engine() is set through the
        # wrapper, which remembers it for the next server connections.
        return None

    def connect(self, *cargs: Any, **cparams: Any) -> Any:
        import psycopg

        make = cparams.pop("async_creator_fn", psycopg.AsyncConnection.connect)

        async def connect() -> Any:
            raw = await make(*cargs, **cparams)
            raw.add_notice_handler(_log_notice)
            return raw

        connector = AsyncConnector(connect, standby_wanted(cparams))

        async def reconnecting(*args: Any, **kwargs: Any) -> Any:
            await connector.start()  # a connect error is SQLAlchemy's, as ever
            return AsyncReconnectingConnection(
                connector,
                resolve_commit=self.resolve_commit,
                resolve_timeout=self.resolve_timeout,
            )

        connection = self.loaded_dbapi.connect(
            *cargs, async_creator_fn=reconnecting, **cparams
        )
        self._connectors[connection.driver_connection] = connector  # type: ignore[assignment]
        return connection

    def _type_info_fetch(self, connection: Any, name: str) -> Any:
        from psycopg.types import TypeInfo

        driver = connection.connection.driver_connection
        connector = self._connectors.get(driver)  # none for an async_creator=
        raw = driver if connector is None else connector.latest
        return await_(TypeInfo.fetch(raw, name))


dialect = ReconnectingAsyncPsycopgDialect
