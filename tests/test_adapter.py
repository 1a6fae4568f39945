"""The adapter's contracts that docs/adapter.rst does not walk through.

Real server, real proxy, real transactions; no mocks.
"""

import io
import re
import subprocess
import sys
from urllib.parse import quote_plus

import psycopg2
import pytest
import transaction
from zope.interface.verify import verifyObject

from reconnecting import CommitOutcomeUnknown, Retry
from reconnecting.adapter import (
    ConnectionDataManager,
    ReconnectingDatabaseAdapter,
    parse_dsn,
)
from reconnecting.interfaces import (
    IManageableZopeDatabaseAdapter,
    IZopeConnection,
    IZopeCursor,
)
from reconnecting.testing import PortForwardTestSetup


@pytest.fixture
def tm():
    # A private manager: nothing leaks into other tests' transactions.
    manager = transaction.TransactionManager()
    yield manager
    manager.abort()


@pytest.fixture
def adapter(pg, tm):
    adapter = ReconnectingDatabaseAdapter(
        f"dbi://{pg.user}@{quote_plus(pg.host)}:{pg.port}/{pg.dbname}",
        transaction_manager=tm,
    )
    yield adapter
    tm.abort()
    adapter.disconnect()


def joined(tm):
    return [r for r in tm.get()._resources if isinstance(r, ConnectionDataManager)]


# -- imports ------------------------------------------------------------------


def run_python(code):
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_the_core_imports_neither_zope_nor_transaction():
    code = (
        "import sys, reconnecting; print(sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('zope', 'transaction')))"
    )
    assert run_python(code) == "[]"


def test_the_adapter_imports_the_driver_only_to_connect():
    code = "import sys, reconnecting.adapter; print('psycopg2' in sys.modules)"
    assert run_python(code) == "False"


# -- interfaces ---------------------------------------------------------------


def test_objects_have_what_their_interfaces_promise(adapter):
    db = adapter()
    assert verifyObject(IManageableZopeDatabaseAdapter, adapter)
    assert verifyObject(IZopeConnection, db)
    assert verifyObject(IZopeCursor, db.cursor())


def test_rows_are_lists_from_every_fetch(adapter):
    cursor = adapter().cursor()
    cursor.execute("SELECT generate_series(1, 5)")
    assert cursor.fetchone() == [1]
    assert cursor.fetchmany(2) == [[2], [3]]
    assert next(cursor) == [4]
    assert cursor.fetchall() == [[5]]
    cursor.execute("SELECT 1 WHERE false")
    assert cursor.fetchone() is None


def test_connect_is_lazy_and_per_thread_state_is_reported(adapter):
    assert not adapter.isConnected()
    adapter.connect()
    assert adapter.isConnected()
    db = adapter()
    assert "not connected" in repr(db.connection)
    adapter.disconnect()
    assert not adapter.isConnected() and db.closed
    assert adapter() is not db


def test_a_closed_connection_is_replaced(adapter):
    db = adapter()
    db.close()
    assert not adapter.isConnected()
    assert adapter() is not db


def test_set_encoding_checks_the_name(adapter):
    adapter.setEncoding("latin-1")
    assert adapter.getEncoding() == "latin-1"
    with pytest.raises(LookupError):
        adapter.setEncoding("no-such-encoding")
    assert adapter.getEncoding() == "latin-1"


# -- the data manager ---------------------------------------------------------


def test_joins_once_per_transaction(adapter, tm):
    cursor = adapter().cursor()
    cursor.execute("SELECT 1")
    cursor.execute("SELECT 2")
    cursor.fetchall()
    adapter().rollback()  # a direct rollback does not leave the transaction
    cursor.execute("SELECT 3")
    assert len(joined(tm)) == 1
    tm.commit()
    cursor.execute("SELECT 4")
    assert len(joined(tm)) == 1


def test_data_manager_api(adapter, tm):
    adapter().cursor().execute("SELECT 1")
    (dm,) = joined(tm)
    assert isinstance(dm.sortKey(), str)
    assert dm.sortKey() > "z"  # after the usual keys: it votes last
    assert dm.transaction_manager is tm
    assert dm.should_retry(Retry())
    assert not dm.should_retry(ValueError("not an outage"))
    assert not dm.should_retry(CommitOutcomeUnknown("123", "unreachable"))


def test_abort_is_idempotent(adapter, tm, direct):
    direct.execute("CREATE TABLE abort_twice (x int)")
    cursor = adapter().cursor()
    cursor.execute("INSERT INTO abort_twice VALUES (1)")
    txn = tm.get()
    (dm,) = joined(tm)
    dm.abort(txn)
    dm.abort(txn)
    dm.tpc_abort(txn)
    tm.abort()
    direct.execute("SELECT count(*) FROM abort_twice")
    assert direct.fetchone() == (0,)


def test_abort_after_disconnect_does_not_raise(adapter, tm):
    adapter().cursor().execute("SELECT 1")
    adapter.disconnect()
    tm.abort()


def test_committing_work_of_a_closed_connection_fails(adapter, tm):
    adapter().cursor().execute("SELECT 1")
    adapter.disconnect()
    with pytest.raises(psycopg2.InterfaceError):
        tm.commit()


