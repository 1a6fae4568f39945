"""The adapter's contracts that docs/adapter.rst does not walk through.

Real server, real proxy, real transactions; no mocks.
"""

import io
import os
import re
import threading
from contextlib import closing
from urllib.parse import quote_plus

import psycopg2
import pytest
import transaction
from helpers import python_output
from zope.interface.verify import verifyObject

from reconnecting import CommitOutcomeUnknown, Retry
from reconnecting.testing import PortForwardTestSetup, wait_until
from reconnecting.testing.pages import MemoryResource, ResourceError
from reconnecting.zope.adapter import ReconnectingDatabaseAdapter
from reconnecting.zope.datamanager import (
    GID_PREFIX,
    ConnectionDataManager,
    PartialCommitError,
)
from reconnecting.zope.dsn import parse_dsn
from reconnecting.zope.interfaces import (
    IManageableZopeDatabaseAdapter,
    IZopeConnection,
    IZopeCursor,
)
from reconnecting.zope.twophase import TwoPhaseDataManager

DRIVER = os.environ.get("RECONNECTING_TEST_DRIVER", "psycopg2")


@pytest.fixture
def tm():
    # A private manager: nothing leaks into other tests' transactions.
    manager = transaction.TransactionManager()
    yield manager
    manager.abort()


@pytest.fixture
def adapter(pg, tm):
    adapter = ReconnectingDatabaseAdapter(
        f"dbi://{pg.user}:{pg.password}@{quote_plus(pg.host)}:{pg.port}/{pg.dbname}",
        transaction_manager=tm,
    )
    yield adapter
    tm.abort()
    adapter.disconnect()


def joined(tm):
    return [r for r in tm.get()._resources if isinstance(r, ConnectionDataManager)]


# -- imports ------------------------------------------------------------------


def test_the_core_imports_neither_zope_nor_transaction():
    code = (
        "import sys, reconnecting; print(sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('zope', 'transaction')))"
    )
    assert python_output(code) == "[]"


def test_the_adapter_imports_the_driver_only_to_connect():
    code = "import sys, reconnecting.zope.adapter; print('psycopg2' in sys.modules)"
    assert python_output(code) == "False"


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
            f"dbi://{pg.user}:{pg.password}@{proxy.host}:{proxy.port}/{pg.dbname}",
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


# -- several connections in one transaction ------------------------------------


@pytest.fixture
def proxy(pg):
    with PortForwardTestSetup() as proxy:
        yield proxy


@pytest.fixture
def pair(pg, tm, proxy, direct):
    """Make two adapters on the test database: one straight to the server,
    joined first, and one through the proxy, which votes last."""
    direct.execute("CREATE TABLE IF NOT EXISTS ledger (source text)")
    direct.execute("TRUNCATE ledger")
    made = []

    def make(two_phase=False, last_two_phase=None, **kwargs):
        last_two_phase = two_phase if last_two_phase is None else last_two_phase
        for host, port, mode in (
            (pg.host, pg.port, two_phase),
            (proxy.host, proxy.port, last_two_phase),
        ):
            made.append(
                ReconnectingDatabaseAdapter(
                    f"dbi://{pg.user}:{pg.password}@{host}:{port}/{pg.dbname}",
                    transaction_manager=tm,
                    two_phase=mode,
                    driver=DRIVER,
                    **kwargs,
                )
            )
        return made[-2:]

    yield make
    tm.abort()
    for adapter in made:
        adapter.disconnect()


def write_both(first, last):
    first().cursor().execute("INSERT INTO ledger VALUES ('first')")
    last().cursor().execute("INSERT INTO ledger VALUES ('last')")


def ledger(direct):
    direct.execute("SELECT source, count(*) FROM ledger GROUP BY 1 ORDER BY 1")
    return dict(direct.fetchall())


def prepared(direct):
    # This database's: other runs may share the server.
    direct.execute(
        "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
        " ORDER BY gid"
    )
    return [gid for (gid,) in direct.fetchall()]


def run(tm, unit_of_work, tries=3):
    """Run the unit of work under tm.attempts(); return how often it ran."""
    runs = 0
    for attempt in tm.attempts(tries):
        with attempt:
            runs += 1
            unit_of_work(runs)
    return runs


