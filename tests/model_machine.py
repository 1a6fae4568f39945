"""What the sync and asyncio models share: the machine's bookkeeping of the
answers, the invariant, the faults rule, and how a model is run.

``ContractMachine`` is the base of ``ConnectionModel`` (test_model.py) and
``AsyncConnectionModel`` (test_model_async.py); each makes the calls its
way and reports the answer here, which updates the ``Reference``.
"""

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from model_reference import ContractError, Faults, Observer, Reference, examples

from reconnecting.testing import PortForwardTestSetup


@pytest.fixture(scope="module", name="proxy")
def proxy_fixture(pg):
    """The proxy the models connect through; the faults are its."""
    with PortForwardTestSetup() as proxy:
        yield proxy


def run_model(machine, pg, proxy, default_examples):
    """Run ``machine`` for ``RECONNECTING_MODEL_EXAMPLES`` examples."""
    observer = Observer(pg)
    try:
        run_state_machine_as_test(
            lambda: machine(pg, proxy, observer),
            settings=settings(
                max_examples=examples(default_examples),
                stateful_step_count=25,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
    finally:
        observer.close()


class ContractMachine(RuleBasedStateMachine):
    """The reference model, the faults, and the checks of every answer."""

    block = None  # keys written in a block that is one unit, while in one
    db = None

    def __init__(self, pg, proxy, observer):
        super().__init__()
        self.pg, self.proxy, self.observer = pg, proxy, observer
        self.faults = Faults(pg, proxy, observer)
        self.ref = Reference()

    # -- the answers of the calls --------------------------------------------------

    def retried(self, key, doubtful):
        """The call raised ``Retry``."""
        ref = self.ref
        if not (ref.faulted or ref.needs_rollback):
            raise ContractError("Retry with no outage")
        if key is not None:
            ref.absent.add(key)
        ref.unknown() if doubtful else ref.retry()
        ref.faulted, ref.pid = False, None
        return "retry", None

    def in_doubt(self):
        """The call raised ``CommitOutcomeUnknown``, where it may."""
        self.ref.unknown()
        self.ref.faulted, self.ref.pid = False, None
        return "unknown", None

    def worked(self, value, told, talks, pid):
        """The call returned ``value``; ``told``: Retry was raised before it
        and no rollback() since; ``pid``: the server session under it."""
        ref = self.ref
        if told and talks:
            raise ContractError("a call worked before rollback() after Retry")
        if ref.session and ref.pid and pid and pid != ref.pid:
            raise ContractError(f"server session changed silently ({ref.session} lost)")
        ref.pid = pid or ref.pid
        return "ok", value

    def block_over(self, committed):
        """A block that is one unit ended: all its writes share its fate."""
        keys, self.block = self.block, None
        ref = self.ref
        if committed:
            ref.commit()
            ref.committed.update(keys)
            ref.absent.difference_update(keys)
        else:
            ref.rollback()
            ref.absent.update(keys)
            ref.committed.difference_update(keys)

    # -- invariants and faults ------------------------------------------------------

    @invariant()
    def table_matches_what_the_caller_was_told(self):
        if self.db is None:
            return
        problems = self.ref.problems(self.observer.counts())
        if problems:
            raise ContractError("; ".join(problems))

    @rule(kind=st.sampled_from(Faults.KINDS))
    def fault(self, kind):
        self.faults(kind)
        self.ref.faulted = True
