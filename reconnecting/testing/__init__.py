"""Fixtures for tests that need a real PostgreSQL server and real outages."""

from reconnecting.testing.pgsql import PgTestSetup
from reconnecting.testing.portforward import PortForwardTestSetup
from reconnecting.testing.waiting import wait_until

__all__ = ["PgTestSetup", "PortForwardTestSetup", "wait_until"]
