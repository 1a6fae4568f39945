"""Nothing of the throwaway cluster outlives a pytest run killed with SIGKILL,
nor a Ctrl-C at any moment (the end of this module).

tests/test_pgsql.py kills a plain Python process that holds a fresh
cluster, and checks its postmaster and directory.  This kills a *pytest*
process in the middle of a test, after the server was restarted (so the
watchdog must know the new postmaster), while clients are connected
directly, through the proxy and through PgBouncer, with transactions open,
a synchronous streaming standby follows the server, and (as root) the
proxy's port is partitioned with iptables rules; then it checks every
process of the server and of the standby (the postmasters and all their
children: backends, checkpointer, WAL sender and receiver...), PgBouncer,
their directories, the watchdog processes themselves, and the firewall
rules.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from contextlib import suppress
from pathlib import Path

import pytest
from helpers import alive, child_env, firewall_rules

from reconnecting.testing import wait_until
from reconnecting.testing.server import SERVER_ENV

CHILD_TEST = """
    import json, os, threading
    from reconnecting import ReconnectingConnection
    from reconnecting.testing import PgTestSetup, PortForwardTestSetup
    from reconnecting.testing.pgbouncer import PgBouncer, pgbouncer_unavailable
    from reconnecting.testing.standby import make_standby

    def children(pid):
        found = []
        for entry in os.listdir("/proc"):
            try:
                stat = open(f"/proc/{entry}/stat", "rb").read()
            except OSError:
                continue
            if int(stat[stat.rfind(b")") + 2 :].split()[1]) == pid:
                found.append(int(entry))
        return found

    def test_killed_in_the_middle():
        pg = PgTestSetup()
        pg.setUp()
        first = pg.server.pid
        pg.restart("immediate")
        proxy = PortForwardTestSetup()
        proxy.setUp()
        db = ReconnectingConnection(
            lambda: pg.connect(host=proxy.host, port=proxy.port))
        clients = [pg.connect() for _ in range(3)] + [db]
        cluster = pg.server
        standby = make_standby(cluster, synchronous=True)
        standby.restart("immediate")  # the watchdog must know the new one
        reader = pg.connect(host=standby.host, port=standby.port)
        reader.cursor().execute("SELECT 1")  # a transaction open on the standby
        pooled = pgbouncer_unavailable() is None
        if pooled:
            bouncer = PgBouncer(pool_mode="session")
            bouncer.start()
            bouncer.restart()
            clients.append(bouncer.connect(pg.dbname))
        for client in clients:
            client.cursor().execute("SELECT txid_current()")  # stays open
        partitioned = PortForwardTestSetup.partition_unavailable() is None
        if partitioned:
            proxy.partition()
        servers = [cluster.pid, standby.pid]
        print(json.dumps({
            "first": first,
            "postmaster": cluster.pid,
            "server": [pid for s in servers for pid in [s, *children(s)]],
            "directories": [cluster.directory, standby.directory]
            + [bouncer.directory] * pooled,
            "watchdogs": [cluster._watchdog.pid, standby._watchdog.pid]
            + [bouncer._watchdog.pid] * pooled,
            "pgbouncer": bouncer.pid if pooled else None,
            "partitioned": partitioned,
            "port": proxy.port,
        }), flush=True)
        threading.Event().wait(300)
"""


def mentions(directory):
    """Processes whose command line names ``directory``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if entry.isdigit() and os.fsencode(directory) in cmdline:
            found.append(int(entry))
    return found


def shared_memory_segments():
    """PostgreSQL's POSIX shared memory segments, which outlive a SIGKILL."""
    return {name for name in os.listdir("/dev/shm") if name.startswith("PostgreSQL.")}


