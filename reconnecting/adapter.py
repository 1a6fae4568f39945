"""Moved to :mod:`reconnecting.zope.adapter`; this name is kept for old imports."""

from reconnecting.zope.adapter import *  # noqa: F403
