"""The one Sybil configuration: every example in docs/ and in the package's
docstrings runs as a test, each page against a fresh test database."""

from doctest import ELLIPSIS, NORMALIZE_WHITESPACE

from sybil import Sybil
from sybil.parsers.rest import DocTestParser, PythonCodeBlockParser, SkipParser

from reconnecting.testing import PgTestSetup, PortForwardTestSetup


def set_up_page(namespace: dict) -> None:
    namespace["_pgtestsetup"] = pg = PgTestSetup()
    pg.setUp()


def tear_down_page(namespace: dict) -> None:
    # A page that fails half-way may leave a proxy listening or a connection
    # open; close them so the next page starts clean.
    for value in list(namespace.values()):
        if isinstance(value, PortForwardTestSetup):
            value.tearDown()
        elif hasattr(value, "close") and type(value).__module__.startswith(
            ("reconnecting", "psycopg2")
        ):
            try:
                value.close()
            except Exception:
                pass
    namespace["_pgtestsetup"].tearDown()


pytest_collect_file = Sybil(
    parsers=[
        DocTestParser(optionflags=ELLIPSIS | NORMALIZE_WHITESPACE),
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
