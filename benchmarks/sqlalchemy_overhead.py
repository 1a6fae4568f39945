"""What does the dialect cost per ORM query?

For each driver, runs an ORM query (``session.get(Account, 1,
populate_existing=True)``, one ``SELECT`` round trip and the ORM's work on
its row) through an engine of the ``postgresql+reconnecting_<driver>``
dialect and through one of SQLAlchemy's own ``postgresql+<driver>``
dialect, on the same server connection: over the unix socket of the
throwaway test server (the fastest round trip, so the largest ratio),
then over loopback TCP.  Blocks of each alternate, each going first every
other time, so both see the same machine; the median of the per-pair
ratios is printed, one line per driver and transport.

Each figure is measured in several processes, each with its own string
hash seed, and the median of their ratios is the result.  CPython's type
attribute cache is one table of 4,096 entries that every class shares, and
where names collide in it depends on the seed: callgrind counts 529,600 to
544,600 instructions per query of SQLAlchemy's own dialect alone, from one
seed to the next, a spread as large as the target.  One process would
measure its seed's luck.

    python benchmarks/sqlalchemy_overhead.py [pairs] [--driver psycopg2|psycopg]
        [--processes 9]

Target: a ratio of at most 1.03 with each driver.
"""

import json
import os
import statistics
import sys
import time

from _common import BLOCK, driver_arguments, in_processes, test_database
from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

from reconnecting.sqlalchemy.dialect import Connector


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "account"
    id: Mapped[int] = mapped_column(primary_key=True)
    balance: Mapped[int]


def queries(engine, count=BLOCK):
    """Time ``count`` ORM queries in one session, in seconds."""
    with Session(engine) as session:
        started = time.perf_counter()
        for _ in range(count):
            session.get(Account, 1, populate_existing=True)
        return time.perf_counter() - started


def engines(raw, driver_name):
    """SQLAlchemy's own dialect and ours, both on the driver connection *raw*."""
    plain = create_engine(
        f"postgresql+{driver_name}://", creator=lambda: raw, poolclass=StaticPool
    )
    ours = create_engine(
        f"postgresql+reconnecting_{driver_name}://", poolclass=StaticPool
    )
    # The dialect's factory hands out *raw*, which the plain engine set up.
    ours.dialect.connector = lambda cargs, cparams: Connector(lambda: raw, None, False)
    return plain, ours


def measure(raw, driver_name, pairs):
    """The per-query seconds of SQLAlchemy's dialect and ours, in pairs."""
    plain, ours = engines(raw, driver_name)
    try:
        Base.metadata.create_all(plain)
        with Session(plain) as session:
            session.merge(Account(id=1, balance=100))
            session.commit()
        queries(plain), queries(ours)  # warm up: caches, first connect
        times = []
        for pair in range(pairs):
            if pair % 2:
                a, b = queries(plain), queries(ours)
            else:
                b, a = queries(ours), queries(plain)
            times.append((a / BLOCK, b / BLOCK))
        return times
    finally:
        ours.dispose()
        plain.dispose()


def child(driver_name, transport, pairs):
    """One process's measurement, printed as JSON (the parent's server is
    named in the environment, the password with it)."""
    driver = __import__(driver_name)
    where = {"host": os.environ["BENCH_SOCKET_DIR"]} if transport == "unix" else {}
    raw = driver.connect(os.environ["BENCH_DSN"], **where)
    try:
        print(json.dumps(measure(raw, driver_name, pairs)))
    finally:
        raw.close()


def report(driver_name, transport, runs):
    ratios = [statistics.median(w / d for d, w in run) for run in runs]
    direct = statistics.median(d for run in runs for d, _ in run)
    added = statistics.median(statistics.median(w - d for d, w in run) for run in runs)
    print(
        f"{driver_name:>8}, {transport:>4}: SQLAlchemy's dialect median"
        f" {direct * 1e6:.1f} us per ORM query, the reconnecting dialect adds"
        f" {added * 1e6:.2f} us; reconnecting / SQLAlchemy's: median ratio"
        f" {statistics.median(ratios):.3f} over {len(runs)} processes"
        f" (each: {', '.join(f'{r:.3f}' for r in ratios)}; target <= 1.03)"
    )


def main():
    if sys.argv[1:2] == ["--child"]:
        driver_name, transport, pairs = sys.argv[2:5]
        return child(driver_name, transport, int(pairs))
    pairs, drivers, processes = driver_arguments(
        __doc__.splitlines()[0], "pairs", 60, processes=9
    )
    with test_database() as pg:
        for driver in drivers:
            for transport in ("unix", "TCP"):
                if transport == "unix" and not getattr(pg.server, "socket_dir", None):
                    continue  # an existing server: TCP only
                runs = in_processes(
                    __file__, (driver.__name__, transport, pairs), pg, processes
                )
                report(driver.__name__, transport, runs)


if __name__ == "__main__":
    main()
