"""Nothing of the throwaway cluster outlives a pytest run killed with SIGKILL.

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

from helpers import alive, firewall_rules

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
