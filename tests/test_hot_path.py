"""The hot path and the long way of the sync cursor.

While its server connection is the current one, a cursor calls the driver
cursor straight away; otherwise its stand-in raises a private exception
and the call takes the long way (connect, or refuse). That exception is
the cursor's business: no error the caller sees may carry it in its chain.
"""

import asyncio
import importlib

import pytest

from reconnecting import ReconnectingConnection, Retry


def chain(error):
    """``error`` and every error it was raised from or during."""
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def names_in_chain(error):
    return [type(each).__name__ for each in chain(error)]


@pytest.fixture(params=["psycopg2", "psycopg"])
def connection(request, pg):
    driver = importlib.import_module(request.param)
    connection = ReconnectingConnection(lambda: driver.connect(pg.dsn))
    yield connection
    connection.close()


CALLS = {
    "execute": lambda cursor: cursor.execute("SELECT 1"),
    "executemany": lambda cursor: cursor.executemany("SELECT %s", [(1,)]),
    "fetchone": lambda cursor: cursor.fetchone(),
    "fetchmany": lambda cursor: cursor.fetchmany(2),
    "fetchall": lambda cursor: cursor.fetchall(),
}


@pytest.mark.parametrize("call", CALLS)
def test_an_error_of_the_long_way_carries_nothing_of_the_hot_path(connection, call):
    cursor = connection.cursor()
    cursor.execute("SELECT pg_backend_pid()")
    with pytest.raises(Retry):
        cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    with pytest.raises(Retry) as refused:  # until rollback()
        CALLS[call](cursor)
    connection.close()
    with pytest.raises(connection.InterfaceError) as closed:
        CALLS[call](cursor)
    for error in refused.value, closed.value:
        assert "NotLive" not in " ".join(names_in_chain(error))


def test_the_cursor_takes_the_hot_path_again_after_the_outage(connection):
    cursor = connection.cursor()
    cursor.execute("SELECT pg_backend_pid()")
    (first_pid,) = cursor.fetchone()
    with pytest.raises(Retry):
        cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    connection.rollback()
    cursor.execute("SELECT pg_backend_pid(), 2")
    (pid, two) = cursor.fetchone()
    assert pid != first_pid and two == 2
    assert cursor._live is cursor._raw_cursor  # live again: the hot path
    cursor.execute("SELECT 3")
    assert cursor.fetchall() == [(3,)]


def test_a_cursor_made_while_connected_is_live_at_once(connection):
    connection.cursor().execute("SELECT 1")  # connects
    cursor = connection.cursor()
    assert cursor._live is cursor._raw_cursor is not None
    cursor.execute("SELECT 2")
    assert cursor.fetchone() == (2,)


def test_the_settings_of_a_cursor_are_its_own_and_outlive_an_outage(connection):
    first, second = connection.cursor(), connection.cursor()
    default = second.arraysize
    first.arraysize = default + 6
    assert (first.arraysize, second.arraysize) == (default + 6, default)
    with pytest.raises(Retry):
        first.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    connection.rollback()
    first.execute("SELECT 1")
    assert (first.arraysize, connection.cursor().arraysize) == (default + 6, default)


# The connection has no __getattr__ either (it would make every read of
# its attributes slow): the driver connection's names are descriptors on
# its class, those of both drivers from the start, others from the first
# server connection of their class on.


def test_an_unknown_attribute_fails_without_connecting(pg):
    import psycopg2

    opened = []

    def factory():
        opened.append(psycopg2.connect(pg.dsn))
        return opened[-1]

    connection = ReconnectingConnection(factory)
    with pytest.raises(AttributeError):
        connection.no_such_attribute  # noqa: B018
    assert opened == []
    assert connection.server_version >= 90000  # a driver's name: connects
    assert len(opened) == 1
    with pytest.raises(AttributeError):
        connection.no_such_attribute  # noqa: B018
    connection.close()


