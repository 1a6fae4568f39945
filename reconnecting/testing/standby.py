"""A streaming standby of a throwaway cluster, for failover tests.

``make_standby()`` copies a running ``Cluster`` with
``pg_basebackup -R`` into a new directory of its own and starts it as a hot
standby: it follows the primary's WAL over a replication connection, answers
read-only queries, and refuses writes with ``cannot execute ... in a
read-only transaction``.  ``promote()`` makes it a primary, on a new
timeline; the old primary, if it runs again, knows nothing of that (a split
brain, which tests make on purpose only).

A ``Standby`` is a ``Cluster`` in everything else: its own port on
127.0.0.1, its own unix socket directory, the same server user when running
as root, ``stop()``, ``start()``, ``restart()``, and a watchdog that removes
it even when the test process is killed.  With ``synchronous=True`` the
primary waits, at every commit, until the standby has the commit on disk.
"""

from __future__ import annotations

import os
import time
from typing import Any

from reconnecting.testing._process import free_port
from reconnecting.testing.binaries import copy_binaries
from reconnecting.testing.cluster import Cluster
from reconnecting.testing.waiting import wait_until

__all__ = ["Standby", "make_standby"]


class Standby(Cluster):
    """A streaming standby of *primary*, a running ``Cluster``.

    :param synchronous: make the primary wait for this standby at every
        commit (``synchronous_standby_names``), until ``destroy()``.

    ``create()`` (or the first ``start()``) takes the base backup; use
    ``make_standby()`` to get one made and started.
    """

    def __init__(self, primary: Cluster, *, synchronous: bool = False) -> None:
        super().__init__(bindir=primary.bindir)
        self.primary = primary
        self.synchronous = synchronous
        #: Its ``cluster_name``, which the primary sees as ``application_name``.
        self.name: str | None = None
        self._role_created = True  # roles come with the base backup
        self._synchronous_on_primary = False

    def _prepare_directory(self) -> int:
        # Binaries copied into the primary's directory go with it: copy them
        # again, so that the standby can restart after the primary is gone.
        primary_dir = self.primary.directory or ""
        if self.bindir.startswith(os.path.join(primary_dir, "")):
            target = self._path("binaries")
            self.bindir = copy_binaries(self.bindir, target, self._account)
        return super()._prepare_directory()

    def _initdb(self) -> None:
        if not self.primary.running:
            raise RuntimeError("a standby needs a running primary")
        self._prepare_directory()
        primary = self.primary
        started = time.perf_counter()
        result = self._run(
            os.path.join(self.bindir, "pg_basebackup"),
            *("-D", self.data_dir, "-R", "-X", "stream", "--checkpoint=fast", "-N"),
            *("-h", primary.socket_dir, "-p", str(primary.port), "-U", primary.user),
        )
        self.initdb_seconds = time.perf_counter() - started
        if result.returncode != 0:
            output = result.stdout + result.stderr
            raise RuntimeError(f"pg_basebackup failed ({result.returncode}):\n{output}")
        self._forget_synchronous_standbys()
        self.port = free_port()
        self.name = f"standby_{self.port}"

    def _forget_synchronous_standbys(self) -> None:
        # The primary's own synchronous standbys came with the base backup
        # (ALTER SYSTEM): once promoted, this server must not wait for them.
        # Edited in place, so that the file keeps its owner.
        with open(os.path.join(self.data_dir, "postgresql.auto.conf"), "r+") as f:
            lines = f.readlines()
            f.seek(0)
            f.writelines(
                line for line in lines if not line.startswith("synchronous_standby")
            )
            f.truncate()

    def _server_command(self) -> list[str]:
        command = super()._server_command()
        settings = {
            "hot_standby": "on",
            "cluster_name": self.name,  # the walreceiver's application_name
            # Retry a lost primary at once rather than after 5 s, and notice
            # a promotion request as soon.
            "wal_retrieve_retry_interval": "50ms",
        }
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        return command

    def start(self, timeout: float = 30.0) -> None:
        """Start the standby (taking the base backup first if needed), and
        wait until the primary streams to it (as a synchronous standby with
        ``synchronous=True``)."""
        with self._lock:
            if self.running:
                return
            super().start(timeout)
            if self.is_primary:
                return  # promoted: there is nothing to follow any more
            if self.synchronous and not self._synchronous_on_primary:
                self.primary._execute(
                    f"ALTER SYSTEM SET synchronous_standby_names = '\"{self.name}\"'",
                    "SELECT pg_reload_conf()",
                )
                self._synchronous_on_primary = True
            state = "sync" if self.synchronous else "async"
            wait_until(lambda: self._replication_state() == state, timeout)
            if self.synchronous:
                # Commits wait for a standby only once the checkpointer has
                # read the new setting; it reads a pending reload before any
                # checkpoint, so once CHECKPOINT returns, every commit waits.
                self.primary._execute("CHECKPOINT")

    def _replication_state(self) -> str | None:
        """The primary's ``sync_state`` of this standby while it streams."""
        return self.primary._value(
            "SELECT sync_state FROM pg_stat_replication"
            " WHERE application_name = %s AND state = 'streaming'",
            (self.name,),
        )

    def catch_up(self, timeout: float = 30.0) -> None:
        """Wait until the standby has replayed all the primary has written."""
        target = self.primary._value("SELECT pg_current_wal_lsn()::text")

        def replayed() -> Any:
            return self._value(
                "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
            )

        wait_until(replayed, timeout)

    def promote(self, timeout: int = 60) -> None:
        """Make the standby a primary, and wait until it takes writes.

        :raises RuntimeError: if it is still a standby after *timeout* seconds.
        """
        if not self._value("SELECT pg_promote(true, %s)", (timeout,)):
            raise RuntimeError(f"the standby was not promoted in {timeout} s")

    def destroy(self) -> None:
        """Stop and remove the standby; a primary that waited for it no
        longer does."""
        with self._lock:
            if self._synchronous_on_primary and self.primary.running:
                self.primary._execute(
                    "ALTER SYSTEM RESET synchronous_standby_names",
                    "SELECT pg_reload_conf()",
                )
                self._synchronous_on_primary = False
            super().destroy()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Standby {self.host}:{self.port} of port {self.primary.port} {state}>"


def make_standby(primary: Cluster, synchronous: bool = False) -> Standby:
    """Return a new streaming ``Standby`` of *primary*, a running cluster,
    started and streaming.

    :param synchronous: make *primary* wait for the standby at every
        commit, until the standby is destroyed.
    """
    standby = Standby(primary, synchronous=synchronous)
    try:
        standby.start()
    except BaseException:
        standby.destroy()
        raise
    return standby
