"""Fixtures for tests that need a real PostgreSQL server and real outages.

For a project's own tests (the ``testing`` extra):

- ``pgsql``: :class:`~reconnecting.testing.pgsql.PgTestSetup`, a fresh
  database per test, on a throwaway cluster (``cluster``:
  :class:`~reconnecting.testing.cluster.Cluster`) or on the server
  ``RECONNECTING_TEST_SERVER`` names (``server``);
- ``portforward``:
  :class:`~reconnecting.testing.portforward.PortForwardTestSetup`, a proxy
  that makes outages for real: drops, refusals, half-open links, delays;
- ``standby`` (a streaming standby, for failover), ``pgbouncer`` (a
  throwaway PgBouncer), ``binaries`` (finding the server programs),
  ``waiting`` (:func:`~reconnecting.testing.waiting.wait_until`), and the
  pytest plugin (``reconnecting.pytest_plugin``: the ``pg_database`` and
  ``port_forward`` fixtures).

Only for the documentation's pages, kept apart in ``pages/``: the helpers
they import in one line (``pages``, ``pages.asyncio``,
``pages.sqlalchemy``) and the Sybil evaluator that awaits their asyncio
examples.  Private modules (``_x.py``) serve the fixtures above.
"""

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
