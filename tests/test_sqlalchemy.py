"""The SQLAlchemy dialects: what docs/sqlalchemy.rst does not show.

The page tells the outages; here are the parts a reader does not need
to see: how SQLAlchemy finds the dialects, that ``import reconnecting``
does without SQLAlchemy, that the pre-ping refuses a standby unless one
was asked for, that the retryable errors pickle, and what
``resolve_commit=False`` means.  Each under both drivers where a driver
is involved, against a real server, through the real proxy.
"""

import pickle

import pytest
import sqlalchemy.exc
from helpers import python_output, sessions_named
from sqlalchemy import URL, create_engine, event, text
from sqlalchemy.dialects import registry

from reconnecting import Retry
from reconnecting.sqlalchemy.aio import ReconnectingAsyncPsycopgDialect
from reconnecting.sqlalchemy.psycopg import ReconnectingPsycopgDialect
from reconnecting.sqlalchemy.psycopg2 import ReconnectingPsycopg2Dialect
from reconnecting.testing import PortForwardTestSetup, wait_until
from reconnecting.testing.cluster import Cluster
from reconnecting.testing.standby import make_standby

DRIVERS = ["psycopg2", "psycopg"]


def test_sqlalchemy_finds_the_dialects_by_their_entry_points():
    assert registry.load("postgresql.reconnecting_psycopg2") is (
        ReconnectingPsycopg2Dialect
    )
    assert registry.load("postgresql.reconnecting_psycopg") is (
        ReconnectingPsycopgDialect
    )
    assert registry.load("postgresql.reconnecting_psycopg_async") is (
        ReconnectingAsyncPsycopgDialect
    )


def test_import_reconnecting_does_not_import_sqlalchemy():
    imported = python_output(
        """
        import sys
        import reconnecting, reconnecting.aio
        print('sqlalchemy' in sys.modules)
        """
    )
    assert imported == "False"


@pytest.fixture
def proxy():
    proxy = PortForwardTestSetup()
    proxy.setUp()
    yield proxy
    proxy.tearDown()


def proxied(driver, pg, proxy, **kwargs):
    url = URL.create(
        f"postgresql+reconnecting_{driver}",
        username=pg.user,
        password=pg.password,
        host=proxy.host,
        port=proxy.port,
        database=pg.dbname,
    )
    return create_engine(url, **kwargs)


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_retryable_error_pickles_as_what_it_is(pg, proxy, driver):
    engine = proxied(driver, pg, proxy)
    try:
        with engine.connect() as connection:
            proxy.drop()
            with pytest.raises(sqlalchemy.exc.OperationalError) as caught:
                connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    error = pickle.loads(pickle.dumps(caught.value))
    assert type(error) is type(caught.value)
    assert isinstance(error, Retry)
    assert type(error.orig) is type(caught.value.orig)
    assert error.connection_invalidated


@pytest.mark.parametrize("driver", DRIVERS)
def test_without_commit_resolution_a_lost_reply_is_retryable(pg, proxy, direct, driver):
    # The documented switch: the reply of a COMMIT that went through is
    # lost, and the error says "retry" although the row is there.
    direct.execute("CREATE TABLE IF NOT EXISTS switch (driver text)")
    engine = proxied(driver, pg, proxy, resolve_commit=False)
    try:
        with engine.connect() as connection:
            connection.execute(text("INSERT INTO switch VALUES (:d)"), {"d": driver})
            proxy.cut_on_commit()
            with pytest.raises(Retry):
                connection.commit()
    finally:
        engine.dispose()
    direct.execute("SELECT count(*) FROM switch WHERE driver = %s", (driver,))
    assert direct.fetchone()[0] == 1


@pytest.fixture(scope="module")
def standby():
    primary = Cluster()
    primary.start()
    standby = make_standby(primary)
    yield standby
    standby.destroy()
    primary.destroy()


