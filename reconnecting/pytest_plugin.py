"""The pytest plugin: the fixtures of :mod:`reconnecting.testing` for your tests.

Installing the package registers this module through the ``pytest11``
entry point, so any project's tests can ask for:

``pg_database``
    a set-up :class:`~reconnecting.testing.pgsql.PgTestSetup`: a fresh
    database for the test (``dsn``, ``dbname``, ``user``, ``host``,
    ``port``, ``connect()``), dropped after it;
``port_forward``
    a set-up :class:`~reconnecting.testing.portforward.PortForwardTestSetup`
    in front of that database's server, torn down after the test.

The server is made (or found, see :mod:`reconnecting.testing.pgsql`) once
per test session, when the first test asks for it.  ``-p
no:reconnecting`` turns the plugin off.  The fixtures' modules, and the
drivers they need, are imported only when a test asks for a fixture; that
is why this module lives outside :mod:`reconnecting.testing`, so that pytest
still starts where the testing extra is not installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

__all__ = ["pg_database", "port_forward"]


@pytest.fixture(scope="session")
def _reconnecting_server() -> Any:
    """The server the test databases live on, started once per session."""
    from reconnecting.testing.cluster import get_server

    server = get_server()
    if not server.running:
        server.start()
    return server


@pytest.fixture
def pg_database(_reconnecting_server: Any) -> Iterator[Any]:
    """A fresh test database, a set-up ``PgTestSetup``; dropped after the test."""
    from reconnecting.testing.pgsql import PgTestSetup

    setup = PgTestSetup()
    setup.setUp()
    try:
        yield setup
    finally:
        setup.tearDown()


@pytest.fixture
def port_forward(pg_database: Any) -> Iterator[Any]:
    """A set-up ``PortForwardTestSetup`` in front of ``pg_database``'s server."""
    from reconnecting.testing.portforward import PortForwardTestSetup

    proxy = PortForwardTestSetup(pg_database.host, pg_database.port)
    proxy.setUp()
    try:
        yield proxy
    finally:
        proxy.tearDown()
