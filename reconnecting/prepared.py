"""Moved to :mod:`reconnecting.zope.prepared`; this name is kept for old imports."""

from reconnecting.zope.prepared import *  # noqa: F403
