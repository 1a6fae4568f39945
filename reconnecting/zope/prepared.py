"""What an adapter prepared and has not yet seen finished.

A two-phase data manager (:class:`~reconnecting.zope.twophase.TwoPhaseDataManager`)
notes its transaction here before it sends ``PREPARE TRANSACTION``, and
the note stays until the server confirms that the transaction is committed
or rolled back.  Each note carries the decision of the Zope transaction:

- ``None`` while the transaction is still voting;
- ``"abort"``: roll it back, if it was prepared at all;
- ``"commit"``: every vote said yes, so commit it;
- ``"unknown"``: the decision itself is in doubt (a one-phase commit that
  decided for all lost its reply); it stays prepared until somebody who
  knows the decision finishes it with :meth:`PreparedTransactions.finish`.

Conversations with the server about a note run in a thread of their own,
over a new server connection, and the caller waits for them only until
its deadline: a server that cannot be reached, or a network that stays
silent, never holds the caller longer than the adapter's
``resolve_timeout``.  A conversation that outlives its caller still
finishes its work, and updates the note.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from reconnecting.connection import is_disconnection

__all__ = ["COMMIT", "ABORT", "UNKNOWN", "PreparedTransactions", "StillPreparedError"]

log = logging.getLogger("reconnecting")

COMMIT, ABORT, UNKNOWN = "commit", "abort", "unknown"

# Outcomes after which there is nothing left to do.
_FINAL = {COMMIT: "committed", ABORT: "rolled back"}

# How long the caller waits, past its deadline, for the question asked last.
_GRACE = 0.5


class StillPreparedError(Exception):
    """A prepared transaction of the adapter could not be finished yet.

    ``gid`` names it, ``decision`` is what must become of it, and ``reason``
    says why it did not happen (the server unreachable, the transaction
    still being prepared by a backend that lost its client, ...).
    """

    def __init__(self, gid: str, decision: str, reason: str) -> None:
        super().__init__(gid, decision, reason)
        self.gid, self.decision, self.reason = gid, decision, reason

    def __str__(self) -> str:
        return (
            f"prepared transaction {self.gid} not finished"
            f" ({self.decision}): {self.reason}"
        )


@dataclass
class _Note:
    gid: str
    xid: str  # the server's id of the transaction, taken before PREPARE
    started: str  # when the server started, as it said then
    decision: str | None = None
    confirmed: bool = False  # the server replied to PREPARE TRANSACTION


class PreparedTransactions(Mapping[str, "str | None"]):
    """The prepared transactions of one adapter that are not known finished.

    ``connect`` makes a new server connection (a driver connection) for
    the conversations about them.  The adapter keeps one of these for all
    its threads, as its ``prepared`` attribute, so closing a connection
    forgets nothing.  It is a read-only mapping of each noted gid to its
    decision: ``dict(adapter.prepared)`` shows them.
    """

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._notes: dict[str, _Note] = {}
        # Outcomes found by errands, for a caller whose note another thread
        # finished meanwhile (only transactions that were in doubt).
        self._outcomes: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<PreparedTransactions {dict(self)!r}>"

    def __getitem__(self, gid: str) -> str | None:
        with self._lock:
            return self._notes[gid].decision

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(sorted(self._notes))

    def __len__(self) -> int:
        return len(self._notes)

    # -- what the data managers tell ------------------------------------------

    def note(self, gid: str, xid: str, started: str) -> None:
        """Note ``gid`` before ``PREPARE TRANSACTION`` is sent."""
        with self._lock:
            self._notes[gid] = _Note(gid, xid, started)

    def confirm(self, gid: str) -> None:
        """The server replied to ``PREPARE TRANSACTION``: it is prepared."""
        with self._lock:
            self._notes[gid].confirmed = True

    def decide(self, gid: str, decision: str) -> None:
        """Record the decision for ``gid``: ``"commit"``, ``"abort"`` or
        ``"unknown"``."""
        with self._lock:
            note = self._notes.get(gid)
            if note is not None:
                note.decision = decision

    def forget(self, gid: str) -> None:
        """``gid`` is finished, or was never prepared."""
        with self._lock:
            self._notes.pop(gid, None)

    # -- finishing ------------------------------------------------------------

    def settle(self, gid: str, timeout: float) -> str:
        """Carry out the decision for ``gid``; wait at most ``timeout``
        seconds (and a moment for the question asked last).

        Returns ``"committed"`` or ``"rolled back"`` (the note is then
        gone), or why nothing is known yet (the note stays).  The outcome
        may differ from the decision when somebody else finished the
        transaction by hand.
        """
        with self._lock:
            note = self._notes.get(gid)
            if note is None:
                return self._outcomes[gid]  # finished meanwhile, or KeyError
        errand = _Errand(self, note, time.monotonic() + timeout)
        return errand.outcome(timeout + _GRACE)

    def finish(
        self,
        gid: str | None = None,
        *,
        commit: bool | None = None,
        timeout: float = 10.0,
    ) -> dict[str, str]:
        """Finish prepared transactions; return each one's outcome by gid.

        Without ``gid``, every one whose decision is known (``"commit"`` or
        ``"abort"``).  With ``gid`` and ``commit`` (``True`` or ``False``),
        that one, whose decision somebody found out: a transaction left
        prepared with the decision ``"unknown"`` is finished this way.
        """
        if gid is not None:
            if commit is not None:
                self.decide(gid, COMMIT if commit else ABORT)
            gids = [gid]
        else:
            with self._lock:
                gids = [g for g, n in self._notes.items() if n.decision in _FINAL]
        deadline = time.monotonic() + timeout
        return {
            one: self.settle(one, max(0.0, deadline - time.monotonic())) for one in gids
        }

    def _settled(self, note: _Note, outcome: str) -> None:
        """An errand ended with ``outcome``: forget a finished transaction."""
        if outcome not in _FINAL.values():
            return
        with self._lock:
            if self._notes.get(note.gid) is note:
                del self._notes[note.gid]
            self._outcomes[note.gid] = outcome
        expected = _FINAL.get(note.decision or "")
        if expected is not None and outcome != expected:
            log.error(
                "Prepared transaction %s was %s by somebody else (the decision was %s)",
                note.gid,
                outcome,
                note.decision,
            )
        else:
            log.info("Prepared transaction %s %s", note.gid, outcome)


class _Errand(threading.Thread):
    """One conversation with the server about a note, in its own thread."""

    def __init__(self, owner: PreparedTransactions, note: _Note, deadline: float):
        super().__init__(name=f"reconnecting: finishing {note.gid}", daemon=True)
        self._owner, self._note, self._deadline = owner, note, deadline
        self._done = threading.Event()
        self._abandoned = False
        self._outcome = "unreachable"
        self.start()

    def outcome(self, patience: float) -> str:
        if not self._done.wait(patience):
            self._abandoned = True
            return "no answer in time"
        return self._outcome

    def run(self) -> None:
        raw, pause = None, 0.01
        while True:  # at least once, then until done or the deadline
            try:
                raw = raw or self._owner._connect()
                outcome = _settle(raw, self._note)
            except Exception as exc:
                if not is_disconnection(exc, raw):
                    outcome = f"failed ({type(exc).__name__}: {exc})".strip()
                    break
                _close(raw)
                raw, outcome = None, "unreachable"
            left = self._deadline - time.monotonic()
            if outcome not in ("unreachable", "busy") or left <= 0 or self._abandoned:
                break
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.5)
        _close(raw)
        self._owner._settled(self._note, outcome)
        self._outcome = outcome
        self._done.set()


def _settle(raw: Any, note: _Note) -> str:
    """Carry out ``note``'s decision on the autocommit connection ``raw``.

    Returns ``"committed"``, ``"rolled back"``, ``"busy"`` (ask again:
    another backend still holds the transaction), or why nobody can tell.
    """
    raw.autocommit = True
    cursor = raw.cursor()
    try:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_xacts WHERE gid = %s", (note.gid,)
        )
        if _first(cursor.fetchone()):
            if note.decision not in _FINAL:
                return "prepared"  # nobody knows what to do with it yet
            verb = "COMMIT" if note.decision == COMMIT else "ROLLBACK"
            try:
                cursor.execute(f"{verb} PREPARED '{note.gid}'")
            except Exception as exc:
                # 55000 "is busy": its backend is still finishing it;
                # 42704 "does not exist": it was finished meanwhile.
                if _sqlstate(exc) == "55000":
                    return "busy"
                if _sqlstate(exc) != "42704":
                    raise
            else:
                return _FINAL[note.decision]
        cursor.execute(
            "SELECT pg_postmaster_start_time()::text, txid_status(%s)",
            (int(note.xid),),
        )
        started, status = cursor.fetchone()
    finally:
        cursor.close()
    return _status_outcome(note, started, status)


def _status_outcome(note: _Note, started: str, status: str | None) -> str:
    """What became of ``note``'s transaction, now that it is not prepared."""
    if started != note.started and not note.confirmed:
        # The server restarted, or another took its place, since the id was
        # taken.  PREPARE is durable before it replies, and a prepared
        # transaction survives restarts; so this one never was, and its id
        # may since belong to somebody else's transaction.
        if status == "committed":
            return "the server restarted, and the id may have been reused"
        return "rolled back"
    if status == "in progress":
        return "busy"  # its backend is still preparing it, or ending it
    if status == "committed":
        return "committed"
    if status == "aborted":
        return "rolled back"
    return f"the server no longer knows transaction {note.xid}"


def _first(row: Any) -> Any:
    # Whatever row factory the caller chose: tuple, list, dict or namedtuple.
    if isinstance(row, Mapping):
        return next(iter(row.values()))
    return row[0]


def _sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "pgcode", None) or getattr(exc, "sqlstate", None)


def _close(raw: Any) -> None:
    if raw is not None:
        try:
            raw.close()
        except Exception:
            pass  # broken already; closing only frees the socket
