"""Moved to :mod:`reconnecting.zope.dsn`; this name is kept for old imports."""

from reconnecting.zope.dsn import *  # noqa: F403
