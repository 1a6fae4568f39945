"""What a library owes the application that imports it: a light import,
the seed's import line, and silence until logging is configured.

Each check runs in a new interpreter, whose modules and logging are
untouched by the test session.
"""

import textwrap

from helpers import run_python

from reconnecting.testing.server import SERVER_ENV


def test_import_reconnecting_imports_neither_zope_nor_transaction():
    result = run_python("""
        import sys
        import reconnecting
        heavy = [name for name in sys.modules
                 if name.split('.')[0] in ('zope', 'transaction')]
        print(heavy)
    """)
    assert (result.stdout, result.stderr) == ("[]\n", "")


def test_the_adapter_is_importable_from_the_package():
    result = run_python("""
        import sys
        from reconnecting import ReconnectingDatabaseAdapter
        from reconnecting.zope.adapter import ReconnectingDatabaseAdapter as adapter
        import reconnecting
        print(ReconnectingDatabaseAdapter is adapter,
              'transaction' in sys.modules)
        print('ReconnectingDatabaseAdapter' in dir(reconnecting))
        try:
            reconnecting.NoSuchName
        except AttributeError as exc:
            print(exc)
    """)
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        "True True",
        "True",
        "module 'reconnecting' has no attribute 'NoSuchName'",
    ]


def test_an_outage_prints_nothing_when_logging_is_not_configured(pg):
    # A real outage: the server ends the connection (57P01); the warning
    # goes to the reconnecting logger, whose NullHandler keeps Python's
    # handler of last resort from printing it on stderr.
    script = """
        import psycopg2
        from reconnecting import ReconnectingConnection, Retry
        from reconnecting.testing import PgTestSetup

        pg = PgTestSetup()
        pg.setUp()
        try:
            db = ReconnectingConnection(pg.connect)
            cursor = db.cursor()
            cursor.execute("SELECT 1")
            pg.terminate_backends()
            try:
                cursor.execute("SELECT 1")
            except Retry:
                db.rollback()
            cursor.execute("SELECT 1")
            print(db.disconnects, db.reconnects)
            db.close()
        finally:
            pg.tearDown()
    """
    # The child uses this session's server, rather than making its own.
    server = pg.server
    env = {}
    if hasattr(server, "socket_dir"):
        env[SERVER_ENV] = (
            f"host={server.socket_dir} port={server.port} user=postgres dbname=postgres"
        )
    result = run_python(script, **env)
    assert (result.stdout, result.stderr) == ("1 1\n", "")
    # The same with logging configured: the warning is there.
    configured = "import logging; logging.basicConfig()\n" + textwrap.dedent(script)
    result = run_python(configured, **env)
    assert result.stdout == "1 1\n"
    assert "WARNING:reconnecting:Database connection lost" in result.stderr
