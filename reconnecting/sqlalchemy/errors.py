"""Outages as SQLAlchemy errors that are also :class:`~reconnecting.Retry`.

SQLAlchemy wraps the driver's exceptions in its own classes
(``sqlalchemy.exc.OperationalError`` and its kin, with the driver's
exception as ``.orig``), and that is what its users catch.  An outage
reported by the package is a :class:`~reconnecting.Retry`, which the
retry loops recognise.  The error raised for an outage is both: an
instance of a subclass of the very SQLAlchemy class the driver's error
maps to, and of :class:`~reconnecting.Retry`.  So ``except
sqlalchemy.exc.DBAPIError`` still catches it, ``.orig`` is still the
driver's exception, and :func:`reconnecting.attempts` retries it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy.exc
from sqlalchemy.engine import ExceptionContext

from reconnecting.connection import CommitOutcomeUnknown, Retry, is_disconnection

__all__ = ["on_error", "retryable_class"]


def _make(base: type[sqlalchemy.exc.DBAPIError]) -> type[sqlalchemy.exc.DBAPIError]:
    name = f"Retryable{base.__name__}"
    doc = (
        f"A ``sqlalchemy.exc.{base.__name__}`` caused by an outage: nothing of"
        " the unit of work was applied; roll back and retry."
    )
    cls = type(name, (base, Retry), {"__doc__": doc, "__module__": __name__})
    globals()[name] = cls  # importable by name, so that it pickles
    return cls


_RETRYABLE = {
    base: _make(base)
    for base in (
        sqlalchemy.exc.DBAPIError,
        sqlalchemy.exc.InterfaceError,
        sqlalchemy.exc.DatabaseError,
        sqlalchemy.exc.DataError,
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.IntegrityError,
        sqlalchemy.exc.InternalError,
        sqlalchemy.exc.ProgrammingError,
        sqlalchemy.exc.NotSupportedError,
    )
}


def retryable_class(base: type[sqlalchemy.exc.DBAPIError]) -> type[Any]:
    """The subclass of SQLAlchemy's ``base`` that is also a ``Retry``."""
    for cls in base.__mro__:
        if cls in _RETRYABLE:
            return _RETRYABLE[cls]
    return _RETRYABLE[sqlalchemy.exc.DBAPIError]


def _retryable(
    context: ExceptionContext, orig: BaseException, orig_exc: Any
) -> sqlalchemy.exc.DBAPIError:
    dialect = context.dialect
    hide = context.engine.hide_parameters if context.engine is not None else False
    execution = context.execution_context
    ismulti = execution.executemany if execution is not None else None
    error_class = dialect.loaded_dbapi.Error
    if isinstance(orig, error_class):
        wrapped = sqlalchemy.exc.DBAPIError.instance(
            context.statement, context.parameters, orig, error_class, dialect=dialect
        )
        base = type(wrapped) if isinstance(wrapped, sqlalchemy.exc.DBAPIError) else None
    else:  # the package's own DisconnectedConnectionError
        base = None
    cls = retryable_class(base or sqlalchemy.exc.OperationalError)
    error = cls(
        context.statement,
        context.parameters,
        orig,
        hide_parameters=hide,
        connection_invalidated=True,
        code=cls.code,
        ismulti=ismulti,
    )
    error.orig_exc = orig_exc
    return error


def on_error(context: ExceptionContext) -> BaseException | None:
    """SQLAlchemy's ``handle_error`` event, as the dialects listen for it.

    A ``Retry`` from the connection becomes the retryable form of the
    error SQLAlchemy would have raised; a connect failure that the
    package's rules call an absence (not a refusal) too.  Both, and a
    ``CommitOutcomeUnknown``, discard the connection: its session is gone.
    """
    original = context.original_exception
    if isinstance(original, CommitOutcomeUnknown):
        context.is_disconnect = True
        return None  # it goes to the caller as it is
    if isinstance(original, Retry):
        context.is_disconnect = True
        orig_exc = original.orig_exc
        orig = orig_exc[1] if orig_exc is not None else original.__cause__
        return _retryable(context, orig or original, orig_exc)
    if (
        context.connection is None
        and not context.is_pre_ping
        and isinstance(original, context.dialect.loaded_dbapi.Error)
        and is_disconnection(original, None)
    ):
        context.is_disconnect = True
        return _retryable(context, original, (type(original), original, None))
    return None
