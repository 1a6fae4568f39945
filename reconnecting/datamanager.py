"""Moved to :mod:`reconnecting.zope.datamanager`; this name is kept for old imports."""

from reconnecting.zope.datamanager import *  # noqa: F403
from reconnecting.zope.twophase import *  # noqa: F403