def test_a_killed_pytest_run_leaves_no_server_process_or_directory(tmp_path):
    segments_before = shared_memory_segments()
    (tmp_path / "test_child.py").write_text(textwrap.dedent(CHILD_TEST))
    env = {k: v for k, v in os.environ.items() if k != SERVER_ENV}
    child = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-s", "-q", "-p", "no:cacheprovider"]
        + ["--rootdir", str(tmp_path), str(tmp_path / "test_child.py")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # pytest prints its header first; our line is the JSON one.
        for line in child.stdout:
            if line.startswith("{"):
                break
        else:
            raise AssertionError(f"the child run ended early ({child.wait()})")
        found = json.loads(line)
        assert found["postmaster"] != found["first"]  # restarted
        assert len(found["server"]) > 10  # 2 postmasters, backends, aux processes
        assert all(alive(pid) for pid in found["server"])
        assert all(map(os.path.isdir, found["directories"]))
        if found["pgbouncer"] is not None:
            assert alive(found["pgbouncer"])
        if found["partitioned"]:
            assert len(firewall_rules(found["port"])) == 2
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    pids = [*found["server"], *found["watchdogs"], found["pgbouncer"]]
    pids = [pid for pid in pids if pid is not None]
    directories = found["directories"]

    def mentioned():
        return [pid for directory in directories for pid in mentions(directory)]

    with suppress(TimeoutError):  # the assertions below say what is left
        wait_until(
            lambda: (
                not any(map(alive, pids))
                and not any(map(os.path.lexists, directories))
                and not mentioned()
                and not (found["partitioned"] and firewall_rules(found["port"]))
                # Another process's initdb may hold a segment for a moment.
                and shared_memory_segments() <= segments_before
            )
        )
    assert [pid for pid in pids if alive(pid)] == []
    assert [d for d in directories if os.path.lexists(d)] == []
    assert mentioned() == []
    assert shared_memory_segments() <= segments_before
    if found["partitioned"]:
        assert firewall_rules(found["port"]) == []


# -- Ctrl-C at any moment ---------------------------------------------------------
#
# A Ctrl-C in a terminal signals the whole foreground process group.  Each
# child below runs in a group of its own, which gets the SIGINT at a chosen
# moment; the check is then on what *that* child made (other processes on
# the machine may run clusters of their own meanwhile).


def process_table():
    """{pid: (parent pid, argv)} of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        table[int(entry)] = (int(stat[stat.rfind(b")") + 2 :].split()[1]), argv)
    return table


def descendants(pid):
    """{pid: argv} of the processes below *pid*."""
    table, found, parents = process_table(), {}, {pid}
    while True:
        more = {p: argv for p, (ppid, argv) in table.items() if ppid in parents}
        more = {p: argv for p, argv in more.items() if p not in found}
        if not more:
            return found
        found.update(more)
        parents = set(more)


def mapped_segments(pid):
    """The POSIX shared memory segments *pid* has mapped."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    return {
        line.rsplit("/", 1)[1]
        for line in maps.splitlines()
        if "/dev/shm/PostgreSQL." in line
    }


def cluster_directory(argvs):
    """The cluster directory that a data directory in these argvs is in."""
    for argv in argvs:
        for arg in argv:
            if b"/reconnecting-pg-" in arg and arg.endswith(b"/data"):
                return os.fsdecode(os.path.dirname(arg))
    return None


def first(moment, pid):
    """What *moment* returns for *pid*, as soon as it returns something."""
    found = []

    def check():
        found.append(moment(pid))
        return found[-1]

    wait_until(check, timeout=60, interval=0.001)
    return found[-1]


def interrupted(command, moment, **popen):
    """Run *command* in a process group of its own; at the first *moment*
    (a function of the child's pid returning what it saw, or None), send
    the group SIGINT.  Return what it saw, its exit status and output."""
    child = subprocess.Popen(
        command,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **popen,
    )
    try:
        seen = first(moment, child.pid)
        os.killpg(child.pid, signal.SIGINT)
        if seen.get("stopped"):
            # Time for the child to end while its initdb's server is
            # stopped, as it used to (initdb interrupted, the directory
            # removed); now it waits for initdb, which waits for the server.
            with suppress(TimeoutError):
                wait_until(lambda: child.poll() is not None, timeout=3)
            with suppress(ProcessLookupError):
                os.kill(seen["stopped"], signal.SIGCONT)
        stdout, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
    return seen, child.returncode, stdout, stderr


