"""The one Sybil configuration: every example in docs/ and in the package's
docstrings runs as a test, each page against a fresh test database."""

import importlib
import inspect
import os
import re
from doctest import ELLIPSIS, NORMALIZE_WHITESPACE

from psycopg2 import sql
from sybil import Sybil
from sybil.evaluators.doctest import OutputChecker
from sybil.parsers.rest import PythonCodeBlockParser, SkipParser

from reconnecting.testing import PgTestSetup, PortForwardTestSetup
from reconnecting.testing.cluster import Cluster, get_server
from reconnecting.testing.pages._doctest_asyncio import (
    AwaitingDocTestParser,
    close_event_loop,
)
from reconnecting.testing.standby import Standby

# Every page runs under either driver; CI runs the suite once with each.
DRIVER = os.environ.get("RECONNECTING_TEST_DRIVER", "psycopg2")
if DRIVER not in ("psycopg2", "psycopg"):
    raise ValueError(
        f"RECONNECTING_TEST_DRIVER must be psycopg2 or psycopg, not {DRIVER!r}"
    )


def set_up_page(namespace: dict) -> None:
    # Pages connect with `driver.connect(...)` and may branch on DRIVER.
    namespace["DRIVER"] = DRIVER
    namespace["driver"] = importlib.import_module(DRIVER)
    namespace["_pgtestsetup"] = pg = PgTestSetup()
    pg.setUp()
    namespace["_roles"] = roles()


def roles() -> set[str]:
    """The roles of the test server (they outlive a page's database)."""
    conn = get_server().admin_connect()
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT rolname FROM pg_roles")
        return {name for (name,) in cursor.fetchall()}
    finally:
        conn.close()


def tear_down_page(namespace: dict) -> None:
    # Whatever a page left, finished or failed half-way: proxies listening,
    # connections open, servers of its own (standbys first, since they may
    # hold their primary's commits), and roles; so the next page starts clean.
    values = list(namespace.values())
    extra_servers = [
        value
        for value in values
        if isinstance(value, Cluster) and value is not get_server()
    ]
    extra_servers.sort(key=lambda server: not isinstance(server, Standby))
    for value in values:
        if isinstance(value, PortForwardTestSetup):
            value.tearDown()
        elif type(value).__module__.startswith("sqlalchemy") and hasattr(
            value, "dispose"
        ):
            disposing = value.dispose()  # an engine: its pooled connections
            if inspect.isawaitable(disposing):  # an asyncio engine
                namespace["_event_loop"].run_until_complete(disposing)
        elif hasattr(value, "close") and type(value).__module__.startswith(
            ("reconnecting", "psycopg2", "psycopg")
        ):
            try:
                closing = value.close()
                if inspect.isawaitable(closing):  # an asyncio object
                    namespace["_event_loop"].run_until_complete(closing)
            except Exception:
                pass
    close_event_loop(namespace)
    for server in extra_servers:
        server.destroy()
    namespace["_pgtestsetup"].tearDown()
    left = roles() - namespace["_roles"]
    if left:
        admin = get_server().admin_connect()
        try:
            for role in sorted(left):
                admin.cursor().execute(
                    sql.SQL("DROP ROLE {}").format(sql.Identifier(role))
                )
        finally:
            admin.close()


# psycopg 3's execute() returns its cursor, psycopg2's returns None.  A page
# shows an execute() line once, with no output, for both drivers; so where
# a page expects no cursor, the lines that echo one are no failure.
CURSOR_ECHO = re.compile(
    r"^<(reconnecting\.connection\.ReconnectingCursor|psycopg\.\w*Cursor) .*>\n",
    re.MULTILINE,
)


class DriverNeutralChecker(OutputChecker):
    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        if DRIVER == "psycopg" and "Cursor " not in want:
            got = CURSOR_ECHO.sub("", got)
        return super().check_output(want, got, optionflags)


# Examples may await: asyncio.rst runs in its page's event loop.
doctests = AwaitingDocTestParser(optionflags=ELLIPSIS | NORMALIZE_WHITESPACE)
doctests.string_parser.evaluator.runner._checker = DriverNeutralChecker()

pytest_collect_file = Sybil(
    parsers=[
        doctests,
        PythonCodeBlockParser(),
        SkipParser(),
    ],
    patterns=[
        "README.rst",
        "docs/*.rst",
        "reconnecting/*.py",
        "reconnecting/testing/*.py",
    ],
    setup=set_up_page,
    teardown=tear_down_page,
).pytest()


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the figures the soak tests record, pass or fail."""
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            for name, value in getattr(report, "user_properties", []):
                if name == "soak":
                    terminalreporter.write_line(value)


def pytest_configure(config) -> None:
    # The examples of a page share its namespace: with pytest-xdist (-n 2),
    # each page must run whole on one worker.
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadfile"