def test_a_failing_vote_aborts_the_transaction(adapter, tm, direct):
    direct.execute("CREATE TABLE deferred (x int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
    cursor = adapter().cursor()
    cursor.execute("INSERT INTO deferred VALUES (1), (1)")  # checked at COMMIT
    with pytest.raises(psycopg2.errors.UniqueViolation):
        tm.commit()
    tm.abort()
    cursor.execute("INSERT INTO deferred VALUES (2)")
    tm.commit()
    direct.execute("SELECT x FROM deferred")
    assert direct.fetchall() == [(2,)]


def test_run_retries_after_an_outage(pg, tm, direct):
    direct.execute("CREATE TABLE run_retry (x int)")
    with PortForwardTestSetup() as proxy:
        adapter = ReconnectingDatabaseAdapter(
            f"dbi://{pg.user}@{proxy.host}:{proxy.port}/{pg.dbname}",
            transaction_manager=tm,
        )
        runs = []

        def unit_of_work():
            cursor = adapter().cursor()
            cursor.execute("INSERT INTO run_retry VALUES (1)")
            runs.append(1)
            if len(runs) == 1:
                proxy.drop()
            cursor.execute("SELECT 1")

        tm.run(unit_of_work)
        adapter.disconnect()
    assert len(runs) == 2
    direct.execute("SELECT count(*) FROM run_retry")
    assert direct.fetchone() == (1,)


def test_other_cursor_methods_join_too(adapter, tm, direct):
    direct.execute("CREATE TABLE copied (x int)")
    cursor = adapter().cursor()
    cursor.copy_expert("COPY copied FROM STDIN", io.StringIO("7\n"))
    assert len(joined(tm)) == 1
    tm.commit()
    direct.execute("SELECT x FROM copied")
    assert direct.fetchall() == [(7,)]


# -- DSNs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "dsn, expected",
    [
        ("dbi://", {}),
        ("dbi://db", {"dbname": "db"}),
        ("dbi://u:p/db", {"user": "u", "password": "p", "dbname": "db"}),
        ("dbi://u@h/db", {"user": "u", "host": "h", "dbname": "db"}),
        ("dbi://@h:5/", {"host": "h", "port": "5"}),
        ("dbi://@[::1]:5432/db", {"host": "::1", "port": "5432", "dbname": "db"}),
        ("dbi://@%2Frun%2Fpg/db", {"host": "/run/pg", "dbname": "db"}),
        (
            "dbi://u:a/b@c@h/db",
            {"user": "u", "password": "a/b@c", "host": "h", "dbname": "db"},
        ),
        ("dbi://my+db;;a=1;b=x%3By;", {"dbname": "my db", "a": "1", "b": "x;y"}),
        ("dbi://db;port=6543", {"dbname": "db", "port": "6543"}),
    ],
)
def test_parse_dsn(dsn, expected):
    assert parse_dsn(dsn) == expected


@pytest.mark.parametrize(
    "dsn",
    [
        "",
        "junk",
        "dbi:/db",
        "DBI://db",
        "dbi://db;port=x",
        "dbi://db;=1",
        "dbi://db;a b=1",
        "dbi://@h:0/db",
        "dbi://@h:٣/db",  # a digit, but not an ASCII one
        "dbi://@[::1]x/db",
    ],
)
def test_parse_dsn_rejects(dsn):
    with pytest.raises(ValueError):
        parse_dsn(dsn)


def test_parse_dsn_wants_a_string():
    with pytest.raises(TypeError):
        parse_dsn(b"dbi://db")


@pytest.mark.parametrize(
    "dsn",
    [
        "dbi://u:s3cr3t@h/db",
        "dbi://u@h/db;password=s3cr3t",
        "dbi://u@h/db;sslpassword=s3cr3t",
    ],
)
def test_repr_hides_passwords(dsn):
    adapter = ReconnectingDatabaseAdapter(dsn)
    assert "s3cr3t" not in repr(adapter) and "***" in repr(adapter)
    assert adapter.getDSN() == dsn


def test_repr_is_a_dsn_that_parses_the_same(pg):
    dsn = "dbi://a%40b@%2Ftmp:5432/my+db;application_name=x%3By"
    shown = repr(ReconnectingDatabaseAdapter(dsn)).split(" ", 1)[1][:-1]
    assert parse_dsn(shown) == parse_dsn(dsn)


@pytest.mark.parametrize(
    "dsn, password",
    [
        ("dbi://u:p@ss:abc/db", "p@ss:abc"),  # unencoded '@', and no host
        ("dbi://u:hun;ter2@h/db", "hun;ter2"),  # unencoded ';'
        ("dbi://u:sec/ret:@h:x/db", "sec/ret:"),
        ("http://u:hunter2@h/db", "hunter2"),
    ],
)
def test_errors_never_quote_the_password(dsn, password):
    with pytest.raises(ValueError) as error:
        parse_dsn(dsn)
    fragments = [part for part in re.split(r"[@:;/]", password) if len(part) > 1]
    assert not [part for part in fragments if part in str(error.value)]
