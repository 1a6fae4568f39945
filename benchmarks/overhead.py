"""What does the wrapper cost per round trip?

For each driver, runs ``execute('SELECT 1'); fetchone()`` on three cursors
of one server connection in turn, query by query: the driver's own, that of
a pass-through wrapper (two methods that only pass the call on: the least a
wrapper costs) and a ReconnectingConnection's.  So the machine's drifts hit
all three alike.  Printed, one line per driver and transport: the median of
what each wrapper adds to the driver's round trip in the same round (and
its range over ten slices of the rounds), their ratio, and ours over raw.

    python benchmarks/overhead.py [rounds] [--driver psycopg2|psycopg]

Target: ours / raw is at most 1.03, with each driver.  The ratio of the
two additions is printed too, but a tenth of a microsecond is within the
noise of a round trip timed alone, and what the client does while the
server runs the query does not lengthen the round trip at all: the
target that ours adds at most 1.5 times what the pass-through adds is
counted by ``instructions.py``.
"""

from _common import (
    PassThrough,
    connect_over_unix_socket,
    driver_arguments,
    report_three,
    rotating_round_trips,
    test_database,
)

from reconnecting import ReconnectingConnection


def measure(pg, driver, rounds, transport):
    if transport == "unix socket":
        raw = connect_over_unix_socket(pg, driver)
    else:
        raw = pg.connect() if driver.__name__ == "psycopg2" else driver.connect(pg.dsn)
    try:
        # One server connection for all three: only the wrapper differs.
        ours = ReconnectingConnection(lambda: raw).cursor()
        cursors = [raw.cursor(), PassThrough(raw.cursor()), ours]
        rotating_round_trips(cursors, 1000)  # warm up
        times = rotating_round_trips(cursors, rounds)
    finally:
        raw.close()
    report_three(f"{driver.__name__:>8}, {transport:>11}", times)


def main():
    rounds, drivers = driver_arguments(__doc__.splitlines()[0], "rounds", 20000)
    with test_database() as pg:
        for driver in drivers:
            for transport in ("unix socket", "TCP"):
                measure(pg, driver, rounds, transport)


if __name__ == "__main__":
    main()
