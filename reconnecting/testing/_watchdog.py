"""Clean up after the test process when it dies: a server's directory and
processes, or commands that undo what it did (firewall rules).

Started by ``start_watchdog()`` (for a ``Cluster``, a standby, a
``PgBouncer``, a ``partition()``) as a separate process in its own session::

    python reconnecting/testing/_watchdog.py FD JSON

``FD`` is the read end of a pipe whose write end only the test process
holds; ``JSON`` holds ``directory``, ``pid_files`` and ``undo``.  The test
process writes the pid of each server process it starts, one line each, or
the line ``done`` once it has cleaned up itself.  End of file without
``done`` means the test process is gone (even if it was SIGKILLed): the
watchdog then runs the ``undo`` commands, stops the reported processes and
those named by the ``pid_files`` (a start not reported yet) that still run
a command naming ``directory``: a postmaster with SIGQUIT (immediate
shutdown, which ends its backends too), anything else with SIGTERM, and
SIGKILL for what lingers.  Then it removes ``directory``.  After a normal
clean-up the test process closes the pipe last, so there is nothing left
to do.

Stdlib only, so it runs by file path without the package being importable.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

GRACE_SECONDS = 5.0


def start_watchdog(
    directory: str | None, *pid_files: str, undo: Sequence[Sequence[str]] = ()
) -> tuple[subprocess.Popen, int]:
    """Start a watchdog for *directory* (if any) and the *undo* commands;
    return it and the pipe's write end.

    Write each server pid to the pipe (``b"%d\\n"``), or ``b"done\\n"`` once
    nothing is left to undo; close it last, after stopping the servers and
    removing *directory* yourself.
    """
    spec = {
        "directory": directory,
        "pid_files": list(pid_files),
        "undo": [list(command) for command in undo],
    }
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, False)  # only we may hold it, no child of ours
    try:
        watchdog = subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(__file__), str(read_end)]
            + [json.dumps(spec)],
            pass_fds=(read_end,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C for the tests is not for it
            cwd="/",
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return watchdog, write_end


def _read_until_eof(fd: int) -> list[bytes]:
    """Collect the lines the test process writes, until end of file."""
    lines: list[bytes] = []
    buffer = b""
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while True:
            try:
                chunk = pipe.read(4096)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            if not chunk:
                return lines
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines.extend(line.strip() for line in complete)


def _pid_file_pid(path: str) -> int | None:
    """The pid in a pid file: covers a start not yet reported."""
    try:
        with open(path, "rb") as f:
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


def _command(pid: int, directory: str) -> bytes | None:
    """The program a pid runs, if its arguments name *directory* or a path in
    it (pids get reused); else None."""
    if pid == os.getpid():
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return None
    wanted = os.fsencode(directory)
    if any(a == wanted or a.startswith(wanted + b"/") for a in argv[1:]):
        return os.path.basename(argv[0])
    return None


def _stop(pids: set[int], directory: str) -> None:
    commands = {pid: _command(pid, directory) for pid in pids}
    targets = {pid: program for pid, program in commands.items() if program}
    for pid, program in targets.items():
        # SIGQUIT is a postmaster's immediate shutdown; for others, SIGTERM.
        postgres = program.startswith(b"postgres")
        try:
            os.kill(pid, signal.SIGQUIT if postgres else signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + GRACE_SECONDS
    while any(_alive(pid) for pid in targets) and time.monotonic() < deadline:
        time.sleep(0.01)
    for pid in targets:
        if _alive(pid) and _command(pid, directory):
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


def _undo(commands: list[list[str]]) -> None:
    for command in commands:
        try:
            subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python _watchdog.py FD JSON", file=sys.stderr)
        return 2
    fd, spec = int(args[0]), json.loads(args[1])
    # Terminal signals must not stop us before the clean-up.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    lines = _read_until_eof(fd)
    if b"done" in lines:
        return 0
    _undo(spec["undo"])
    directory = spec["directory"]
    if directory is not None:
        pids = {int(line) for line in lines if line.isdigit()}
        pids.update(filter(None, map(_pid_file_pid, spec["pid_files"])))
        _stop(pids, directory)
        _remove(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
