"""What does commit resolution cost per commit?

``resolve_commit=True`` asks the server for the transaction's id before
each ``COMMIT`` that follows a write.  This runs ``INSERT ...; commit()``
through three ReconnectingConnections that share one server connection,
over the unix socket of the throwaway test server (one server process for
all three, so that where the scheduler puts it does not favour one):

* ``plain``: ``resolve_commit=False``;
* ``resolving``: ``resolve_commit=True``;
* ``plain + SELECT 1``: ``resolve_commit=False`` with a ``SELECT 1`` before
  each commit, which is what one extra round trip costs.

Blocks of each alternate, in a rotating order, so all three see the same
machine; prints the median time per transaction of each, and the median
of the per-round ratio of the extra costs:
(resolving - plain) / (plain + SELECT 1 - plain).

    python benchmarks/commit_cost.py [rounds]

Target: the extra cost of resolution is one round trip, nothing more: a
ratio of about 1 (at most 1.2).
"""

import statistics
import sys
import time

from _common import BLOCK, connect_over_unix_socket, test_database

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


def main(rounds=200):
    with test_database() as pg:
        admin = connect_over_unix_socket(pg)
        admin.autocommit = True
        admin.cursor().execute("CREATE TABLE item (id serial, n int)")
        raw = connect_over_unix_socket(pg)

        def shared():
            return raw

        kinds = {
            "plain": (ReconnectingConnection(shared), False),
            "resolving": (ReconnectingConnection(shared, resolve_commit=True), False),
            "plain + SELECT 1": (ReconnectingConnection(shared), True),
        }
        runs = {name: (db, db.cursor(), extra) for name, (db, extra) in kinds.items()}
        times = {name: [] for name in runs}
        ratios = []
        names = list(runs)
        for name in names:  # warm up
            transactions(*runs[name])
        for round_ in range(rounds):
            block = {}
            for name in names[round_ % 3 :] + names[: round_ % 3]:
                block[name] = transactions(*runs[name]) / BLOCK
                times[name].append(block[name])
            extra_round_trip = block["plain + SELECT 1"] - block["plain"]
            ratios.append((block["resolving"] - block["plain"]) / extra_round_trip)
            if round_ % 20 == 19:
                admin.cursor().execute("TRUNCATE item")
        raw.close()
        admin.close()
    for name in names:
        median = statistics.median(times[name]) * 1e6
        print(f"{name:>17}: median {median:.1f} us per transaction")
    print(
        f"(resolving - plain) / (plain + SELECT 1 - plain): median ratio"
        f" {statistics.median(ratios):.2f} over {rounds} rounds of {BLOCK}"
        " transactions (target: about 1, one extra round trip)"
    )


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:]))
