"""Helpers that the documentation's pages use to tell their stories.

A page imports what it needs from here in one line, so that the reader
sees the connection at work rather than the scaffolding around it: how an
error is printed, how log messages are kept, a thread that commits while
the page restarts the server, a listener for notifications.  None of this
is needed to use the package; the page teardown of the root
``conftest.py`` closes whatever a page leaves open.
"""

from __future__ import annotations

import fcntl
import importlib
import logging
import os
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from reconnecting.connection import CommitOutcomeUnknown, Retry
from reconnecting.testing.pgsql import PgTestSetup
from reconnecting.testing.waiting import wait_until

__all__ = [
    "Call",
    "LogMessages",
    "Listener",
    "MemoryResource",
    "PreparingWatch",
    "ResourceError",
    "Transfers",
    "Writer",
    "activity",
    "all_sent_acknowledged",
    "attempt",
    "commit_in_thread",
    "count_on",
    "dict_rows",
    "lose_a_prepared_statement",
    "multi_host_dsn",
    "outage",
    "print_error",
    "retransmissions",
    "run",
    "server_log",
    "server_port",
    "silence_after_commit_cut",
    "shutting_down",
    "waiting_clients",
    "waits_for_a_lock",
]

# -- failover.rst and pgbouncer.rst: a ledger of transfers through outages ----


def run(cursor: Any, statement: str, *args: Any) -> list[tuple] | None:
    """Execute *statement* with *args*; return the rows, if it has any."""
    cursor.execute(statement, args or None)
    return cursor.fetchall() if cursor.description else None


def server_port(cursor: Any) -> int:
    """The port of the server that *cursor*'s connection is on now."""
    rows = run(cursor, "SELECT current_setting('port')::int")
    assert rows
    return int(rows[0][0])


def count_on(server: Any, query: str = "SELECT count(*) FROM transfer") -> Any:
    """Ask *server* (a ``Cluster``) directly, over a connection of its own;
    return the first column of the first row."""
    conn = server.admin_connect()
    try:
        cursor = conn.cursor()
        cursor.execute(query)
        return cursor.fetchone()[0]
    finally:
        conn.close()


def multi_host_dsn(*servers: Any, **params: Any) -> str:
    """A libpq connection string naming every one of *servers* (anything
    with a ``port``: a cluster, a proxy) on 127.0.0.1, in order, with
    *params* added (such as ``target_session_attrs='read-write'``)."""
    words = [
        "host=" + ",".join("127.0.0.1" for _ in servers),
        "port=" + ",".join(str(server.port) for server in servers),
        "dbname=postgres user=postgres",
    ]
    words += [f"{name}={value}" for name, value in params.items()]
    # The clusters of a process share their password; last, out of sight.
    password = next(s.password for s in servers if getattr(s, "password", None))
    words.append(f"password={password}")
    return " ".join(words)


class Transfers:
    """``transfers(amount)`` inserts a row into table ``transfer`` through
    *cursor* and commits *db*: one transfer, one transaction.

    ``acknowledged`` lists the amounts whose commit returned, in order.
    """

    def __init__(self, db: Any, cursor: Any) -> None:
        self.db = db
        self.cursor = cursor
        self.acknowledged: list[int] = []

    def __call__(self, amount: int) -> None:
        run(self.cursor, "INSERT INTO transfer (amount) VALUES (%s)", amount)
        self.db.commit()
        self.acknowledged.append(amount)

    def attempt(self, amount: int) -> bool:
        """Make the transfer; after a ``Retry`` roll back and return False."""
        try:
            self(amount)
        except Retry:
            self.db.rollback()
            return False
        return True


class Writer(threading.Thread):
    """Writes transfers into table ``ledger (ref, amount)`` without pause
    until ``stop()``, each with a reference of its own, as an application
    that retries would.

    After a ``Retry`` it rolls back and writes the same reference again.
    After a ``CommitOutcomeUnknown`` it rolls back and first looks whether
    the row is there before writing it again.  ``acknowledged``, ``retries``
    and ``unknown`` list the references by what the writer was told.
    """

    def __init__(self, db: Any) -> None:
        super().__init__(name="ledger-writer", daemon=True)
        self.db = db
        self.cursor = db.cursor()
        self.acknowledged: list[int] = []
        self.retries: list[int] = []
        self.unknown: list[int] = []
        self._stop_writing = threading.Event()

    def recorded(self, ref: int) -> bool:
        """Whether the ledger holds *ref*."""
        count = run(self.cursor, "SELECT count(*) FROM ledger WHERE ref = %s", ref)
        return count == [(1,)]

    def write(self, ref: int) -> None:
        """Write *ref* once, however many outages that takes."""
        while True:
            try:
                if ref in self.unknown and self.recorded(ref):
                    self.acknowledged.append(ref)
                    return
                run(self.cursor, "INSERT INTO ledger VALUES (%s, 10)", ref)
                self.db.commit()
                self.acknowledged.append(ref)
                return
            except Retry:
                self.retries.append(ref)
                self.db.rollback()
                time.sleep(0.01)  # back off a little before the next try
            except CommitOutcomeUnknown:
                self.unknown.append(ref)
                self.db.rollback()

    def run(self) -> None:
        ref = 0
        while not self._stop_writing.is_set():
            ref += 1
            self.write(ref)

    def stop(self) -> None:
        """Finish the transfer under way, write no more, and wait."""
        self._stop_writing.set()
        self.join()


