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

    python benchmarks/sqlalchemy_overhead.py [pairs] [--driver psycopg2|psycopg]

Target: a ratio of at most 1.03 with each driver.
"""

import statistics
import time

from _common import BLOCK, connect_over_unix_socket, driver_arguments, test_database
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


def measure(pg, driver, pairs, transport):
    if transport == "unix socket":
        raw = connect_over_unix_socket(pg, driver)
    else:
        raw = pg.connect() if driver.__name__ == "psycopg2" else driver.connect(pg.dsn)
    plain, ours = engines(raw, driver.__name__)
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
            times.append((a, b))
    finally:
        ours.dispose()
        plain.dispose()
        raw.close()
    ratios = [w / d for d, w in times]
    direct = statistics.median(d / BLOCK for d, _ in times)
    added = statistics.median((w - d) / BLOCK for d, w in times)
    print(
        f"{driver.__name__:>8}, {transport:>11}: SQLAlchemy's dialect median"
        f" {direct * 1e6:.1f} us per ORM query, the reconnecting dialect adds"
        f" {added * 1e6:.2f} us;"
        f" reconnecting / SQLAlchemy's: median ratio {statistics.median(ratios):.3f}"
        f" over {pairs} pairs of {BLOCK} queries (target <= 1.03)"
    )


def main():
    pairs, drivers = driver_arguments(__doc__.splitlines()[0], "pairs", 200)
    with test_database() as pg:
        for driver in drivers:
            for transport in ("unix socket", "TCP"):
                measure(pg, driver, pairs, transport)


if __name__ == "__main__":
    main()