def test_one_phase_never_retries_after_a_sibling_committed(
    pair, tm, proxy, direct, caplog
):
    first, last = pair()

    def unit_of_work(runs):
        write_both(first, last)
        proxy.drop()  # the last vote finds its connection gone

    with pytest.raises(PartialCommitError) as error:
        run(tm, unit_of_work)
    assert ledger(direct) == {"first": 1}  # once, and never redone
    assert error.value.committed == (first.redacted_dsn,)
    assert error.value.not_committed == (last.redacted_dsn,)
    assert "Retry: OperationalError:" in error.value.reason
    assert not isinstance(error.value, Retry)
    assert isinstance(error.value.__cause__, Retry)
    message = str(error.value)
    assert str(proxy.port) in message and str(pg_port(first)) in message
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert logged == [f"{first.redacted_dsn} committed before the transaction failed"]


def pg_port(adapter):
    return parse_dsn(adapter.getDSN())["port"]


def test_partial_commit_error_is_not_retried_by_any_data_manager(pair, tm):
    first, last = pair()
    write_both(first, last)
    error = PartialCommitError(["a"], ["b"], "Retry: x")
    assert [dm.should_retry(error) for dm in joined(tm)] == [False, False]
    assert "committed a; not committed b (Retry: x)" in str(error)


def joined2(tm):
    return [r for r in tm.get()._resources if isinstance(r, TwoPhaseDataManager)]


def test_two_phase_retries_an_outage_at_the_last_vote(pair, tm, proxy, direct):
    first, last = pair(two_phase=True)

    def unit_of_work(runs):
        write_both(first, last)
        if runs == 1:
            proxy.drop()

    assert run(tm, unit_of_work) == 2
    assert ledger(direct) == {"first": 1, "last": 1}
    assert prepared(direct) == []


@pytest.mark.parametrize("deliver", [True, False])
def test_two_phase_resolves_a_lost_commit_prepared(pair, tm, proxy, direct, deliver):
    first, last = pair(two_phase=True)

    def unit_of_work(runs):
        write_both(first, last)
        proxy.cut_on_commit(deliver=deliver)

    assert run(tm, unit_of_work) == 1
    assert proxy.commit_cuts == 1
    assert ledger(direct) == {"first": 1, "last": 1}
    assert prepared(direct) == []


def test_two_phase_transaction_ids_are_unique_and_recognisable(pair, tm, direct):
    first, last = pair(two_phase=True)
    gids = []
    for _ in range(2):
        write_both(first, last)
        txn = tm.get()
        managers = sorted(joined2(tm), key=lambda dm: dm.sortKey())
        for dm in managers:
            dm.tpc_begin(txn)
            dm.commit(txn)
            dm.tpc_vote(txn)
        assert prepared(direct) == sorted(dm.gid for dm in managers)
        gids += [dm.gid for dm in managers]
        tm.abort()  # ROLLBACK PREPARED
        assert prepared(direct) == []
    assert ledger(direct) == {}
    name = gids[0][len(GID_PREFIX) :].rsplit(":", 1)[0]
    assert gids[:2] == [f"{GID_PREFIX}{name}:1", f"{GID_PREFIX}{name}:2"]
    assert len(set(gids)) == 4 and all(g.startswith(GID_PREFIX) for g in gids)
    assert len({gid.rsplit(":", 1)[0] for gid in gids}) == 2  # one name per txn


def test_two_phase_votes_before_one_phase(pair, tm, proxy, direct):
    # The one-phase connection votes last even when it joined first, so its
    # failure rolls back what the other prepared: atomic, and retried.
    first, last = pair(two_phase=True, last_two_phase=False)

    def unit_of_work(runs):
        last().cursor().execute("INSERT INTO ledger VALUES ('last')")
        first().cursor().execute("INSERT INTO ledger VALUES ('first')")
        in_vote_order = sorted(joined(tm), key=lambda dm: dm.sortKey())
        assert [type(dm) for dm in in_vote_order] == [
            TwoPhaseDataManager,
            ConnectionDataManager,
        ]
        if runs == 1:
            proxy.drop()

    assert run(tm, unit_of_work) == 2
    assert ledger(direct) == {"first": 1, "last": 1} and prepared(direct) == []


def test_two_phase_unreachable_at_commit_prepared(pair, tm, proxy, direct):
    first, last = pair(two_phase=True, resolve_timeout=0.2)

    def unit_of_work(runs):
        write_both(first, last)
        proxy.cut_on_commit(deliver=False, go_down=True)

    with pytest.raises(CommitOutcomeUnknown, match="stays prepared"):
        run(tm, unit_of_work)
    (gid,) = prepared(direct)  # the decision was commit: nobody rolls it back
    assert gid.startswith(GID_PREFIX) and gid.endswith(":2")
    assert ledger(direct) == {"first": 1}
    direct.execute(f"COMMIT PREPARED '{gid}'")
    assert ledger(direct) == {"first": 1, "last": 1}