def waiting_clients(bouncer: Any, dbname: str) -> list[tuple]:
    """The clients of *dbname* that wait in PgBouncer for a server
    connection, as its admin console lists them."""
    clients = bouncer.admin("SHOW CLIENTS") or []
    return [c for c in clients if c[2] == dbname and c[3] == "waiting"]


def lose_a_prepared_statement(connect: Callable[[], Any], bouncer: Any) -> str:
    """Run one query six times, each in a transaction of its own, through
    a connection that *connect* makes to *bouncer*; let PgBouncer replace
    its server connections (``RECONNECT``); run the query once more.

    Returns ``'fine'``, or the error of the last run as ``Class: message``.
    """
    conn = connect()
    cursor = conn.cursor()
    query = "SELECT count(*) FROM transfer WHERE amount = %s"
    try:
        for n in range(6):
            run(cursor, query, n)
            conn.commit()
        bouncer.reconnect()
        run(cursor, query, 1)
        return "fine"
    except Exception as exc:  # the driver's error or a Retry: shown
        conn.rollback()
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def print_error(error: BaseException) -> None:
    """Print the error's class and the first line of its message.

    libpq explains a lost connection over three lines; the first says
    what happened, which is all an example about an outage needs.
    """
    first = (str(error).strip().splitlines() or [""])[0]
    print(f"{type(error).__name__}: {first}" if first else type(error).__name__)


class LogMessages(logging.Handler):
    """Keep the messages logged under ``reconnecting``, from INFO up.

    ``messages`` lists them as logged, oldest first; ``close()`` stops
    keeping them and gives the logger its level back.
    """

    def __init__(self, name: str = "reconnecting", level: int = logging.INFO) -> None:
        super().__init__()
        self.messages: list[str] = []
        self._logger = logging.getLogger(name)
        self._level = self._logger.level
        self._logger.addHandler(self)
        self._logger.setLevel(level)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(self.format(record))

    def close(self) -> None:
        if self in self._logger.handlers:
            self._logger.removeHandler(self)
            self._logger.setLevel(self._level)
        super().close()


def commit_in_thread(db: Any) -> tuple[threading.Thread, list[str]]:
    """Start ``db.commit()`` in a thread of its own.

    Returns the thread and a list that receives, once the commit is over,
    ``'committed'`` or the error it raised, printed as ``Class: message``.
    A page does this when something (a server restart) has to happen
    while the commit waits.
    """
    outcome: list[str] = []

    def commit() -> None:
        try:
            db.commit()
            outcome.append("committed")
        except Exception as exc:
            outcome.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=commit, name="commit_in_thread", daemon=True)
    thread.start()
    return thread, outcome


def dict_rows(driver_name: str) -> dict[str, Any]:
    """The ``connect()`` keywords that make the driver return rows as dicts.

    psycopg2's ``cursor_factory=RealDictCursor``, psycopg 3's
    ``row_factory=dict_row``.
    """
    if driver_name == "psycopg2":
        from psycopg2.extras import RealDictCursor

        return {"cursor_factory": RealDictCursor}
    from psycopg.rows import dict_row

    return {"row_factory": dict_row}


class Listener:
    """A connection of its own to the test database that LISTENs on a channel.

    ``received()`` returns every payload heard so far, in order; it makes
    the driver read what the server sent meanwhile.
    """

    def __init__(self, driver: ModuleType, channel: str) -> None:
        self._connection = driver.connect(PgTestSetup().dsn)
        self._connection.autocommit = True
        self._heard: list[str] = []
        self._psycopg3 = hasattr(self._connection, "add_notify_handler")
        if self._psycopg3:
            self._connection.add_notify_handler(
                lambda notify: self._heard.append(notify.payload)
            )
        cursor = self._connection.cursor()
        cursor.execute(f'LISTEN "{channel}"')
        cursor.close()

    def received(self) -> list[str]:
        if self._psycopg3:
            self._connection.execute("SELECT 1")  # handlers run as it reads
        else:
            self._connection.poll()
            self._heard.extend(notify.payload for notify in self._connection.notifies)
            self._connection.notifies.clear()
        return list(self._heard)

    def close(self) -> None:
        self._connection.close()


