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
