"""The Zope integration: a database adapter whose connections survive outages.

:class:`~reconnecting.zope.adapter.ReconnectingDatabaseAdapter` (also
``reconnecting.ReconnectingDatabaseAdapter``) is built on the core's public
API only.  Its modules:

- :mod:`~reconnecting.zope.adapter`: the adapter, its connections and cursors;
- :mod:`~reconnecting.zope.interfaces`: the ``zope.rdb`` interfaces it provides;
- :mod:`~reconnecting.zope.datamanager`: the part a connection plays in a
  ``transaction``, committing in the vote;
- :mod:`~reconnecting.zope.twophase`: the data manager of ``two_phase=True``;
- :mod:`~reconnecting.zope.prepared`: the prepared transactions not known
  to be finished;
- :mod:`~reconnecting.zope.dsn`: Zope's ``dbi://`` DSNs.

This package needs ``zope.interface`` and ``transaction`` (the ``zope``
extra); ``import reconnecting`` alone never imports them.
"""

try:
    import transaction  # noqa: F401
    import zope.interface  # noqa: F401
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError(
        f"reconnecting.zope needs the zope extra ({exc.name} is missing): "
        "pip install 'reconnecting[zope]'",
        name=exc.name,
    ) from exc
