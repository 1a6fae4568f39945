"""``postgresql+reconnecting_psycopg://``: SQLAlchemy's psycopg 3 dialect,
its connections following the package's rules."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

from reconnecting.sqlalchemy.dialect import ReconnectingDialect

__all__ = ["ReconnectingPsycopgDialect"]


class ReconnectingPsycopgDialect(ReconnectingDialect, PGDialect_psycopg):
    """SQLAlchemy's psycopg 3 dialect, on
    :class:`~reconnecting.ReconnectingConnection`."""

    driver = "reconnecting_psycopg"
    supports_statement_cache = True

    def _type_info_fetch(self, connection: Any, name: str) -> Any:
        # psycopg's TypeInfo.fetch() takes a driver connection only: ask
        # the one the pooled connection was made with.
        from psycopg.types import TypeInfo

        driver = connection.connection.driver_connection
        connector = self._connectors.get(driver)  # none for a creator=
        return TypeInfo.fetch(driver if connector is None else connector.latest, name)

    @classmethod
    def get_async_dialect_cls(cls, url: Any) -> Any:
        from reconnecting.sqlalchemy.aio import ReconnectingAsyncPsycopgDialect

        return ReconnectingAsyncPsycopgDialect


dialect = ReconnectingPsycopgDialect