# -- Outages, one by one (faults.rst) and the silent network (halfopen.rst) --


def outage(call: Callable[[], object]) -> None:
    """Run *call*, and print the :class:`~reconnecting.Retry` it raises.

    The ``Retry`` is printed as :func:`print_error` prints any error,
    ``Retry: OperationalError: ...``; a call that meets no outage prints
    ``no outage``.
    """
    try:
        call()
    except Retry as exc:
        print_error(exc)
    else:
        print("no outage")


def _session_row(pid: int, columns: str, server: Any = None) -> tuple[Any, ...] | None:
    """*columns* of ``pg_stat_activity`` for backend *pid*, or None, asked over
    a connection of its own: to the test database, or as the superuser to
    *server* (a ``Cluster``, such as a standby)."""
    conn = PgTestSetup().connect() if server is None else server.admin_connect()
    try:
        cursor = conn.cursor()
        cursor.execute(f"SELECT {columns} FROM pg_stat_activity WHERE pid = %s", (pid,))
        row = cursor.fetchone()
        return None if row is None else tuple(row)
    finally:
        conn.close()


def activity(pid: int, server: Any = None) -> tuple[str, str] | None:
    """The state and query of the session of backend *pid*, or None once it
    has ended, seen from the outside: on the test server, or on *server*."""
    return _session_row(pid, "state, query", server)


def waits_for_a_lock(pid: int) -> bool:
    """Whether the session of backend *pid* on the test server waits for a lock."""
    return _session_row(pid, "wait_event_type") == ("Lock",)


def shutting_down() -> bool:
    """Whether the test server turns a new session away because it is
    shutting down."""
    try:
        PgTestSetup().connect().close()
    except Exception as exc:
        return "shutting down" in str(exc)
    return False


def server_log(pid: int) -> list[str]:
    """The test server's log lines about backend *pid*, without the prefix
    (time stamp and pid) that the log line starts with."""
    with open(PgTestSetup().server.log_path) as log:
        return [line.split("] ", 1)[1].rstrip() for line in log if f"[{pid}] " in line]


def retransmissions(conn: Any) -> int:
    """How many times in a row the kernel has resent data that *conn*'s
    socket sent and the other side did not acknowledge (Linux only)."""
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return info[2]  # struct tcp_info: tcpi_retransmits


def all_sent_acknowledged(conn: Any) -> bool:
    """Whether the other side's kernel acknowledged every byte that *conn*'s
    socket sent (Linux only)."""
    buffer = fcntl.ioctl(conn.fileno(), termios.TIOCOUTQ, b"\0" * 4)
    unacknowledged: int = struct.unpack("i", buffer)[0]
    return unacknowledged == 0


class Call(threading.Thread):
    """Run *call* in a thread of its own, started at once, so that a page
    can watch a call that waits.

    ``waiting()`` tells whether the call is still running; ``result()``
    waits for it and prints its outcome: ``returned: <value>``, or the
    :class:`~reconnecting.Retry` it raised, as :func:`outage` prints it.
    """

    def __init__(self, call: Callable[[], object]) -> None:
        super().__init__(name="pages.Call", daemon=True)
        self._call = call
        self._returned: object = None
        self._retry: Retry | None = None
        self.start()

    def run(self) -> None:
        try:
            self._returned = self._call()
        except Retry as exc:
            self._retry = exc

    def waiting(self) -> bool:
        return self.is_alive()

    def result(self, patience: float = 120) -> None:
        """Wait up to *patience* seconds for the call, then print its outcome."""
        self.join(patience)
        if self.is_alive():
            print(f"still waiting after {patience} s")
        elif self._retry is not None:
            print_error(self._retry)
        else:
            print("returned:", self._returned)


# -- Which errors are outages (errors.rst) --


def _driver_errors() -> tuple[type[Exception], ...]:
    """The base ``Error`` class of each driver that is installed."""
    classes: list[type[Exception]] = []
    for name in ("psycopg2", "psycopg"):
        try:
            classes.append(importlib.import_module(name).Error)
        except ImportError:
            pass
    return tuple(classes)


