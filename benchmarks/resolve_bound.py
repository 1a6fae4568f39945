"""How long does a commit with a lost reply take to resolve on a silent network?

The proxy lets ``COMMIT`` through and cuts the reply; from then on the
factory connects through a second proxy that swallows every byte
(``blackhole``) or, as root, one whose packets the kernel drops
(``partition``), and sets no ``connect_timeout``, so its ``connect()`` hangs.
``commit()`` must give up after ``resolve_timeout`` plus its grace (0.5 s
and ten measured round trips).  For comparison, the same cut with the
server reachable and ``resolve_timeout=0``: asked once, resolved as
committed.

    python benchmarks/resolve_bound.py [tries] [--driver psycopg2|psycopg]
"""

import statistics
import time

from _common import driver_arguments, test_database

from reconnecting import CommitOutcomeUnknown, ReconnectingConnection
from reconnecting.testing import PortForwardTestSetup


def one_commit(pg, driver, cut, route, resolve_timeout, silence):
    def factory():
        return driver.connect(pg.dsn, host=route[0].host, port=route[0].port)

    route[0] = cut
    db = ReconnectingConnection(
        factory, resolve_commit=True, resolve_timeout=resolve_timeout
    )
    cursor = db.cursor()
    cursor.execute("INSERT INTO t VALUES (1)")
    if silence is not None:
        route[0] = silence
    cut.cut_on_commit(deliver=True)
    started = time.monotonic()
    try:
        db.commit()
        outcome = "committed"
    except CommitOutcomeUnknown as exc:
        outcome = exc.reason
    elapsed = time.monotonic() - started
    db.rollback()
    db.close()
    return elapsed, outcome


def main():
    tries, drivers = driver_arguments(__doc__, "tries", 5)
    with test_database() as pg:
        setup = pg.connect()
        setup.autocommit = True
        setup.cursor().execute("CREATE TABLE t (x int)")
        setup.close()
        silences = ["blackhole"]
        if PortForwardTestSetup.partition_unavailable() is None:
            silences.append("partition")
        for driver in drivers:
            for silence_kind in [None, *silences]:
                for resolve_timeout in (0.0, 0.5, 1.0):
                    with PortForwardTestSetup() as cut, PortForwardTestSetup() as quiet:
                        if silence_kind is not None:
                            getattr(quiet, silence_kind)()
                        results = [
                            one_commit(
                                pg,
                                driver,
                                cut,
                                [cut],
                                resolve_timeout,
                                None if silence_kind is None else quiet,
                            )
                            for _ in range(tries)
                        ]
                    times = [elapsed for elapsed, _ in results]
                    outcomes = sorted({outcome for _, outcome in results})
                    print(
                        f"{driver.__name__:8} {silence_kind or 'reachable':9}"
                        f" resolve_timeout={resolve_timeout:.1f}:"
                        f" median {statistics.median(times):.3f} s,"
                        f" max {max(times):.3f} s; {', '.join(outcomes)}"
                    )


if __name__ == "__main__":
    main()
