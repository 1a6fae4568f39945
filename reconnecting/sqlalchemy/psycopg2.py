"""``postgresql+reconnecting_psycopg2://``: SQLAlchemy's psycopg2 dialect,
its connections following the package's rules."""

from __future__ import annotations

from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2

from reconnecting.sqlalchemy.dialect import ReconnectingDialect

__all__ = ["ReconnectingPsycopg2Dialect"]


class ReconnectingPsycopg2Dialect(ReconnectingDialect, PGDialect_psycopg2):
    """SQLAlchemy's psycopg2 dialect, on
    :class:`~reconnecting.ReconnectingConnection`."""

    driver = "reconnecting_psycopg2"
    supports_statement_cache = True


dialect = ReconnectingPsycopg2Dialect
