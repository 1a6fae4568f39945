"""reconnecting: a PostgreSQL connection that survives outages."""

__version__ = "0.1.0.dev0"

from reconnecting.connection import (
    CommitOutcomeUnknown,
    DisconnectedConnectionError,
    ReconnectingConnection,
    ReconnectingCursor,
    Retry,
    is_disconnection,
)

__all__ = [
    "CommitOutcomeUnknown",
    "DisconnectedConnectionError",
    "ReconnectingConnection",
    "ReconnectingCursor",
    "Retry",
    "is_disconnection",
]
