"""Resetting the urllib3 pools and requests sessions that other clients keep inside them.

botocore (``URLLib3Session``), elastic-transport (``Urllib3HttpNode``), sentry-sdk
(``HttpTransport``) and the OTLP/HTTP exporter (a ``requests.Session``) all talk through a urllib3
pool. Their adapters walk to that object and hand it to :func:`reset_http`, which asks the family
table for the adapter of its type (``postfork._lookup.find_adapter``): the urllib3 / requests
family adapters are the ones that know these objects.

TEMPORARY, to be replaced at merge: those family adapters are being written on another branch.
Until they exist, :func:`_fallback` below is the minimal reset these clients need, and nothing
else uses it. Once the table knows ``urllib3.PoolManager``, ``urllib3.HTTPConnectionPool`` and
``requests.Session``, :func:`reset_http` stops reaching the fallback, and the fallback (with
``_reset_pool_manager``, ``_reset_pool`` and ``_reset_session``) can be deleted.

What the fallback does, and why it sends nothing: a urllib3 pool's idle connections are
``http.client.HTTPConnection`` subclasses; each is handed to the table too (the ``http.client``
adapter: the socket is detached and its descriptor closed in this process only, no
``shutdown()``, no TLS ``close_notify``). The pool gets a new queue (its lock and conditions may
be held by a parent thread at fork) filled as a new pool's is, and ``num_connections`` starts
again; a ``PoolManager`` keeps its pools (each reset in place) under a new lock. Connections a
parent thread had checked out at fork are not in the pool: they died with that thread.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

from .._locks import renew
from .._lookup import find_adapter, qualname

__all__ = ["reset_http"]


def reset_http(obj: Any) -> None:
    """Reset ``obj`` (a urllib3 pool or pool manager, a requests session or adapter, an
    ``http.client`` connection) with the adapter the family table has for its type; without
    one, with the minimal fallback below (to be replaced by the urllib3 family adapter)."""
    if obj is None:
        return
    found = find_adapter(type(obj))
    if found is not None:
        found.reset(obj)
        return
    _fallback(obj)


# -- the fallback: TEMPORARY, replaced by the urllib3 / requests family adapters at merge -----

def _fallback(obj: Any) -> None:
    for klass in type(obj).__mro__:
        reset = _FALLBACKS.get(qualname(klass))
        if reset is not None:
            reset(obj)
            return
    raise TypeError(f"postfork: no adapter resets a {qualname(type(obj))} (an HTTP connection "
                    f"pool this client holds); register the client with reset=")


def _reset_pool(pool: Any) -> None:
    """A urllib3 ``HTTPConnectionPool`` / ``HTTPSConnectionPool`` (urllib3 1.26 and 2.x)."""
    old = pool.pool
    if old is None:  # closed: urllib3 opens nothing on a closed pool
        return
    # Read without the queue's lock: a parent thread may hold it, forever here.
    inherited = [conn for conn in list(old.queue) if conn is not None]
    new_queue = getattr(pool, "_new_pool_queue", None)
    fresh = new_queue(old.maxsize) if new_queue is not None else type(old)(old.maxsize)
    for _ in range(old.maxsize):
        fresh.put(None)  # as urllib3 fills a new pool: a slot per connection it may open
    pool.pool = fresh
    pool.num_connections = 0
    pool.num_requests = 0
    for conn in inherited:
        reset_http(conn)  # the http.client adapter: detach + close, nothing sent


def _reset_pool_manager(manager: Any) -> None:
    """A urllib3 ``PoolManager`` or ``ProxyManager``: its pools, each reset in place."""
    pools = manager.pools
    renew(pools, "lock")  # a parent thread inside connection_from_url() holds it at fork
    for pool in list(pools._container.values()):
        reset_http(pool)


def _reset_adapter(adapter: Any) -> None:
    """A requests ``HTTPAdapter``: its pool manager and its proxy managers."""
    reset_http(getattr(adapter, "poolmanager", None))
    for manager in list(getattr(adapter, "proxy_manager", {}).values()):
        reset_http(manager)


def _reset_session(session: Any) -> None:
    """A ``requests.Session``: each mounted adapter."""
    for adapter in list(session.adapters.values()):
        reset_http(adapter)


_FALLBACKS: Dict[str, Callable[[Any], None]] = {
    "urllib3.connectionpool.HTTPConnectionPool": _reset_pool,
    "urllib3.poolmanager.PoolManager": _reset_pool_manager,
    "requests.adapters.HTTPAdapter": _reset_adapter,
    "requests.sessions.Session": _reset_session,
}
