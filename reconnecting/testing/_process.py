"""The one program a fixture runs, in a private directory, watched.

A throwaway PostgreSQL server (``cluster.py``) and a throwaway PgBouncer
(``pgbouncer.py``) are each one long-running program with a temporary
directory of its own.  ``FixtureProcess`` is what they share: the program
runs in a session of its own (a Ctrl-C in the terminal is for the tests,
which then stop it), as the server's unprivileged account when running as
root, logging to a file in the directory; it is reported to a watchdog
(``_watchdog.py``) that stops it and removes the directory if the test
process dies; and only the process that made it stops and removes it,
never a forked child.  Whatever is left at exit goes, newest first.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2

from reconnecting.testing._watchdog import start_watchdog
from reconnecting.testing.binaries import server_account

__all__ = ["FixtureProcess", "free_port", "tail"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: str, lines: int = 20) -> str:
    """The last *lines* of the file at *path*, or why it cannot be read."""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as exc:
        return f"({exc})"


class FixtureProcess:
    """A program run by a fixture, with a private directory and a watchdog.

    A subclass names the program in messages (``_what``), its log file
    (``_log_name``), says how to stop it for good (``destroy()``), and
    calls ``_make_directory()``, ``_launch()`` and ``_wait_until_ready()``.
    """

    _what = "The program"
    _log_name = "program.log"
    _no_directory = "the program is not started yet"

    def __init__(self) -> None:
        self.directory: str | None = None
        self._account = server_account()
        self._owner_pid = os.getpid()
        self._lock = threading.RLock()
        self._proc: subprocess.Popen | None = None
        self._watchdog: subprocess.Popen | None = None
        self._pipe: int | None = None
        self._removed = False

    def _path(self, name: str) -> str:
        if self.directory is None:
            raise RuntimeError(self._no_directory)
        return os.path.join(self.directory, name)

    log_path = property(lambda self: self._path(self._log_name), doc="Its log file.")

    @property
    def running(self) -> bool:
        """True while the program started by this object runs."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The program's process id while it runs, else None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def destroy(self) -> None:
        raise NotImplementedError

    def _as_server_user(self) -> dict[str, Any]:
        if self._account is None:
            return {}
        # user= alone would keep group root and root's supplementary groups.
        return {"user": self._account[0], "group": self._account[1], "extra_groups": []}

    def _chown(self, *paths: str) -> None:
        if self._account is not None:
            for path in paths:
                os.chown(path, *self._account)

    def _make_directory(self, prefix: str, parent: str | None, pid_file: str) -> str:
        """Make the private directory, and the watchdog that removes it and
        stops the program whose pid *pid_file* (a name in it) holds."""
        self.directory = directory = tempfile.mkdtemp(prefix=prefix, dir=parent)
        _live[self] = None
        self._watchdog, self._pipe = start_watchdog(directory, self._path(pid_file))
        return directory

    def _tell_watchdog(self, pid: int) -> None:
        """Report a process to the watchdog, which stops it if we die."""
        try:
            if self._pipe is not None:
                os.write(self._pipe, b"%d\n" % pid)
        except OSError:
            pass

    def _launch(self, command: list[str], env: dict[str, str] | None = None) -> None:
        """Start the program, its output going to the log."""
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.directory,
                env=env,
                start_new_session=True,
                **self._as_server_user(),
            )
        self._tell_watchdog(self._proc.pid)

    def _wait_until_ready(self, answers: Callable[[], object], deadline: float) -> None:
        """Call *answers* until it stops raising ``OperationalError``.

        :raises RuntimeError: with the end of the log, if the program exits
            first, or still does not answer at *deadline* (``time.monotonic()``).
        """
        while True:
            assert self._proc is not None
            if (code := self._proc.poll()) is not None:
                self._proc = None
                problem = f"exited with code {code} while starting"
                break
            try:
                answers()
                return
            except psycopg2.OperationalError as exc:
                if time.monotonic() > deadline:
                    self._kill()
                    problem = f"did not accept connections in time ({exc})"
                    break
            time.sleep(0.01)
        log = tail(self.log_path)
        raise RuntimeError(f"{self._what} {problem}; {self.log_path}:\n{log}")

    def _kill(self) -> None:
        """Stop the program now (SIGKILL)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def _remove(self, stop: Callable[[], None]) -> None:
        """Stop the program with *stop* and remove the directory, once."""
        with self._lock:
            if self._removed:
                return
            self._removed = True
            _live.pop(self, None)
            if os.getpid() != self._owner_pid:
                return  # in a forked child: it is the parent's
            try:
                stop()
            finally:
                if self.directory is not None:
                    shutil.rmtree(self.directory, ignore_errors=True)
                if self._pipe is not None:  # last, so the watchdog finds nothing
                    os.close(self._pipe)
                    self._pipe = None
                if self._watchdog is not None:
                    try:
                        self._watchdog.wait(5)
                    except subprocess.TimeoutExpired:
                        pass


# In the order they were made (a dict keeps it): a PgBouncer goes before
# the server behind it, a standby before its primary.
_live: dict[FixtureProcess, None] = {}


@atexit.register
def _destroy_all() -> None:
    for process in reversed(list(_live)):
        process.destroy()
