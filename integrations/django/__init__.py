"""Django: one line manages every database connection and cache the application opens.

In ``settings.py``::

    INSTALLED_APPS = [
        "postfork.integrations.django",   # first, so it is ready before other apps connect
        ...
    ]

At ``django.setup()`` its app config registers ``django.db.connections`` and
``django.core.cache.caches`` with postfork (:func:`install`). Those two handlers hold every
thread's connections and caches, so everything the application opens later in the master is
managed too: in each forked worker the inherited database connections are retired without a
byte sent and Django reconnects on first use, Django's psycopg pool (``OPTIONS={"pool":
True}``) starts afresh, and the redis-py pools of Django's ``RedisCache`` and django-redis are
reset (see ``postfork.adapters.django``). Without ``INSTALLED_APPS`` (a script calling
``django.setup()`` itself, or settings that cannot change), call :func:`install` after
``django.setup()``.

postfork's at-fork hook runs the resets in gunicorn, Celery prefork and ``multiprocessing``
workers; under uWSGI, where that hook does not run, the uWSGI integration is imported here (a
no-op outside uWSGI). The guard is switched on in ``warn`` mode unless ``POSTFORK_GUARD`` says
otherwise. Django is the framework here, not a client: this module imports no client library.
"""

from __future__ import annotations

__all__ = ["install"]


def install() -> None:
    """Register ``django.db.connections`` and ``django.core.cache.caches`` (idempotent),
    switch the guard on (``warn``, unless ``POSTFORK_GUARD`` is set), and hook into uWSGI when
    running inside it."""
    from django.core.cache import caches
    from django.db import connections

    import postfork

    from .._hook import default_guard
    from .. import uwsgi as _uwsgi  # noqa: F401  (resets after uWSGI's forks; no-op elsewhere)

    default_guard()
    postfork.register(connections, name="django.db.connections")
    postfork.register(caches, name="django.core.cache.caches")
