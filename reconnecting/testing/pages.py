"""Helpers that the documentation's pages use to tell their stories.

A page imports what it needs from here in one line, so that the reader
sees the connection at work rather than the scaffolding around it: how an
error is printed, how log messages are kept, a thread that commits while
the page restarts the server, a listener for notifications.  None of this
is needed to use the package; the page teardown of the root
``conftest.py`` closes whatever a page leaves open.
"""

from __future__ import annotations

import logging
import threading
from types import ModuleType
from typing import Any

from reconnecting.testing.pgsql import PgTestSetup

__all__ = ["LogMessages", "Listener", "commit_in_thread", "dict_rows", "print_error"]

# -- failover.rst and pgbouncer.rst: a ledger of transfers through outages ----

import time  # noqa: E402 (this section's own imports, kept with it)
from collections.abc import Callable  # noqa: E402

from reconnecting.connection import CommitOutcomeUnknown, Retry  # noqa: E402

__all__ += [
    "Transfers",
    "Writer",
    "count_on",
    "lose_a_prepared_statement",
    "multi_host_dsn",
    "outage",
    "run",
    "server_port",
    "waiting_clients",
]


def run(cursor: Any, statement: str, *args: Any) -> list[tuple] | None:
    """Execute *statement* with *args*; return the rows, if it has any."""
    cursor.execute(statement, args or None)
    return cursor.fetchall() if cursor.description else None


def outage(call: Callable[[], object], whole: bool = False) -> None:
    """Call *call* and show the :class:`~reconnecting.Retry` it raises.

    Prints ``Retry:`` and the first line of the cause (as
    :func:`print_error` does), all of it if *whole*, or ``no outage``; any
    other error goes through.
    """
    try:
        call()
    except Retry as exc:
        message = str(exc).strip()
        print(f"Retry: {message if whole else message.splitlines()[0]}")
    else:
        print("no outage")


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