def during_initdb(pid):
    """When initdb's single-user server (``postgres --single``) holds POSIX
    shared memory segments.  It is stopped (SIGSTOP) there, so that a Ctrl-C
    can hit it at that moment whatever the timing; ``interrupted()`` lets it
    go on.  Interrupted initdb used to exit first, removing the files the
    server then failed to shut down with: it left its segments behind."""
    below = descendants(pid)
    for child, argv in below.items():
        if os.path.basename(argv[0]).startswith(b"postgres") and b"--single" in argv:
            with suppress(ProcessLookupError):
                os.kill(child, signal.SIGSTOP)
                if segments := mapped_segments(child):
                    return {
                        "segments": segments,
                        "directory": cluster_directory(below.values()),
                        "stopped": child,
                    }
                os.kill(child, signal.SIGCONT)
    return None


def during_start(pid):
    """When the postmaster was launched, before it accepts connections."""
    below = descendants(pid)
    for argv in below.values():
        if any(arg.startswith(b"unix_socket_directories=") for arg in argv):
            return {"segments": set(), "directory": cluster_directory(below.values())}
    return None


def assert_nothing_left(seen, segments_before):
    """Nothing of the cluster left, nor any segment made since the start
    (another process's initdb may hold one for a moment: waited for)."""
    directory = seen["directory"]
    assert directory is not None

    def new_segments():
        return (shared_memory_segments() - segments_before) | (
            seen["segments"] & shared_memory_segments()
        )

    def gone():
        return not (os.path.lexists(directory) or mentions(directory) or new_segments())

    with suppress(TimeoutError):
        wait_until(gone, timeout=30)
    assert not os.path.lexists(directory)
    assert mentions(directory) == []
    assert new_segments() == set()


SET_UP = """
import threading
from reconnecting.testing import PgTestSetup
PgTestSetup().setUp()
print("set up", flush=True)
threading.Event().wait(300)
"""


@pytest.mark.parametrize("moment", [during_initdb, during_start])
def test_ctrl_c_while_the_cluster_is_made_leaves_nothing(moment):
    before = shared_memory_segments()
    seen, status, stdout, stderr = interrupted([sys.executable, "-c", SET_UP], moment)
    assert "KeyboardInterrupt" in stderr and "set up" not in stdout
    assert_nothing_left(seen, before)


CHILD_WAITS = """
    import threading
    def test_waits(pg_database):
        print("in the test", pg_database.server.directory, flush=True)
        threading.Event().wait(300)
"""


def test_ctrl_c_during_a_test_leaves_nothing(tmp_path):
    (tmp_path / "test_waits.py").write_text(textwrap.dedent(CHILD_WAITS))
    before = shared_memory_segments()
    lines = []

    def in_the_test(pid):
        line = child_stdout.readline()
        lines.append(line)
        if line.startswith("in the test"):
            return {"segments": set(), "directory": line.split()[-1]}
        return None

    child = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-s", "-q", "-p", "no:cacheprovider"]
        + ["--rootdir", str(tmp_path), str(tmp_path / "test_waits.py")],
        cwd=tmp_path,
        env={k: v for k, v in child_env().items() if k != SERVER_ENV},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    child_stdout = child.stdout
    try:
        seen = first(in_the_test, child.pid)
        assert os.path.isdir(seen["directory"])
        os.killpg(child.pid, signal.SIGINT)
        rest = child.stdout.read()
        assert child.wait(60) == 2  # pytest's status for an interrupted run
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        child.stdout.close()
    assert "KeyboardInterrupt" in rest
    assert_nothing_left(seen, before)


def test_ctrl_c_as_the_demo_starts_leaves_nothing():
    before = shared_memory_segments()
    seen, status, stdout, stderr = interrupted(
        [sys.executable, "-m", "reconnecting.demo", "1000"], during_initdb
    )
    assert status == 130, stderr
    assert "Interrupted; removing the server and the proxy." in stdout
    assert stderr == ""  # no traceback
    assert_nothing_left(seen, before)
