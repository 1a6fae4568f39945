"""The copy is a product: connection.py alone, or with aio.py beside it.

A sync user copies ``reconnecting/connection.py`` into a package of their
own; an asyncio user copies ``reconnecting/aio.py`` beside it.  Each test
copies the files into a temporary folder as the package ``myapp.db`` and
runs copied_ledger.py in a fresh interpreter: transfers through the copies,
while this process drops the proxied connections, cuts them at ``COMMIT``
(delivered to the server or not), stops the server until the workload's
``attempts()`` loop gives up, starts it, and crashes it.

Twice for each shell: in a project where ``reconnecting`` cannot be
imported, and in one where it is installed too, where the copies must keep
to themselves (``except myapp.db.connection.Retry`` catches what they raise,
and the installed package is never imported).  Afterwards: every transfer
the workload saw committed is applied once, nothing else is, no error
escaped, and nothing was printed on standard error, since the workload
leaves logging unconfigured.

The sync shell runs on the driver ``RECONNECTING_TEST_DRIVER`` names; the
asyncio one on psycopg 3.  The fixtures run here; only the workload runs on
the copies.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from helpers import ROOT, child_env

from reconnecting.testing import PgTestSetup, PortForwardTestSetup, wait_until

WORKLOAD = Path(__file__).with_name("copied_ledger.py")
ACCOUNTS = 8  # as copied_ledger.py
OPENING_BALANCE = 1_000_000
PROGRESS = 3  # transfers committed after each fault, before the next
WAIT_SECONDS = 120.0  # a deadlock detector, not a performance limit
COPIED = {"sync": ["connection.py"], "async": ["connection.py", "aio.py"]}


@pytest.fixture
def ledger(direct):
    direct.execute("DROP TABLE IF EXISTS account, applied")
    direct.execute("CREATE TABLE account (id int PRIMARY KEY, balance bigint)")
    # No unique constraint: a transfer applied twice shows as two rows.
    direct.execute(
        "CREATE TABLE applied (transfer_id text NOT NULL,"
        " src int NOT NULL, dst int NOT NULL, amount int NOT NULL)"
    )
    direct.execute(
        "INSERT INTO account SELECT i, %s FROM generate_series(1, %s) i",
        (OPENING_BALANCE, ACCOUNTS),
    )
    return direct


@pytest.fixture
def proxy(pg):
    with PortForwardTestSetup() as proxy:
        yield proxy


def copy_into(folder, files):
    """Make the package ``myapp.db`` in *folder*, with copies of *files*."""
    package = folder / "myapp" / "db"
    package.mkdir(parents=True)
    (folder / "myapp" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    for name in files:
        shutil.copyfile(ROOT / "reconnecting" / name, package / name)


class Workload:
    """copied_ledger.py, running; its events are read as they come."""

    def __init__(self, folder, shell, package, proxy):
        env = {
            "COPY_DSN": PgTestSetup().dsn,
            "COPY_HOST": proxy.host,
            "COPY_PORT": str(proxy.port),
        }
        if package == "installed":
            # The checkout on the path, as if installed; -P keeps tests/ off it.
            command, env = [sys.executable, "-P"], child_env(**env)
        else:
            # -I: no PYTHONPATH, no user site; copied_ledger.py hides the rest.
            command, env = [sys.executable, "-I"], {**os.environ, **env}
        self.stderr = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            [*command, str(WORKLOAD), str(folder), shell, package],
            env=env,
            cwd=folder,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.events = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.events.append(line.split(maxsplit=1))

    def count(self, kind):
        return sum(1 for event in self.events if event[0] == kind)

    def wait_for(self, condition, what):
        """Wait until *condition* holds; fail at once if the workload ended."""
        try:
            wait_until(
                lambda: condition() or self.process.poll() is not None, WAIT_SECONDS
            )
        except TimeoutError:
            pass
        if not condition():
            # pread: the offset of the file is the workload's too.
            stderr = os.pread(self.stderr.fileno(), 100_000, 0).decode()
            raise AssertionError(
                f"no {what}; last events {self.events[-5:]}; stderr:\n{stderr[-2000:]}"
            )

    def progress(self, transfers=PROGRESS):
        """Wait until *transfers* more are committed."""
        target = self.count("committed") + transfers
        self.wait_for(lambda: self.count("committed") >= target, "progress")

    def finish(self):
        """Stop the workload; return what it printed on standard error."""
        self.process.stdin.close()
        try:
            self.process.wait(WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()  # stuck: what it printed tells why
            self.process.wait()
        self.reader.join()
        with self.stderr:
            self.stderr.seek(0)
            return self.stderr.read()


def outages(workload, proxy, pg):
    """Drops, ``COMMIT`` cuts and restarts, with progress after each."""
    workload.progress()
    for deliver in [True, False, True, False, True, False]:
        fired = proxy.commit_cuts
        proxy.cut_on_commit(deliver=deliver)
        workload.wait_for(lambda: proxy.commit_cuts > fired, "cut")  # noqa: B023
        workload.progress()
    for _ in range(6):
        proxy.drop()
        workload.progress()
    # Down long enough that attempts() gives up, at least once.
    gave_up = workload.count("gave-up")
    pg.stop("fast")
    workload.wait_for(lambda: workload.count("gave-up") > gave_up, "give-up")
    pg.start()
    workload.progress()
    pg.restart("immediate")
    workload.progress()


def audit(pg, committed):
    """The ledger against the transfers the workload saw committed."""
    conn = pg.connect()  # a new one: the server restarted
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT transfer_id, count(*) FROM applied GROUP BY transfer_id")
        applied = dict(cursor.fetchall())
        cursor.execute("SELECT sum(balance) FROM account")
        total = cursor.fetchone()[0]
    finally:
        conn.close()
    return {
        "lost": len(committed - set(applied)),
        "duplicated": sum(n - 1 for n in applied.values()),
        "phantoms": len(set(applied) - committed),
        "total": total,
    }


@pytest.mark.parametrize("package", ["absent", "installed"])
@pytest.mark.parametrize("shell", ["sync", "async"])
def test_copies_survive_outages(pg, ledger, proxy, tmp_path, shell, package):
    copy_into(tmp_path, COPIED[shell])
    workload = Workload(tmp_path, shell, package, proxy)
    try:
        outages(workload, proxy, pg)
    finally:
        stderr = workload.finish()
    events = workload.events
    committed = {event[1].strip() for event in events if event[0] == "committed"}
    figures = audit(pg, committed)
    summary = None
    if events and events[-1][0] == "summary":
        summary = json.loads(events[-1][1])
    print(
        f"\n{shell} copy, package {package}: {len(committed)} transfers,"
        f" {workload.count('gave-up')} loops gave up,"
        f" {workload.count('unknown')} commit outcomes unknown,"
        f" {len(stderr.splitlines())} lines on stderr;",
        figures,
        summary,
    )
    assert stderr == "", stderr[-2000:]
    assert workload.process.returncode == 0, events[-5:]
    assert summary is not None, events[-5:]
    assert figures == {
        "lost": 0,
        "duplicated": 0,
        "phantoms": 0,
        "total": ACCOUNTS * OPENING_BALANCE,
    }
    # The copies used none of the installed package.
    assert summary["reconnecting modules"] == []
    assert summary["disconnects"] >= 10
