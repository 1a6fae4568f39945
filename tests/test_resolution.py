"""The questions a resolved commit asks, over a real server connection.

Found by the soak: a question cut off by the server ended in a rollback of
the broken connection, whose own error ("another command is already in
progress", "connection already closed") took the place of the outage, so
the resolution gave up instead of asking again on a new connection.
"""

import asyncio
import importlib

import pytest

from reconnecting import aio, connection
from reconnecting.connection import is_outage


def cut_off_questions(errors):
    """Questions whose first one ends the server session that runs it; the
    error it gets is kept in ``errors``."""
    try:
        yield "SELECT pg_terminate_backend(pg_backend_pid())", ()
    except Exception as error:
        errors.append(error)
        raise
    return "not reached"


@pytest.mark.parametrize("driver_name", ["psycopg2", "psycopg"])
def test_a_question_cut_off_tells_the_outage(pg, driver_name):
    driver = importlib.import_module(driver_name)
    raw = driver.connect(pg.dsn)
    try:
        errors = []
        with pytest.raises(driver.OperationalError) as info:
            connection._answer(raw, cut_off_questions(errors), rollback=True)
        assert info.value is errors[0]
        assert is_outage(info.value, raw)
    finally:
        raw.close()


def test_a_question_cut_off_tells_the_outage_asyncio(pg):
    import psycopg

    async def ask():
        raw = await psycopg.AsyncConnection.connect(pg.dsn)
        try:
            errors = []
            with pytest.raises(psycopg.OperationalError) as info:
                await aio._answer(raw, cut_off_questions(errors), rollback=True)
            assert info.value is errors[0]
            assert is_outage(info.value, raw)
        finally:
            await raw.close()

    asyncio.run(ask())
