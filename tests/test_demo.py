"""``python -m reconnecting.demo``, run as a user runs it, in a subprocess.

The demo makes its own throwaway server, so each run here costs an initdb.
"""

import os
import re
import signal
import subprocess
import sys

from reconnecting.testing import wait_until

DRIVER = os.environ.get("RECONNECTING_TEST_DRIVER", "psycopg2")
SUMMARY = re.compile(
    r"(\d+) transfers, (\d+) outages, (\d+) retries, (\d+) lost, (\d+) duplicated"
)


def run_demo(*args):
    command = [sys.executable, "-m", "reconnecting.demo", *args, "--driver", DRIVER]
    return subprocess.run(command, capture_output=True, text=True)


def summary(result):
    lines = result.stdout.splitlines()
    assert lines, result.stderr
    match = SUMMARY.fullmatch(lines[-1])
    assert match, result.stdout + result.stderr
    return [int(number) for number in match.groups()], lines


def test_nothing_lost_nothing_duplicated():
    result = run_demo("300", "--fault-rate", "0.03")
    (transfers, outages, retries, lost, duplicated), lines = summary(result)
    assert (transfers, lost, duplicated) == (300, 0, 0)
    assert result.returncode == 0, result.stderr
    # Every one of the nine faults was met: each has its line, and each
    # interrupted a transfer (a cut COMMIT reply is resolved, not retried).
    faults = [line for line in lines if re.match(r"transfer +\d+: ", line)]
    assert len(faults) == 9
    assert outages == 9
    assert retries >= 9 - sum("COMMIT reply" in line for line in faults)
    assert not result.stderr


def test_without_resolution_cut_replies_are_booked_twice():
    result = run_demo("300", "--fault-rate", "0.03", "--no-resolve")
    (transfers, outages, retries, lost, duplicated), lines = summary(result)
    # Each cut COMMIT reply is a commit the server made and the client
    # retried: exactly one duplicate each.
    cut_replies = sum("cut the COMMIT reply" in line for line in lines)
    assert cut_replies >= 2
    assert (transfers, lost, duplicated) == (300, 0, cut_replies)
    assert result.returncode == 1


def test_ctrl_c_leaves_nothing_behind():
    command = [sys.executable, "-m", "reconnecting.demo", "1000000"]
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        while not lines or not lines[-1].startswith("Booking"):
            line = demo.stdout.readline()
            assert line, "the demo ended early:\n" + "".join(lines)
            lines.append(line)
        directory = re.search(r" in (/\S+)\n", "".join(lines)).group(1)
        with open(os.path.join(directory, "data", "postmaster.pid")) as f:
            postmaster = int(f.readline())
        demo.send_signal(signal.SIGINT)
        rest = demo.stdout.read()
        assert demo.wait() == 130
    finally:
        if demo.poll() is None:
            demo.kill()
    assert "Interrupted; removing the server and the proxy." in rest
    assert not os.path.exists(directory)

    def postmaster_gone():
        try:
            os.kill(postmaster, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(postmaster_gone, timeout=10)
