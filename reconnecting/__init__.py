"""reconnecting: a PostgreSQL connection that survives outages.

The core names come from :mod:`reconnecting.connection`, which needs only
the standard library.  ``ReconnectingDatabaseAdapter`` is imported from
:mod:`reconnecting.zope.adapter` on first use, so that ``import reconnecting``
does not import ``zope.interface`` and ``transaction``, which only the
adapter needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

from reconnecting import connection
from reconnecting.connection import *  # noqa: F403 (the core's public names)

if TYPE_CHECKING:
    from reconnecting.aio import (
        AsyncReconnectingConnection as AsyncReconnectingConnection,
    )
    from reconnecting.zope.adapter import (
        ReconnectingDatabaseAdapter as ReconnectingDatabaseAdapter,
    )

__all__ = ["AsyncReconnectingConnection"]
__all__ += connection.__all__

_LAZY = {
    "AsyncReconnectingConnection": "reconnecting.aio",  # imports asyncio
    "ReconnectingDatabaseAdapter": "reconnecting.zope.adapter",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once is enough
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
