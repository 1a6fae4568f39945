"""The reference model of the stateful tests: what the caller was told, and
so what the database must hold.

The machines of ``test_model.py`` (sync) and ``test_model_async.py``
(asyncio) make the calls a program makes and tell this model what each call
answered.  Every write inserts a fresh key into ``model_rows``, a table
without a unique constraint, so a write applied twice shows as two rows.
After every step, ``Reference.problems()`` compares the table, read by a
connection of its own that no fault touches, with what the caller was told:

- a key the caller was told is committed is there exactly once;
- a key told rolled back, or whose unit raised ``Retry``, is absent;
- a key whose commit raised ``CommitOutcomeUnknown`` is there at most once;
- no key is there twice, and nothing is there that nobody wrote.
"""

from __future__ import annotations

import dataclasses
import os

from reconnecting.testing.cluster import Cluster, get_server

DRIVER = os.environ.get("RECONNECTING_TEST_DRIVER", "psycopg2")
TABLE = "CREATE TABLE IF NOT EXISTS model_rows (k int NOT NULL)"
LOCK_KEY = 4242  # the session advisory lock the model takes


class ContractError(AssertionError):
    """The contract is broken: what a model found."""


class InDoubtError(Exception):
    """A unit's commit raised CommitOutcomeUnknown: its attempts() loop stops."""


def examples(default: int) -> int:
    """How many examples a model runs: ``RECONNECTING_MODEL_EXAMPLES``, or
    ``default``."""
    return int(os.environ.get("RECONNECTING_MODEL_EXAMPLES", default))


@dataclasses.dataclass
class Reference:
    """What the caller of one connection has been told so far."""

    autocommit: bool = False
    read_only: bool = False
    committed: set[int] = dataclasses.field(default_factory=set)
    absent: set[int] = dataclasses.field(default_factory=set)
    doubt: set[int] = dataclasses.field(default_factory=set)
    pending: list[int] = dataclasses.field(default_factory=list)  # this unit's
    in_transaction: bool = False
    failed: bool = False  # a statement failed: the transaction is aborted
    needs_rollback: bool = False  # told Retry, rollback() not called yet
    session: set[str] = dataclasses.field(default_factory=set)  # lock, temp...
    pending_session: set[str] = dataclasses.field(default_factory=set)
    pid: int | None = None  # the server session last seen
    faulted: bool = False  # a fault since the connection last talked
    _next_key: int = 0

    def key(self) -> int:
        self._next_key += 1
        return self._next_key

    def new_connection(self) -> None:
        """A new connection object: what the old one had open is gone."""
        self.rollback()
        self.autocommit = self.read_only = self.faulted = False
        self.session, self.pid = set(), None

    # -- what the calls answered ------------------------------------------------

    def began(self) -> None:
        """A statement ran: outside autocommit it opened a transaction."""
        if not self.autocommit:
            self.in_transaction = True

    def wrote(self, key: int, in_block: bool = False) -> None:
        if self.autocommit and not in_block:
            self.committed.add(key)
        else:
            self.pending.append(key)
            self.began()

    def lost(self, key: int) -> None:
        """A write that failed, not for an outage: the server has not kept it."""
        self.absent.add(key)
        if not self.autocommit:
            self.in_transaction = self.failed = True

    def retry(self) -> None:
        """A call raised ``Retry``: nothing of the unit was applied."""
        self.absent.update(self.pending)
        self._unit_over()
        self.needs_rollback = True
        self.session.clear()  # the caller was told: it must set it up again

    def unknown(self) -> None:
        """``CommitOutcomeUnknown``: the unit is in doubt."""
        self.doubt.update(self.pending)
        self._unit_over()
        self.needs_rollback = True
        self.session.clear()

    def commit(self) -> None:
        self.committed.update(self.pending)
        self.session |= self.pending_session
        if self.failed:  # COMMIT of an aborted transaction is a ROLLBACK
            self.absent.update(self.pending)
            self.committed.difference_update(self.pending)
            self.session -= self.pending_session
        self._unit_over()

    def rollback(self) -> None:
        self.absent.update(self.pending)
        self._unit_over()
        self.needs_rollback = False

    def _unit_over(self) -> None:
        self.pending = []
        self.pending_session = set()
        self.in_transaction = self.failed = False

    def set_up(self, state: str, transactional: bool) -> None:
        """Session state was made: at once, or with the transaction."""
        if transactional and not self.autocommit:
            self.pending_session.add(state)
        else:
            self.session.add(state)

    # -- the invariants ---------------------------------------------------------

    def problems(self, counts: dict[int, int]) -> list[str]:
        """What is wrong with the table's ``counts`` (key: rows)."""
        found = []
        for key, count in sorted(counts.items()):
            if count > 1:
                found.append(f"key {key} is there {count} times")
            elif key in self.absent:
                found.append(f"key {key} was told rolled back (or Retry) but is there")
            elif key not in self.committed | self.doubt | set(self.pending):
                found.append(f"key {key} is there but nobody was told it committed")
        for key in sorted(self.committed - counts.keys()):
            found.append(f"key {key} was told committed but is missing")
        return found

    def visible(self, rows: list[int]) -> list[str]:
        """What is wrong with ``rows``, read by the caller inside its unit."""
        found = []
        seen = set(rows)
        if len(rows) != len(seen):
            found.append(f"a read returned duplicates: {sorted(rows)}")
        if missing := (self.committed | set(self.pending)) - seen:
            found.append(f"a read misses keys {sorted(missing)}")
        if extra := seen - self.committed - set(self.pending) - self.doubt:
            found.append(f"a read sees keys {sorted(extra)} it should not")
        return found


