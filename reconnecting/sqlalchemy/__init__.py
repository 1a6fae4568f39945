"""SQLAlchemy dialects whose connections follow the package's rules.

Three dialects, registered with SQLAlchemy through the
``sqlalchemy.dialects`` entry point when the ``sqlalchemy`` extra is
installed::

    create_engine("postgresql+reconnecting_psycopg2://...")
    create_engine("postgresql+reconnecting_psycopg://...")
    create_async_engine("postgresql+reconnecting_psycopg_async://...")

Each is SQLAlchemy's own dialect for the driver, with every driver
connection of the pool wrapped in a
:class:`~reconnecting.ReconnectingConnection` (or, for asyncio, an
:class:`~reconnecting.AsyncReconnectingConnection`).  The package's
rules decide what an outage is; an outage reaches the caller as the
SQLAlchemy error it would have been (``.orig`` is the driver's exception)
that is also a :class:`~reconnecting.Retry`, so that
:func:`reconnecting.attempts` retries the unit of work.  In-doubt commits
are resolved unless the engine is made with ``resolve_commit=False``.

This package needs SQLAlchemy (the ``sqlalchemy`` extra); ``import
reconnecting`` alone never imports it.
"""

from __future__ import annotations

try:
    import sqlalchemy  # noqa: F401
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError(
        f"reconnecting.sqlalchemy needs the sqlalchemy extra ({exc.name} is missing): "
        "pip install 'reconnecting[sqlalchemy]'",
        name=exc.name,
    ) from exc

from reconnecting.sqlalchemy.errors import retryable_class

__all__ = ["retryable_class"]