def test_two_phase_rolled_back_by_somebody_else(pair, tm, proxy, direct):
    first, last = pair(two_phase=True, resolve_timeout=60)
    write_both(first, last)
    proxy.cut_on_commit(deliver=False, go_down=True)
    outcome = []
    committer = threading.Thread(target=lambda: outcome.append(commit_or_error(tm)))
    committer.start()
    try:
        wait_until(lambda: proxy.commit_cuts == 1, 10)
        (gid,) = prepared(direct)
        direct.execute(f"ROLLBACK PREPARED '{gid}'")
    finally:
        proxy.tearDown()
        proxy.setUp()
        committer.join(30)
    (error,) = outcome
    assert isinstance(error, PartialCommitError), error
    assert gid in error.reason and "rolled back by somebody else" in error.reason
    assert error.committed == (first.redacted_dsn,)
    assert ledger(direct) == {"first": 1}


def commit_or_error(tm):
    try:
        tm.commit()
    except Exception as exc:
        return exc


@pytest.mark.parametrize("disconnect", [False, True])
def test_two_phase_abort_rolls_back_later_when_unreachable(
    pair, tm, proxy, direct, disconnect
):
    first, last = pair(two_phase=True, resolve_timeout=0.2)
    write_both(first, last)
    txn = tm.get()
    managers = sorted(joined2(tm), key=lambda dm: dm.sortKey())
    for dm in managers:
        dm.tpc_begin(txn)
        dm.tpc_vote(txn)
    proxy.tearDown()  # the last cannot roll back now
    tm.abort()
    gid = managers[1].gid
    assert prepared(direct) == [gid] and dict(last.prepared) == {gid: "abort"}
    if disconnect:
        last.disconnect()  # the thread's connection is closed: the note stays
    proxy.setUp()
    last().cursor().execute("SELECT 1")  # rolls back what was left first
    assert prepared(direct) == [] and ledger(direct) == {}
    assert dict(last.prepared) == {}


# -- the rule: an unknown decision stays unknown; nothing prepared is forgotten --


def backends_preparing(pg):
    with closing(pg.connect()) as watcher:
        cursor = watcher.cursor()
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
            " AND query LIKE 'PREPARE TRANSACTION%'"
        )
        return cursor.fetchone()[0]


def test_an_outage_while_prepare_runs_leaves_no_orphan(pg, pair, tm, proxy, direct):
    # A deferred trigger makes PREPARE TRANSACTION take a while, as
    # synchronous replication would; the connection breaks meanwhile.
    direct.execute("CREATE TABLE slow_key (k int PRIMARY KEY)")
    direct.execute(
        "CREATE FUNCTION slow_prepare() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN PERFORM pg_sleep(1.5); RETURN NULL; END $$"
    )
    direct.execute(
        "CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON slow_key DEFERRABLE"
        " INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_prepare()"
    )
    _, last = pair(two_phase=True)
    last().cursor().execute("INSERT INTO slow_key VALUES (1)")

    def drop_while_preparing():
        wait_until(lambda: backends_preparing(pg) == 1)
        proxy.drop()

    dropper = threading.Thread(target=drop_while_preparing)
    dropper.start()
    with pytest.raises(Retry):
        tm.commit()
    dropper.join()
    tm.abort()
    wait_until(lambda: backends_preparing(pg) == 0)
    assert prepared(direct) == [] and dict(last.prepared) == {}
    last().cursor().execute("INSERT INTO slow_key VALUES (1)")  # the retry
    tm.commit()
    direct.execute("SELECT k FROM slow_key")
    assert direct.fetchall() == [(1,)]


def test_an_unknown_one_phase_decision_leaves_the_prepared_part(
    pair, tm, proxy, direct
):
    # The one-phase connection decides for the prepared one; its COMMIT
    # went through, but nobody can tell.
    first, last = pair(two_phase=True, last_two_phase=False, resolve_timeout=0.2)
    write_both(first, last)
    proxy.cut_on_commit(deliver=True, go_down=True)
    with pytest.raises(CommitOutcomeUnknown) as error:
        tm.commit()
    tm.abort()
    (gid,) = prepared(direct)
    assert f"left prepared: {gid}" in str(error.value)
    assert dict(first.prepared) == {gid: "unknown"}
    assert ledger(direct) == {"last": 1}
    assert first.prepared.finish(gid, commit=True) == {gid: "committed"}
    assert ledger(direct) == {"first": 1, "last": 1} and prepared(direct) == []
    assert dict(first.prepared) == {}