class Observer:
    """A direct connection (no proxy) that reads what the table holds."""

    def __init__(self, pg) -> None:
        self.pg = pg
        self.conn = None

    def _cursor(self):
        if self.conn is None or self.conn.closed:
            self.conn = self.pg.connect()
            self.conn.autocommit = True
        return self.conn.cursor()

    def run(self, query: str, params=None):
        """Rows of ``query``; reconnects once if a fault ended the session."""
        for attempt in (1, 2):
            try:
                cursor = self._cursor()
                cursor.execute(query, params)
                return cursor.fetchall() if cursor.description else []
            except Exception:
                if attempt == 2:
                    raise
                self.close()
        raise AssertionError("unreachable")

    def counts(self) -> dict[int, int]:
        return dict(self.run("SELECT k, count(*) FROM model_rows GROUP BY k"))

    def reset(self) -> None:
        """Empty the table and release what an earlier example left."""
        self.run(TABLE)
        self.run("TRUNCATE model_rows")
        self.run(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None


class Faults:
    """Real faults: the proxy's, the server's restarts, pg_terminate_backend."""

    #: The fault kinds, restarts rarer than the rest (they cost ~0.1-0.5 s).
    KINDS = ["drop"] * 3 + ["reset"] * 2 + ["terminate"] * 2 + ["fast", "immediate"]

    def __init__(self, pg, proxy, observer: Observer) -> None:
        self.pg, self.proxy, self.observer = pg, proxy, observer
        self.can_restart = isinstance(get_server(), Cluster)

    def __call__(self, kind: str) -> None:
        if kind == "drop":
            self.proxy.drop()
        elif kind == "reset":
            self.proxy.reset()
        elif kind == "terminate":
            self.observer.run(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        elif self.can_restart:
            self.observer.close()
            self.pg.restart(kind)
        else:
            self.proxy.drop()

    def cut_commit(self, how: str) -> None:
        """Arm the proxy for the next ``COMMIT``: ``request``, ``reply``, or
        ``reply-down`` (the reply lost and nobody able to ask)."""
        self.proxy.cut_on_commit(deliver=how != "request", go_down=how == "reply-down")

    def cut_reply(self) -> None:
        """Lose whatever the server sends next, on every connection."""
        self.proxy.cut_after(0)

    def restore(self, went_down: bool = False) -> None:
        """End the armed faults; listen again if a trap took the proxy down."""
        self.proxy.restore()
        if went_down:
            self.proxy.tearDown()
            self.proxy.setUp()
