"""Fixtures for tests that need a real PostgreSQL server and real outages."""

from reconnecting.testing.pgsql import PgTestSetup
from reconnecting.testing.portforward import PortForwardTestSetup

__all__ = ["PgTestSetup", "PortForwardTestSetup"]
