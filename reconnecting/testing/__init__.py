"""Fixtures for tests that need a real PostgreSQL server and real outages."""

try:  # the fixtures talk to their server through psycopg2
    import psycopg2  # noqa: F401
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError(
        f"reconnecting.testing needs the testing extra ({exc.name} is missing): "
        "pip install 'reconnecting[testing]'",
        name=exc.name,
    ) from exc

from reconnecting.testing.pgsql import PgTestSetup
from reconnecting.testing.portforward import PortForwardTestSetup
from reconnecting.testing.waiting import wait_until

__all__ = ["PgTestSetup", "PortForwardTestSetup", "wait_until"]
