"""What does the wrapper cost per round trip?

For each driver, runs ``execute('SELECT 1'); fetchone()`` on three cursors
of one server connection in turn, query by query: the driver's own, that of
a pass-through wrapper (two methods that only pass the call on: the least a
wrapper costs) and a ReconnectingConnection's.  So the machine's drifts hit
all three alike.  Each figure is measured in several processes, each with
its own string hash seed (see sqlalchemy_overhead.py for why), and printed,
one line per driver and transport, as the median over the processes: what
each wrapper adds to the driver's round trip in the same round, the ratio
of the two additions (each process's too) and ours over raw.

    python benchmarks/overhead.py [rounds] [--driver psycopg2|psycopg]
        [--processes 25]

Targets: ours adds at most 1.5 times what the pass-through adds, and
ours / raw is at most 1.03, with each driver.  The additions are tenths of
a microsecond, and one process's ratio moves between 0.5 and 3 (two
identical pass-throughs measured up to 1.85); with psycopg 3, whose
pass-through adds only about 0.1 us, the median of 25 processes still
moved from 1.09 to 1.57 from one run to the next, hence 25 processes by
default (about six minutes a driver).  ``instructions.py`` counts the
first target without that noise.
"""

import json
import os
import sys

from _common import (
    PassThrough,
    driver_arguments,
    in_processes,
    report_processes,
    rotating_round_trips,
    test_database,
    three_additions,
)

from reconnecting import ReconnectingConnection


def child(driver_name, transport, rounds):
    """One process's measurement, printed as JSON."""
    driver = __import__(driver_name)
    socket_dir = os.environ["BENCH_SOCKET_DIR"]
    where = {"host": socket_dir} if transport == "unix" else {}
    raw = driver.connect(os.environ["BENCH_DSN"], **where)
    try:
        # One server connection for all three: only the wrapper differs.
        ours = ReconnectingConnection(lambda: raw).cursor()
        cursors = [raw.cursor(), PassThrough(raw.cursor()), ours]
        rotating_round_trips(cursors, 1000)  # warm up
        print(json.dumps(three_additions(rotating_round_trips(cursors, rounds))))
    finally:
        raw.close()


def main():
    if sys.argv[1:2] == ["--child"]:
        driver_name, transport, rounds = sys.argv[2:5]
        return child(driver_name, transport, int(rounds))
    rounds, drivers, processes = driver_arguments(
        __doc__.splitlines()[0], "rounds", 20000, processes=25
    )
    with test_database() as pg:
        for driver in drivers:
            for transport in ("unix", "TCP"):
                if transport == "unix" and not getattr(pg.server, "socket_dir", None):
                    continue  # an existing server: TCP only
                runs = in_processes(
                    __file__, (driver.__name__, transport, rounds), pg, processes
                )
                report_processes(f"{driver.__name__:>8}, {transport:>4}", runs)


if __name__ == "__main__":
    main()
