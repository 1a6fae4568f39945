"""reconnecting: a PostgreSQL connection that survives outages."""

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