def checkouts(engine, times=3):
    """The driver-level connection each checkout hands out."""
    connections = []
    for _ in range(times):
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            connections.append(connection.connection.driver_connection)
    return connections


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_pre_ping_refuses_a_standby_unless_one_was_asked_for(standby, driver):
    query = {"host": f"127.0.0.1:{standby.port}"}
    url = URL.create(
        f"postgresql+reconnecting_{driver}",
        username="postgres",
        password=standby.password,
        database="postgres",
        query=query,
    )
    refusing = create_engine(url, pool_pre_ping=True, pool_size=1)
    asking = create_engine(
        url.update_query_dict({"target_session_attrs": "standby"}),
        pool_pre_ping=True,
        pool_size=1,
    )
    try:
        made = checkouts(refusing)
        kept = checkouts(asking)
    finally:
        refusing.dispose()
        asking.dispose()
    assert len({id(connection) for connection in made}) == 3
    assert len({id(connection) for connection in kept}) == 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_connections_of_a_creator_are_judged_by_the_rules(pg, proxy, driver):
    # creator= hands the pool driver connections that bypass the wrapper:
    # no Retry for them, but SQLAlchemy's set-up, and the package's rules
    # to tell it that a connection is broken.
    module = pytest.importorskip(driver)

    def creator():
        return module.connect(pg.dsn, host=proxy.host, port=proxy.port)

    engine = proxied(driver, pg, proxy, creator=creator)
    try:
        with engine.connect() as connection:
            uuid = connection.execute(text("SELECT gen_random_uuid()")).scalar()
            proxy.drop()
            with pytest.raises(sqlalchemy.exc.OperationalError) as caught:
                connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    assert type(uuid).__name__ == "UUID"
    assert caught.value.connection_invalidated
    assert not isinstance(caught.value, Retry)


def test_an_async_session_keeps_its_server_connection(pg, proxy):
    # SQLAlchemy's asyncio adaptor closes psycopg's cursors with their
    # non-awaiting _close(): ours must have it too, or every query fails
    # in its cursor's close and the pool makes a new server connection.
    import asyncio

    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    async def sessions():
        url = URL.create(
            "postgresql+reconnecting_psycopg_async",
            username=pg.user,
            password=pg.password,
            host=proxy.host,
            port=proxy.port,
            database=pg.dbname,
        )
        engine = create_async_engine(url, pool_size=1)
        connects = []
        event.listen(engine.sync_engine, "connect", lambda *args: connects.append(1))
        try:
            for _ in range(3):
                async with AsyncSession(engine) as session:
                    assert (await session.execute(text("SELECT 1"))).scalar() == 1
                    await session.commit()
        finally:
            await engine.dispose()
        return len(connects)

    assert asyncio.run(sessions()) == 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_pooled_connection_never_used_closes_its_server_session(
    pg, proxy, direct, driver
):
    # The dialect connects at checkout (a refusal is SQLAlchemy's connect
    # error); the wrapper takes that driver connection when first used.
    # Closed before that, it must close it too, not leave it to the
    # garbage collector.  (The engine's first connection is used to learn
    # the server's version: the second one is never used.)
    name = f"unused_{driver}"
    engine = proxied(driver, pg, proxy, connect_args={"application_name": name})
    pooled = []  # kept alive: no garbage collection closes them
    event.listen(engine, "connect", lambda connection, _: pooled.append(connection))
    first, second = engine.connect(), engine.connect()
    first.close(), second.close()
    assert sessions_named(direct, name) == 2
    engine.dispose()
    wait_until(lambda: sessions_named(direct, name) == 0, timeout=10)
    assert [connection.closed for connection in pooled] == [True, True]


def test_an_unused_pooled_asyncio_connection_closes_its_server_session(
    pg, proxy, direct
):
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    name = "unused_async"
    url = proxied("psycopg", pg, proxy).url.set(
        drivername="postgresql+reconnecting_psycopg_async"
    )
    pooled = []

    async def checkout_and_dispose():
        engine = create_async_engine(url, connect_args={"application_name": name})
        event.listen(engine.sync_engine, "connect", lambda c, _: pooled.append(c))
        first, second = await engine.connect(), await engine.connect()
        await first.close()
        await second.close()
        assert sessions_named(direct, name) == 2
        await engine.dispose()

    asyncio.run(checkout_and_dispose())
    wait_until(lambda: sessions_named(direct, name) == 0, timeout=10)
    assert [connection.closed for connection in pooled] == [True, True]
