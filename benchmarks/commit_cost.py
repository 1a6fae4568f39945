"""What does commit resolution cost per commit?

``resolve_commit=True`` asks the server for the transaction's id before
each ``COMMIT`` that follows a write.  This runs ``INSERT ...; commit()``
straight through the driver and through three ReconnectingConnections, all
on one server connection, over the unix socket of the throwaway test server
(one server process for all four, so that where the scheduler puts it does
not favour one):

* ``driver``: the driver's own connection, no wrapper;
* ``plain``: ``resolve_commit=False``;
* ``resolving``: ``resolve_commit=True``;
* ``plain + SELECT 1``: ``resolve_commit=False`` with a ``SELECT 1`` before
  each commit, which is what one extra round trip costs.

Blocks of each alternate, in a rotating order, so all four see the same
machine; prints, for each driver, the median time per transaction of each,
the median of the per-round ratio plain / driver (what the wrapper costs
per transaction), and that of the extra costs of resolution:
(resolving - plain) / (plain + SELECT 1 - plain).

    python benchmarks/commit_cost.py [rounds] [--driver psycopg2|psycopg]

Targets: plain / driver at most 1.03; the extra cost of resolution is one
round trip, nothing more: a ratio of about 1 (at most 1.2).
"""

import statistics
import time

from _common import BLOCK, connect_over_unix_socket, driver_arguments, test_database

from reconnecting import ReconnectingConnection


def transactions(db, cursor, extra_select, count=BLOCK):
    started = time.perf_counter()
    for _ in range(count):
        cursor.execute("INSERT INTO item (n) VALUES (1)")
        if extra_select:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        db.commit()
    return time.perf_counter() - started


def measure(pg, driver, rounds):
    admin = connect_over_unix_socket(pg, driver)
    admin.autocommit = True
    admin.cursor().execute("DROP TABLE IF EXISTS item")
    admin.cursor().execute("CREATE TABLE item (id serial, n int)")
    raw = connect_over_unix_socket(pg, driver)

    def shared():
        return raw

    kinds = {
        "driver": (raw, False),
        "plain": (ReconnectingConnection(shared), False),
        "resolving": (ReconnectingConnection(shared, resolve_commit=True), False),
        "plain + SELECT 1": (ReconnectingConnection(shared), True),
    }
    runs = {name: (db, db.cursor(), extra) for name, (db, extra) in kinds.items()}
    times = {name: [] for name in runs}
    wrapper_ratios, resolution_ratios = [], []
    names = list(runs)
    for name in names:  # warm up
        transactions(*runs[name])
    for round_ in range(rounds):
        block = {}
        turn = round_ % len(names)
        for name in names[turn:] + names[:turn]:
            block[name] = transactions(*runs[name]) / BLOCK
            times[name].append(block[name])
        wrapper_ratios.append(block["plain"] / block["driver"])
        extra_round_trip = block["plain + SELECT 1"] - block["plain"]
        extra_resolution = block["resolving"] - block["plain"]
        resolution_ratios.append(extra_resolution / extra_round_trip)
        if round_ % 20 == 19:
            admin.cursor().execute("TRUNCATE item")
    raw.close()
    admin.close()
    print(f"{driver.__name__}:")
    for name in names:
        median = statistics.median(times[name]) * 1e6
        print(f"{name:>19}: median {median:.1f} us per transaction")
    print(
        f"  plain / driver: median ratio {statistics.median(wrapper_ratios):.3f}"
        " (target <= 1.03)"
    )
    print(
        "  (resolving - plain) / (plain + SELECT 1 - plain): median ratio"
        f" {statistics.median(resolution_ratios):.2f}"
        " (target: about 1, one extra round trip)"
    )
    print(f"  over {rounds} rounds of {BLOCK} transactions")


def main():
    rounds, drivers = driver_arguments(__doc__.splitlines()[0], "rounds", 200)
    with test_database() as pg:
        for driver in drivers:
            measure(pg, driver, rounds)


if __name__ == "__main__":
    main()