def test_the_names_of_a_custom_driver_connection_come_with_it(pg):
    import psycopg2.extensions

    class LedgerConnection(psycopg2.extensions.connection):
        ledger_name = "main"

        def backend(self):
            with self.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                return cursor.fetchone()[0]

    connection = ReconnectingConnection(
        lambda: psycopg2.connect(pg.dsn, connection_factory=LedgerConnection)
    )
    cursor = connection.cursor()
    cursor.execute("SELECT pg_backend_pid()")
    (pid,) = cursor.fetchone()
    assert connection.ledger_name == "main"
    assert connection.backend() == pid  # run on the current server connection
    with pytest.raises(Retry):
        cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    connection.rollback()
    assert connection.backend() != pid  # the new server connection's
    connection.close()


def has_a_real_dict(obj):
    """Whether ``obj``'s attributes live in a dictionary of their own, which
    CPython 3.11+ makes on first use of ``obj.__dict__`` (or ``dir(obj)``):
    from then on every attribute read of ``obj`` is slower."""
    import gc

    return any(isinstance(r, dict) and "pgconn" in r for r in gc.get_referents(obj))


def test_the_driver_connection_keeps_its_fast_attributes(pg):
    psycopg = pytest.importorskip("psycopg")
    made = []

    def factory():
        made.append(psycopg.connect(pg.dsn))
        return made[-1]

    connection = ReconnectingConnection(factory)
    connection.cursor_factory = psycopg.ClientCursor  # a setting checked on raw
    connection.cursor().execute("SELECT 1")
    assert connection.info.status == psycopg.pq.ConnStatus.OK
    assert not has_a_real_dict(made[0])
    made[0].__dict__  # noqa: B018 (the check can tell)
    assert has_a_real_dict(made[0])
    connection.close()


def test_the_asyncio_connection_hears_a_cancellation_before_psycopg(pg):
    # Each psycopg connection the asyncio connection makes gets a wait() of
    # ours, which closes it as soon as a call is cancelled: psycopg's would
    # wait for the query first (ten seconds on a silent link; the timing is
    # shown in docs/asyncio.rst). psycopg does not document wait(), so this
    # tells at once when a release changes it. It must not cost the driver
    # connection its fast attributes either.
    psycopg = pytest.importorskip("psycopg")
    from reconnecting import AsyncReconnectingConnection

    made = []

    async def factory():
        made.append(await psycopg.AsyncConnection.connect(pg.dsn))
        return made[-1]

    async def main():
        db = AsyncReconnectingConnection(factory)
        cursor = db.cursor()
        await cursor.execute("SELECT 1")
        await cursor.execute("SELECT 1")  # the hot path
        assert made[0].wait.__module__ == "reconnecting.aio"
        assert not has_a_real_dict(made[0])
        await db.close()

    asyncio.run(main())


def test_the_asyncio_connection_has_the_same_names_as_the_sync_one(pg):
    # No __getattr__ on either: an unknown name fails without connecting,
    # a driver's name reads the driver connection, and a driver subclass's
    # own names come with its first server connection.
    psycopg = pytest.importorskip("psycopg")
    from reconnecting import AsyncReconnectingConnection

    class LedgerConnection(psycopg.AsyncConnection):
        ledger_name = "main"

    opened = []

    async def factory():
        opened.append(await LedgerConnection.connect(pg.dsn))
        return opened[-1]

    async def main():
        db = AsyncReconnectingConnection(factory)
        assert "__getattr__" not in vars(type(db))
        with pytest.raises(AttributeError):
            db.no_such_attribute  # noqa: B018
        with pytest.raises(AttributeError):
            db.ledger_name  # noqa: B018 (not known before its connection)
        assert opened == []
        await db.execute("SELECT 1")
        assert db.ledger_name == "main" and db.info.server_version >= 90000
        with pytest.raises(AttributeError):
            db.no_such_attribute  # noqa: B018
        assert len(opened) == 1
        await db.close()

    asyncio.run(main())
