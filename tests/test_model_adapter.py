"""A stateful model of the Zope adapter: commits in doubt, checked for real.

Hypothesis runs transactions over one adapter behind a proxy (one-phase or
two-phase), with or without a second adapter (straight to the server) and
a resource of another kind (in memory), and breaks them at the vote, the
finish and the abort.  After every step it checks what the rule of
docs/adapter.rst promises: no transaction is prepared on the server that
no adapter has noted, and what the caller was told (success, a retry, a
partial commit, an unknown outcome, another resource's failure) matches
what the server holds.  Decisions left unknown are finished as the page
documents: by looking at what the deciding connection committed.

``RECONNECTING_MODEL_EXAMPLES`` sets the number of examples (a few for CI).
"""

import os
from collections import Counter
from urllib.parse import quote_plus

import pytest
import transaction
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from reconnecting import CommitOutcomeUnknown, Retry
from reconnecting.testing import PgTestSetup, PortForwardTestSetup
from reconnecting.testing.pages import MemoryResource, ResourceError
from reconnecting.zope.adapter import ReconnectingDatabaseAdapter
from reconnecting.zope.datamanager import GID_PREFIX, PartialCommitError

pytestmark = pytest.mark.model

DRIVER = os.environ.get("RECONNECTING_TEST_DRIVER", "psycopg2")
EXAMPLES = int(os.environ.get("RECONNECTING_MODEL_EXAMPLES", "10"))

#: What the last run did: examples, and steps by fault (``pytest -s`` shows it).
RAN = Counter()

FAULTS = [
    None,
    "drop before the vote",  # the proxied connection is gone when it votes
    "commit reply lost",  # COMMIT (PREPARED) reaches the server, no reply
    "commit lost",  # COMMIT (PREPARED) never reaches the server
    "commit reply lost, server away",  # ... and nobody can ask in time
    "foreign vote fails",
    "foreign finish fails",
    "late vote fails, server away",  # the abort cannot reach the server
]


@pytest.fixture(scope="module")
def world():
    server = PgTestSetup()
    server.setUp()
    proxy = PortForwardTestSetup()
    proxy.setUp()
    admin = server.connect()
    admin.autocommit = True
    cursor = admin.cursor()
    cursor.execute("CREATE TABLE model_a (k int)")
    cursor.execute("CREATE TABLE model_b (k int)")
    yield server, proxy, cursor
    admin.close()
    proxy.tearDown()
    server.tearDown()