def attempt(connection: Any, call: Callable[[], object]) -> BaseException | None:
    """Run *call*, which uses *connection*, and show what became of its error.

    Prints the driver's error in full, with its class and SQLSTATE
    (psycopg2's ``pgcode``, psycopg 3's ``sqlstate``), then what the
    :class:`~reconnecting.ReconnectingConnection` did with it: let it
    through, or raise :class:`~reconnecting.Retry` and count disconnections.
    Returns the driver's error, or None (printing ``no error``).
    """
    before = connection.disconnects
    error: BaseException | None
    try:
        call()
    except Retry as exc:
        error, outcome = exc.__cause__, "Retry"
    except _driver_errors() as exc:
        error, outcome = exc, "passed through"
    else:
        print("no error")
        return None
    sqlstate = getattr(error, "sqlstate", getattr(error, "pgcode", None))
    print(f"{type(error).__name__} {sqlstate}: {str(error).strip()}")
    print(f"{outcome}, disconnects +{connection.disconnects - before}")
    return error


# -- adapter.rst: a resource of another kind in the same transaction ----------


def _preparing() -> int:
    """How many sessions of the test server run PREPARE TRANSACTION now."""
    conn = PgTestSetup().connect()
    try:
        cursor = conn.cursor()
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
            " AND query LIKE 'PREPARE TRANSACTION%'"
        )
        return int(cursor.fetchone()[0])
    finally:
        conn.close()


class PreparingWatch(threading.Thread):
    """Calls *action* (an outage) once a session of the test server runs
    ``PREPARE TRANSACTION``; ``over()`` tells when none does any more."""

    def __init__(self, action: Callable[[], object]) -> None:
        super().__init__(name="pages.PreparingWatch", daemon=True)
        self._action = action
        self.start()

    def run(self) -> None:
        wait_until(lambda: _preparing() > 0, 120)
        self._action()

    @staticmethod
    def over() -> bool:
        return _preparing() == 0


def silence_after_commit_cut(proxy: Any) -> threading.Thread:
    """Arm *proxy*'s commit trap, and once it fired, let the proxy listen
    again but pass no byte: a reconnect waits in silence.  Returns the
    thread that does it; ``proxy.restore()`` and ``proxy.drop()`` end it."""
    cuts = proxy.commit_cuts
    proxy.cut_on_commit(deliver=True, go_down=True)

    def silence() -> None:
        wait_until(lambda: proxy.commit_cuts > cuts, 120)
        proxy.tearDown()
        proxy.blackhole()  # before listening: no reconnect slips through
        proxy.setUp()

    thread = threading.Thread(target=silence, name="pages.silence", daemon=True)
    thread.start()
    return thread


class MemoryResource:
    """A resource of a ``transaction`` that keeps its values in memory, as a
    storage of another kind would (ZODB's sorts before the adapter's).

    ``write(value)`` joins the current transaction of ``tm``; the values
    reach ``committed`` in ``tpc_finish``.  ``fail_at`` (``"vote"`` or
    ``"finish"``) makes that phase raise :class:`ResourceError`, once,
    after calling ``before_failing`` (an outage elsewhere, say), if given.
    """

    def __init__(
        self,
        tm: Any,
        key: str = "memory",
        fail_at: str | None = None,
        before_failing: Callable[[], object] | None = None,
    ):
        self.transaction_manager = tm
        self.key, self.fail_at = key, fail_at
        self.before_failing = before_failing
        self.committed: list[Any] = []
        self._pending: list[Any] = []
        self._joined: Any = None

    def write(self, value: Any) -> None:
        txn = self.transaction_manager.get()
        if self._joined is not txn:
            txn.join(self)
            self._joined = txn
            self._pending[:] = []
        self._pending.append(value)

    def sortKey(self) -> str:  # noqa: N802 (transaction API)
        return self.key

    def _fail(self, phase: str) -> None:
        if self.fail_at == phase:
            self.fail_at = None
            if self.before_failing is not None:
                self.before_failing()
            raise ResourceError(f"{self.key} fails at {phase}")

    def tpc_vote(self, txn: Any) -> None:
        self._fail("vote")

    def tpc_finish(self, txn: Any) -> None:
        self._fail("finish")
        self.committed += self._pending
        self.abort(txn)

    def abort(self, txn: Any) -> None:
        self._joined = None
        self._pending[:] = []

    tpc_abort = abort

    def tpc_begin(self, txn: Any) -> None:
        pass

    commit = tpc_begin

    def savepoint(self) -> _MemorySavepoint:
        return _MemorySavepoint(self._pending)


class _MemorySavepoint:
    def __init__(self, pending: list[Any]) -> None:
        self._pending, self._kept = pending, list(pending)

    def rollback(self) -> None:
        self._pending[:] = self._kept


class ResourceError(Exception):
    """What a :class:`MemoryResource` told to fail raises."""