def test_a_failing_tpc_finish_elsewhere_commits_the_prepared_work(pair, tm, direct):
    first, last = pair(two_phase=True)
    storage = MemoryResource(tm, key="a storage", fail_at="finish")
    write_both(first, last)
    storage.write("object")
    with pytest.raises(ResourceError):
        tm.commit()  # every vote said yes: the decision was to commit
    tm.abort()
    assert ledger(direct) == {"first": 1, "last": 1} and prepared(direct) == []


def test_partial_commit_error_tells_unknown_from_not_committed(pair, tm, proxy, direct):
    first, last = pair(resolve_timeout=0.2)
    write_both(first, last)
    proxy.cut_on_commit(deliver=True, go_down=True)  # the last commit in doubt
    with pytest.raises(PartialCommitError) as error:
        tm.commit()
    tm.abort()
    assert error.value.committed == (first.redacted_dsn,)
    assert error.value.not_committed == ()
    assert error.value.unknown == (last.redacted_dsn,)
    assert "outcome unknown" in str(error.value)
    assert ledger(direct) == {"first": 1, "last": 1}  # both did commit


def test_commit_prepared_in_doubt_is_bounded(pair, tm, proxy, direct):
    # The reply of COMMIT PREPARED is lost, and the reconnect is silent.
    first, last = pair(two_phase=True, resolve_timeout=0.5)
    write_both(first, last)
    proxy.cut_on_commit(deliver=False, go_down=True)

    def silence_after_the_cut():
        wait_until(lambda: proxy.commit_cuts == 1)
        proxy.tearDown()
        proxy.blackhole()  # before listening: no reconnect slips through
        proxy.setUp()

    silencer = threading.Thread(target=silence_after_the_cut)
    silencer.start()
    outcome = []
    committer = threading.Thread(target=lambda: outcome.append(commit_or_error(tm)))
    committer.start()
    committer.join(60)  # only to fail, not hang, if it is not bounded
    silencer.join()
    proxy.restore()
    proxy.drop()  # lets the silent connect give up
    assert not committer.is_alive()
    (error,) = outcome
    assert isinstance(error, CommitOutcomeUnknown), error
    assert "stays prepared" in str(error)
    gid = error.transaction_id
    assert prepared(direct) == [gid]
    assert dict(last.prepared) == {gid: "commit"}  # the decision was commit
    assert last.prepared.finish() == {gid: "committed"}
    assert ledger(direct) == {"first": 1, "last": 1} and prepared(direct) == []


@pytest.mark.parametrize("two_phase", [False, True])
@pytest.mark.parametrize("optimistic", [False, True])
def test_savepoints(pair, tm, direct, two_phase, optimistic):
    first, _ = pair(two_phase=two_phase)
    cursor = first().cursor()
    cursor.execute("INSERT INTO ledger VALUES ('kept')")
    savepoint = tm.savepoint(optimistic=optimistic)
    cursor.execute("INSERT INTO ledger VALUES ('undone')")
    savepoint.rollback()
    cursor.execute("INSERT INTO ledger VALUES ('again')")
    savepoint.rollback()  # as often as asked
    cursor.execute("INSERT INTO ledger VALUES ('after')")
    tm.commit()
    assert ledger(direct) == {"after": 1, "kept": 1}


def test_a_savepoint_before_the_connection_joined(pair, tm, direct):
    first, _ = pair()
    storage = MemoryResource(tm)
    storage.write("joins first")
    savepoint = tm.savepoint()
    first().cursor().execute("INSERT INTO ledger VALUES ('undone')")
    savepoint.rollback()  # the connection joined after it: rolled back
    first().cursor().execute("INSERT INTO ledger VALUES ('kept')")
    tm.commit()
    assert ledger(direct) == {"kept": 1}


def test_a_savepoint_after_an_outage_is_retried(pair, tm, proxy, direct):
    _, last = pair()

    def unit_of_work(runs):
        last().cursor().execute("INSERT INTO ledger VALUES ('last')")
        if runs == 1:
            proxy.drop()  # the savepoint finds the connection gone
        tm.savepoint().rollback()

    assert run(tm, unit_of_work) == 2
    assert ledger(direct) == {"last": 1}


