"""Moved to :mod:`reconnecting.zope.interfaces`; this name is kept for old imports."""

from reconnecting.zope.interfaces import *  # noqa: F403
