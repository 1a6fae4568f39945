"""Clean up a throwaway PostgreSQL cluster when the test process dies.

Started by ``reconnecting.testing.cluster.Cluster`` as a separate process in
its own session::

    python -m reconnecting.testing._watchdog FD CLUSTER_DIR DATA_DIR

``FD`` is the read end of a pipe whose write end only the test process
holds.  The test process writes the postmaster pid, one line per server
start.  End of file means the test process is gone (even if it was
SIGKILLed): the watchdog then stops the postmaster with SIGQUIT (SIGKILL if
it lingers) and removes ``CLUSTER_DIR``.  After a normal clean-up the test
process closes the pipe last, so there is nothing left to do.

Stdlib only, so it runs by file path without the package being importable.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time

GRACE_SECONDS = 5.0


def _read_until_eof(fd: int) -> list[int]:
    """Collect the pids the test process reports, until end of file."""
    pids: list[int] = []
    buffer = b""
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while True:
            try:
                chunk = pipe.read(4096)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            if not chunk:
                return pids
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            pids.extend(int(line) for line in lines if line.strip().isdigit())


def _pid_file_pid(data_dir: str) -> int | None:
    """The pid in ``postmaster.pid``: covers a start not yet reported."""
    try:
        with open(os.path.join(data_dir, "postmaster.pid"), "rb") as f:
            first = f.readline().strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # The state letter follows the parenthesised command name.
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


def _is_our_postmaster(pid: int, data_dir: str) -> bool:
    """Check the pid still runs ``postgres -D DATA_DIR`` (pids get reused)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    if not argv or not os.path.basename(argv[0]).startswith(b"postgres"):
        return False
    wanted = os.fsencode(data_dir)
    return any(a == b"-D" and b == wanted for a, b in zip(argv, argv[1:], strict=False))


def _stop(pids: set[int], data_dir: str) -> None:
    targets = {pid for pid in pids if _is_our_postmaster(pid, data_dir)}
    for pid in targets:
        try:
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown
        except OSError:
            pass
    deadline = time.monotonic() + GRACE_SECONDS
    while any(_alive(pid) for pid in targets) and time.monotonic() < deadline:
        time.sleep(0.01)
    for pid in targets:
        if _alive(pid) and _is_our_postmaster(pid, data_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _remove(path: str) -> None:
    # Backends of a killed postmaster may still be exiting and writing files.
    deadline = time.monotonic() + GRACE_SECONDS
    while os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print(
            "usage: python -m reconnecting.testing._watchdog FD CLUSTER_DIR DATA_DIR",
            file=sys.stderr,
        )
        return 2
    fd, cluster_dir, data_dir = int(args[0]), args[1], args[2]
    # Terminal signals must not stop us before the clean-up.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    pids = set(_read_until_eof(fd))
    pid = _pid_file_pid(data_dir)
    if pid is not None:
        pids.add(pid)
    _stop(pids, data_dir)
    _remove(cluster_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