def test_the_driver_is_chosen_by_name(pg, tm):
    for driver in ("psycopg2", "psycopg"):
        adapter = ReconnectingDatabaseAdapter(
            f"dbi://{pg.user}:{pg.password}@{pg.host}:{pg.port}/{pg.dbname}",
            transaction_manager=tm,
            driver=driver,
        )
        cursor = adapter().cursor()
        cursor.execute("SELECT 1")
        assert cursor.fetchall() == [[1]]
        assert type(adapter().connection._raw).__module__.split(".")[0] == driver
        tm.abort()
        adapter.disconnect()
    with pytest.raises(ValueError, match="psycopg2, psycopg"):
        ReconnectingDatabaseAdapter("dbi://db", driver="sqlite3")


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
        (
            "dbi://my+db;;sslmode=1;options=x%3By;",
            {"dbname": "my db", "sslmode": "1", "options": "x;y"},
        ),
        ("dbi://db;port=6543", {"dbname": "db", "port": "6543"}),
        # several hosts, each with its port, or ports as a parameter
        ("dbi://@h1:1,h2:2/db", {"host": "h1,h2", "port": "1,2", "dbname": "db"}),
        ("dbi://@h1,h2:2/", {"host": "h1,h2", "port": ",2"}),
        ("dbi://@h1,h2/;port=1,2", {"host": "h1,h2", "port": "1,2"}),
        ("dbi://@h1,h2/;port=1", {"host": "h1,h2", "port": "1"}),
        ("dbi://@[::1]:1,[fe80::1%25lo]/", {"host": "::1,fe80::1%lo", "port": "1,"}),
        # an IPv6 address in brackets is a host, even without '@'
        ("dbi://[::1]/db", {"host": "::1", "dbname": "db"}),
        ("dbi://[::1]:5433/db", {"host": "::1", "port": "5433", "dbname": "db"}),
        (
            "dbi://u:p@[::1]/db",
            {"user": "u", "password": "p", "host": "::1", "dbname": "db"},
        ),
        ("dbi://u:%5Bp/db", {"user": "u", "password": "[p", "dbname": "db"}),
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
        "dbi://@[::1/db",
        "dbi://@[127.0.0.1]/db",
        "dbi://@::1/db",
        "dbi://@h]/db",
        "dbi://@h1,h2,h3/db;port=1,2",
        "dbi://@h1:1,h2:x/db",
        "dbi://db;port=1,2",
        "dbi://db;sslmod=require",  # not a libpq keyword
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


@pytest.mark.parametrize(
    "dsn",
    [
        "dbi://a%40b@%2Ftmp:5432/my+db;application_name=x%3By",
        "dbi://u@h1:1,h2:2/db",
        "dbi://u@h1,h2/db;port=5432",
        "dbi://u@[::1]:5433,h2/db",
        "dbi://[::1]/db",
        "dbi://db;port=5432",
    ],
)
def test_repr_is_a_dsn_that_parses_the_same(dsn):
    shown = repr(ReconnectingDatabaseAdapter(dsn)).split(" ", 1)[1][:-1]
    assert parse_dsn(shown) == parse_dsn(dsn)


@pytest.mark.parametrize(
    "dsn, password",
    [
        ("dbi://u:p@ss:abc/db", "p@ss:abc"),  # unencoded '@', and no host
        ("dbi://u:hun;ter2@h/db", "hun;ter2"),  # unencoded ';'
        ("dbi://u:sec/ret:@h:x/db", "sec/ret:"),
        ("http://u:hunter2@h/db", "hunter2"),
        # an unencoded ';' in a password given as a parameter
        ("dbi://u@h/db;password=hun;ter2", "hun;ter2"),
        ("dbi://u@h/db;password=hun;ter=2", "hun;ter=2"),
        ("dbi://u@h/db;password=hun;ter=2;sslmode=x", "hun;ter=2"),
        ("dbi://u@h/db;sslpassword=hun;host=h;port=x", "hun;host=h"),
        ("dbi://u@h/db;password=p;password=q", "q"),
        ("dbi://u:hunter2@[::1/db", "hunter2"),
        ("dbi://u:hunter2@h1:1,h2:x/db", "hunter2"),
    ],
)
def test_errors_never_quote_the_password(dsn, password):
    with pytest.raises(ValueError) as error:
        parse_dsn(dsn)
    fragments = [part for part in re.split(r"[@:;/]", password) if len(part) > 1]
    assert not [part for part in fragments if part in str(error.value)]
