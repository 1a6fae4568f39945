"""Dropping the packets of a port in the kernel: ``PortForwardTestSetup.partition()``.

A ``Partition`` puts two ``iptables`` rules in place on the loopback
interface, dropping the TCP packets to and from one address and port, and
takes them away again.  Rules still in place when the process ends are
removed then, and the watchdog process of ``_watchdog.py`` removes them
even when the process is killed outright.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import threading

from reconnecting.testing._watchdog import start_watchdog

__all__ = ["Partition"]

_NO_ROOT = "dropping packets in the kernel needs root (CAP_NET_ADMIN)"
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
_partitioned: set[Partition] = set()  # those with rules in place


def _firewall(ipv6: bool) -> str:
    """Return the path of iptables (or ip6tables); RuntimeError if missing."""
    name = "ip6tables" if ipv6 else "iptables"
    path = os.environ.get("PATH", os.defpath) + os.pathsep + _SBIN
    found = shutil.which(name, path=path)
    if found is None:
        raise RuntimeError(
            f"partition() needs {name} to drop packets in the kernel: install it"
            " (Debian: apt-get install iptables)"
        )
    return found


def _run_firewall(ipv6: bool, *args: str) -> None:
    """Run iptables; PermissionError or RuntimeError with its message."""
    command = [_firewall(ipv6), "-w", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode == 0:
        return
    message = (result.stderr or result.stdout).strip()
    denied = ("permission denied", "operation not permitted", "must be root")
    if any(text in message.lower() for text in denied):
        raise PermissionError(f"{_NO_ROOT}: {message}")
    raise RuntimeError(f"{' '.join(command)} failed: {message}")


@atexit.register
def _heal_all() -> None:
    # Never leave a rule behind, even when a test forgot heal() and tearDown().
    for partition in list(_partitioned):
        try:
            partition.heal()
        except Exception:
            pass


class Partition:
    """The rules that drop the TCP packets to and from *address* and a port."""

    def __init__(self, address: str, ipv6: bool) -> None:
        self._address, self._ipv6 = address, ipv6
        self._lock = threading.Lock()
        #: The rules in place, as ``iptables`` arguments after ``-I`` or ``-D``.
        self.rules: list[list[str]] = []
        # Removes the rules if this process dies with them in place.
        self._watchdog: tuple[subprocess.Popen, int] | None = None

    @staticmethod
    def unavailable(ipv6: bool = False) -> str | None:
        """Tell why rules cannot be put in place here, or ``None`` if they can."""
        # Listing the rules needs the same rights as changing them.
        try:
            _run_firewall(ipv6, "-S", "INPUT")
        except (OSError, RuntimeError) as exc:
            return str(exc)
        return None

    def drop(self, port: int) -> None:
        """Put the rules for *port* in place, all or none; nothing if they are."""
        label = f"reconnecting partition of {self._address} port {port}"
        rules = [
            ["INPUT", "-i", "lo", "-p", "tcp", end, self._address, option, str(port)]
            + ["-m", "comment", "--comment", label, "-j", "DROP"]
            for end, option in (("-d", "--dport"), ("-s", "--sport"))
        ]
        with self._lock:
            if self.rules:
                return
            undo = [[_firewall(self._ipv6), "-w", "-D", *rule] for rule in rules]
            self._watchdog = start_watchdog(None, undo=undo)
            try:
                for rule in rules:
                    _run_firewall(self._ipv6, "-I", *rule)
                    self.rules.append(rule)
            except BaseException:
                self._remove_rules()
                raise
            _partitioned.add(self)

    def heal(self) -> None:
        """Remove the rules; nothing without them."""
        with self._lock:
            self._remove_rules()

    def _remove_rules(self) -> None:
        """Remove the rules (the lock is held); raise the first failure."""
        problem = None
        for rule in list(self.rules):
            try:
                _run_firewall(self._ipv6, "-D", *rule)
            except (OSError, RuntimeError) as exc:
                problem = problem or exc
            else:
                self.rules.remove(rule)
        if not self.rules:
            _partitioned.discard(self)
            self._stop_watchdog()
        if problem is not None:
            raise problem

    def _stop_watchdog(self) -> None:
        """Tell the watchdog the rules are gone, and wait for it to end."""
        if self._watchdog is None:
            return
        (watchdog, pipe), self._watchdog = self._watchdog, None
        try:
            os.write(pipe, b"done\n")
        finally:
            os.close(pipe)
        watchdog.wait(30)