class AdapterModel(RuleBasedStateMachine):
    """Transactions over adapter ``a`` (proxied) and maybe ``b`` and a
    foreign resource; the model keeps what each value must or may be."""

    world = None

    def __init__(self):
        super().__init__()
        self.server, self.proxy, self.admin = self.world
        self.tm = transaction.TransactionManager()
        self.adapters = {}
        self.values = 0
        # value -> {"a": "yes" | "no" | "either", "b": ..., "foreign": ...}
        self.expected = {}
        self.foreign_committed = set()

    @initialize(a_two_phase=st.booleans(), b_two_phase=st.booleans())
    def make_adapters(self, a_two_phase, b_two_phase):
        RAN["examples"] += 1
        server, proxy = self.server, self.proxy
        user = quote_plus(server.user)
        password = quote_plus(server.password)
        for name, host, port, mode in (
            ("a", proxy.host, proxy.port, a_two_phase),
            ("b", quote_plus(server.host), server.port, b_two_phase),
        ):
            self.adapters[name] = ReconnectingDatabaseAdapter(
                f"dbi://{user}:{password}@{host}:{port}/{server.dbname}",
                transaction_manager=self.tm,
                two_phase=mode,
                driver=DRIVER,
                resolve_timeout=0.2,
            )

    def teardown(self):
        self.tm.abort()
        self.proxy.tearDown()
        self.proxy.setUp()
        for adapter in self.adapters.values():
            adapter.prepared.finish(timeout=5)
            adapter.disconnect()
        self.admin.execute("SELECT gid FROM pg_prepared_xacts")
        for (gid,) in self.admin.fetchall():
            if gid.startswith(GID_PREFIX):
                self.admin.execute(f"ROLLBACK PREPARED '{gid}'")
        self.admin.execute("TRUNCATE model_a, model_b")

    # -- the step ---------------------------------------------------------------

    @rule(
        with_b=st.booleans(),
        b_first=st.booleans(),
        with_foreign=st.booleans(),
        fault=st.sampled_from(FAULTS),
    )
    def unit_of_work(self, with_b, b_first, with_foreign, fault):
        RAN[fault or "no fault"] += 1
        self.values += 1
        value, proxy = self.values, self.proxy
        foreign = None
        if fault in ("foreign vote fails", "foreign finish fails"):
            with_foreign = True
        if with_foreign or fault == "late vote fails, server away":
            fail_at = {"foreign vote fails": "vote", "foreign finish fails": "finish"}
            foreign = MemoryResource(self.tm, "a storage", fail_at.get(fault))
            if fault == "late vote fails, server away":
                # Sorts after the adapter's connections: they have voted.
                foreign = MemoryResource(
                    self.tm, "~~ late", "vote", before_failing=proxy.tearDown
                )
            foreign.write(value)
        parts = ["b", "a"] if b_first else ["a", "b"]
        if not with_b:
            parts.remove("b")
        try:
            for name in parts:
                cursor = self.adapters[name]().cursor()
                cursor.execute(f"INSERT INTO model_{name} VALUES (%s)", (value,))
            if fault == "drop before the vote":
                proxy.drop()
            elif fault == "commit reply lost":
                proxy.cut_on_commit(deliver=True)
            elif fault == "commit lost":
                proxy.cut_on_commit(deliver=False)
            elif fault == "commit reply lost, server away":
                proxy.cut_on_commit(deliver=True, go_down=True)
            self.tm.commit()
            told = None
        except Exception as exc:  # what the caller is told
            told = exc
        self.tm.abort()
        proxy.restore()  # unharmed for what follows (and listening)
        if fault and "away" in fault:
            proxy.tearDown()
            proxy.setUp()
        self.expect(value, parts, foreign, told)
        self.finish_what_was_left(value, parts)

    def expect(self, value, parts, foreign, told):
        names = {self.adapters[n].redacted_dsn: n for n in parts}
        if self.adapters["a"].redacted_dsn == self.adapters["b"].redacted_dsn:
            raise AssertionError("the adapters must be told apart by their DSN")
        expected = dict.fromkeys(("a", "b"), "no")
        if told is None:
            expected.update(dict.fromkeys(parts, "yes"))
        elif isinstance(told, Retry) or (
            isinstance(told, ResourceError) and "vote" in str(told)
        ):
            assert self.tm.get() is not None
            # Nothing applied: whatever a vote committed would have made a
            # PartialCommitError instead (the late resource votes after
            # the adapter's connections; one-phase ones committed).
            if "late" in str(told):
                for name in parts:
                    if not self.adapters[name].two_phase:
                        expected[name] = "either"
        elif isinstance(told, ResourceError):  # at finish: ours committed
            expected.update(dict.fromkeys(parts, "yes"))
        elif isinstance(told, PartialCommitError):
            for dsn in told.committed:
                expected[names[dsn]] = "yes"
            for dsn in told.unknown:
                expected[names[dsn]] = "either"
        elif isinstance(told, CommitOutcomeUnknown):
            expected.update(dict.fromkeys(parts, "either"))
        else:
            raise told
        if foreign is not None:
            self.foreign_committed.update(foreign.committed)
        self.expected[value] = expected
        self.told = told

    def finish_what_was_left(self, value, parts):
        """Carry out known decisions, and find out the unknown ones as the
        page says: what the deciding one-phase connection committed."""
        decider = None
        for name, adapter in self.adapters.items():
            if not adapter.two_phase and value in self.rows(name):
                decider = True
            elif not adapter.two_phase and self.expected[value][name] == "either":
                decider = decider or False
        for adapter in self.adapters.values():
            adapter.prepared.finish(timeout=5)
            for gid in adapter.prepared:
                if adapter.prepared[gid] == "unknown":
                    assert decider is not None, (gid, self.told)
                    adapter.prepared.finish(gid, commit=decider, timeout=5)
        # Once decided, every part follows the decision: all or nothing,
        # unless the caller was told of a partial commit, or one-phase
        # connections, which commit when they vote, are more than the one
        # that decides last or meet a late resource's no.
        told = self.told
        one_phase = [name for name in parts if not self.adapters[name].two_phase]
        partial = isinstance(told, PartialCommitError) or len(one_phase) > 1
        partial = partial or (bool(one_phase) and "late" in str(told))
        held = {name: value in self.rows(name) for name in parts}
        if not partial and len(set(held.values())) > 1:
            raise AssertionError(f"the parts disagree: {held} ({told!r})")

    # -- what must hold after every step ----------------------------------------

    def rows(self, name):
        self.admin.execute(f"SELECT k FROM model_{name}")
        return {k for (k,) in self.admin.fetchall()}

    @invariant()
    def no_orphan_prepared_transactions(self):
        self.admin.execute("SELECT gid FROM pg_prepared_xacts")
        on_server = {gid for (gid,) in self.admin.fetchall()}
        noted = set()
        for adapter in self.adapters.values():
            noted.update(adapter.prepared)
        orphans = {gid for gid in on_server if gid.startswith(GID_PREFIX)} - noted
        assert not orphans, orphans

    @invariant()
    def the_server_holds_what_the_caller_was_told(self):
        if not self.expected:
            return
        for name in ("a", "b"):
            rows = self.rows(name)
            for value, expected in self.expected.items():
                if expected[name] == "yes":
                    assert value in rows, (name, value, expected)
                elif expected[name] == "no":
                    assert value not in rows, (name, value, expected)


def test_adapter_model(world):
    AdapterModel.world = world
    AdapterModel.TestCase.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=5,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    RAN.clear()
    AdapterModel.TestCase().runTest()
    print(f"\nadapter model ({DRIVER}): {dict(RAN)}")
