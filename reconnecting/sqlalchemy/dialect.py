"""What the dialects add to SQLAlchemy's own: each pooled connection wrapped.

SQLAlchemy's psycopg dialects stay in charge of everything else: the URL
(several ``host=`` for failover included), types, isolation levels, the
pool.  The pool holds :class:`~reconnecting.ReconnectingConnection`
objects instead of driver connections, so every call SQLAlchemy makes
passes the package's rules; :func:`~reconnecting.sqlalchemy.errors.on_error`
turns the :class:`~reconnecting.Retry` those raise into SQLAlchemy's own
error, retryable, and has the connection discarded.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import event

from reconnecting.aio import AsyncReconnectingConnection
from reconnecting.connection import (
    CommitOutcomeUnknown,
    ReconnectingConnection,
    Retry,
    is_disconnection,
)
from reconnecting.sqlalchemy.errors import on_error

__all__ = ["ReconnectingDialect", "standby_wanted"]

# target_session_attrs that ask for a standby: a pool made for one must not
# throw its connections away for being on one.
_STANDBY_WANTED = frozenset({"read-only", "standby", "prefer-standby", "any"})


def standby_wanted(cparams: dict[str, Any]) -> bool:
    """True if the connect arguments ask for a standby (or allow one)."""
    attrs = str(cparams.get("target_session_attrs", "")).lower()
    return attrs in _STANDBY_WANTED


class Connector:
    """The connection factory of one pooled connection.

    Its first call returns the driver connection that ``connect()`` made
    (so that a server refusing or missing at checkout is SQLAlchemy's
    connect error, as ever); later calls make new ones with the same
    arguments.  SQLAlchemy's per-connection set-up (type adapters,
    notices, client encoding) runs on each.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        setup: Callable[[Any], None] | None,
        standby_wanted: bool,
    ) -> None:
        self._connect = connect
        self._setup = setup
        self.standby_wanted = standby_wanted
        self.latest = self.make()
        self._first: Any | None = self.latest

    def make(self) -> Any:
        raw = self._connect()
        if self._setup is not None:
            try:
                self._setup(raw)
            except BaseException:
                raw.close()
                raise
        return raw

    def __call__(self) -> Any:
        raw, self._first = self._first, None
        if raw is None:
            raw = self.latest = self.make()
        return raw

    def close_unused(self) -> None:
        """Close the connection made at checkout if it was never asked for."""
        raw, self._first = self._first, None
        if raw is not None:
            raw.close()


def in_hot_standby(connection: Any) -> bool:
    """What the server told the driver at connect time (no round trip)."""
    try:
        return connection.info.parameter_status("in_hot_standby") == "on"
    except Exception:
        return False  # lost, or not connected: the ping that follows tells


class ReconnectingDialect:
    """The part the three dialects share; mixed in before SQLAlchemy's.

    ``create_engine(url, resolve_commit=False)`` turns commit resolution
    off; ``resolve_timeout`` bounds it (seconds).
    """

    supports_statement_cache = True

    def __init__(
        self, resolve_commit: bool = True, resolve_timeout: float = 10.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[call-arg]
        self.resolve_commit = resolve_commit
        self.resolve_timeout = resolve_timeout
        self._connectors: weakref.WeakKeyDictionary[Any, Connector] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def engine_created(cls, engine: Any) -> None:
        event.listen(engine, "handle_error", on_error)

    def on_connect(self) -> Any:
        # SQLAlchemy's set-up runs on each driver connection (connect()),
        # and here only on those of a creator= that bypasses the wrapper.
        setup = super().on_connect()  # type: ignore[misc]
        if setup is None:
            return None

        def on_connect(connection: Any) -> None:
            if not isinstance(connection, ReconnectingConnection):
                setup(connection)

        return on_connect

    def connector(self, cargs: Any, cparams: dict[str, Any]) -> Connector:
        """A factory of driver connections with SQLAlchemy's set-up."""
        base = super()
        return Connector(
            lambda: base.connect(*cargs, **cparams),  # type: ignore[attr-defined]
            base.on_connect(),  # type: ignore[attr-defined]
            standby_wanted(cparams),
        )

    def connect(self, *cargs: Any, **cparams: Any) -> Any:
        connector = self.connector(cargs, cparams)
        connection = ReconnectingConnection(
            connector,
            resolve_commit=self.resolve_commit,
            resolve_timeout=self.resolve_timeout,
        )
        self._connectors[connection] = connector
        return connection

    def is_disconnect(self, e: Any, connection: Any, cursor: Any) -> bool:
        # A driver error from a wrapped connection has passed the package's
        # rules already (an outage would be a Retry).  Left to judge: connect
        # errors, and errors of the driver connections of a creator=.
        if connection is None:
            return is_disconnection(e, None)
        driver = self.get_driver_connection(connection)  # type: ignore[attr-defined]
        if isinstance(driver, (ReconnectingConnection, AsyncReconnectingConnection)):
            return False
        return is_disconnection(e, driver)

    def do_close(self, dbapi_connection: Any) -> None:
        # The wrapper knows only the driver connections it asked for: the
        # one made at checkout is still the connector's until first used.
        try:
            super().do_close(dbapi_connection)  # type: ignore[misc]
        finally:
            wrapper = self.get_driver_connection(dbapi_connection)  # type: ignore[attr-defined]
            connector = self._connectors.get(wrapper)
            if connector is not None:
                connector.close_unused()

    def do_ping(self, dbapi_connection: Any) -> bool:
        wrapper = self.get_driver_connection(dbapi_connection)  # type: ignore[attr-defined]
        connector = self._connectors.get(wrapper)
        if connector is not None and not connector.standby_wanted:
            if in_hot_standby(dbapi_connection):
                return False  # a standby now: never handed out again
        try:
            return bool(super().do_ping(dbapi_connection))  # type: ignore[misc]
        except (Retry, CommitOutcomeUnknown):
            # Lost (a ping in autocommit mode may call it an unknown outcome:
            # it wrote nothing either way): the pool makes a new connection.
            return False
