"""The ORM ledger of the SQLAlchemy soaks: ``from sqlalchemy_ledger import ...``.

It maps the tables of test_soak.py's ``ledger`` fixture (``account``, and
``applied``, which has no unique constraint, so that a transfer applied
twice shows as two rows), and runs a transfer as an ORM unit of work: a
``SELECT ... FOR UPDATE`` of both accounts (in id order, so that workers
never deadlock), two ``UPDATE``s at flush, an ``INSERT ... RETURNING``,
then ``Session.commit()``.  The caller does what docs/sqlalchemy.rst
recommends: ``attempts(session)``; on ``CommitOutcomeUnknown``, look for
the transfer itself once the server is back.  Anything else that reaches
the caller is counted as an escaped error.
"""

from __future__ import annotations

import random
import threading

from sqlalchemy import func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from test_soak import ACCOUNTS, JOIN_SECONDS

import reconnecting.aio
from reconnecting import CommitOutcomeUnknown, attempts

TRIES = 1000  # the deadline decides
DEADLINE = 120.0  # seconds: a failover, a crash recovery on a loaded machine
CUT_SHARE = 0.03  # of the commits whose connection is cut


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "account"
    id: Mapped[int] = mapped_column(primary_key=True)
    balance: Mapped[int]


class Applied(Base):
    __tablename__ = "applied"
    n: Mapped[int] = mapped_column(primary_key=True)
    transfer_id: Mapped[str]
    src: Mapped[int]
    dst: Mapped[int]
    amount: Mapped[int]


def new_transfer(rng, name, number):
    src, dst = rng.sample(range(1, ACCOUNTS + 1), 2)
    return (f"{name}-{number}", src, dst, rng.randint(1, 100))


def _moves(transfer):
    _, src, dst, amount = transfer
    return sorted([(src, -amount), (dst, amount)])


def _applied(transfer):
    transfer_id, src, dst, amount = transfer
    return Applied(transfer_id=transfer_id, src=src, dst=dst, amount=amount)


def _count(transfer_id):
    return select(func.count()).select_from(Applied).filter_by(transfer_id=transfer_id)


# -- sync -----------------------------------------------------------------------


def transfer_once(session, transfer):
    for account_id, delta in _moves(transfer):
        account = session.get(Account, account_id, with_for_update=True)
        account.balance += delta
    session.add(_applied(transfer))
    session.commit()


def apply(session, transfer, tally):
    """Apply ``transfer`` until it commits; other errors go to the caller."""
    while True:
        try:
            for attempt in attempts(session, tries=TRIES, deadline=DEADLINE):
                with attempt:
                    transfer_once(session, transfer)
            tally.add("Retry", attempt.number - 1)
            return
        except CommitOutcomeUnknown as exc:
            tally.add("CommitOutcomeUnknown")
            with tally._lock:
                tally.unknown.append((transfer[0], str(exc)))
            if look_up(session, transfer[0]):
                return


def look_up(session, transfer_id):
    """True if the transfer is in the ledger: what to do after an unknown."""
    for attempt in attempts(session, tries=TRIES, deadline=JOIN_SECONDS):
        with attempt:
            count = session.scalar(_count(transfer_id))
            session.rollback()
    return bool(count)


def teller(name, make_session, tally, enough):
    """A thread's loop: one session, transfers until ``enough()``."""
    rng = random.Random(name)
    number = 0
    with make_session() as session:
        while not enough():
            number += 1
            transfer = new_transfer(rng, name, number)
            try:
                apply(session, transfer, tally)
            except Exception:
                tally.error(f"transfer {transfer}")
                session.rollback()
                continue
            tally.done(transfer[0])


# -- asyncio --------------------------------------------------------------------


async def async_transfer_once(session, transfer):
    for account_id, delta in _moves(transfer):
        account = await session.get(Account, account_id, with_for_update=True)
        account.balance += delta
    session.add(_applied(transfer))
    await session.commit()


async def async_apply(session, transfer, tally):
    while True:
        try:
            async for attempt in reconnecting.aio.attempts(
                session, tries=TRIES, deadline=DEADLINE
            ):
                async with attempt:
                    await async_transfer_once(session, transfer)
            tally.add("Retry", attempt.number - 1)
            return
        except CommitOutcomeUnknown as exc:
            tally.add("CommitOutcomeUnknown")
            with tally._lock:
                tally.unknown.append((transfer[0], str(exc)))
            if await async_look_up(session, transfer[0]):
                return


async def async_look_up(session, transfer_id):
    async for attempt in reconnecting.aio.attempts(
        session, tries=TRIES, deadline=JOIN_SECONDS
    ):
        async with attempt:
            count = await session.scalar(_count(transfer_id))
            await session.rollback()
    return bool(count)


async def async_teller(name, make_session, tally, enough):
    rng = random.Random(name)
    number = 0
    async with make_session() as session:
        while not enough():
            number += 1
            transfer = new_transfer(rng, name, number)
            try:
                await async_apply(session, transfer, tally)
            except Exception:
                tally.error(f"transfer {transfer}")
                await session.rollback()
                continue
            tally.done(transfer[0])


# -- the COMMIT cuts --------------------------------------------------------------


def cut_commits(proxy, tally, stop, seed):
    """Cut about ``CUT_SHARE`` of the commits, the reply lost or the COMMIT
    never delivered, at random, until ``stop`` is set."""
    rng = random.Random(seed)
    spacing = round(2 / CUT_SHARE)  # the next cut within 1..spacing commits
    try:
        while not stop.is_set():
            target = len(tally.completed) + rng.randint(1, spacing)
            while len(tally.completed) < target and not stop.wait(0.002):
                pass
            cuts, deliver = proxy.commit_cuts, rng.random() < 0.5
            proxy.cut_on_commit(deliver=deliver)
            tally.add(f"commit cuts set (deliver={deliver})")
            while proxy.commit_cuts == cuts and not stop.wait(0.001):
                pass
    except Exception:
        tally.error("commit cut thread")
    finally:
        proxy.restore()  # disarm a trap that did not fire
        tally.add("commit cuts fired", proxy.commit_cuts)


def start(*threads):
    for thread in threads:
        thread.start()
    return threads


def thread(target, *args):
    return threading.Thread(target=target, args=args, name=target.__name__)
