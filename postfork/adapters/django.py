"""Django: ``django.db.connections`` and ``django.core.cache.caches``, every thread's connection
and cache included; Django's psycopg pool (``OPTIONS={"pool": True}``); Django's ``RedisCache``
and django-redis.

What a forked child inherits, read from Django 5.2, asgiref 3.13 and django-redis 7.0 (the tests
pass with Django 6.1 on CPython 3.12 as well):

- ``connections`` (a ``ConnectionHandler``) keeps its ``DatabaseWrapper`` objects in an
  ``asgiref.local.Local`` that is a thread-local: every thread builds its own wrapper per alias
  on first use, and the wrapper keeps the DBAPI connection (``wrapper.connection``) open until
  Django closes it. The forking thread's wrappers reach the child connected to the parent's
  backends; the first Django close there (``close_old_connections`` at the end of a request,
  ``connections.close_all()``, Celery's Django fixup) sends the driver's goodbye (psycopg:
  Terminate; mysqlclient: COM_QUIT) on the parent's socket and ends the parent's session.
- The wrappers of the parent's *other* threads are freed in the child before any at-fork hook
  runs (CPython deletes the states of the threads that did not survive, and their thread-local
  dicts with them), and mysqlclient's finalizer sends COM_QUIT: any fork would end the MariaDB
  session of every other thread of the parent. So the wrappers this process connected are
  known (Django's ``connection_created`` signal, in every thread) and the ``ConnectionHandler``
  adapter holds them through each fork (``before_fork``); in the child each is reset below.
- A wrapper's reset retires its DBAPI connection with that driver's own adapter, found in the
  family table by type (psycopg, psycopg2, MySQLdb, ...), never closing it on its socket, and
  sets ``wrapper.connection = None``: Django connects again on first use, as after a close. The
  wrapper's thread-sharing lock is renewed (a parent thread may have held it).
- Django's pool is a ``psycopg_pool.ConnectionPool`` per alias, kept by the PostgreSQL backend
  class (``DatabaseWrapper._connection_pools``) and shared by every thread: it is reset with
  postfork's psycopg pool adapter (fresh locks, the parent's connections retired, workers
  restarted on first use in the child).
- ``caches`` (a ``CacheHandler``) keeps its caches in a context-local ``Local`` whose every
  access takes an RLock: a parent thread inside ``caches[alias]`` at fork would block the
  child's first cache access forever, so that lock is renewed. Django's ``RedisCache`` keeps one
  redis-py ``ConnectionPool`` per server in its client (``cache._cache._pools``);
  django-redis keeps a ``redis.Redis`` per server in its client (``cache.client._clients``) on
  process-global pools (``ConnectionFactory._pools``). Each is reset with postfork's redis-py
  adapter (new locks, the parent's sockets closed here only; a ``single_connection_client``
  given through ``REDIS_CLIENT_KWARGS`` drops its connection). Caches of the parent's other
  threads die in the child harmlessly: redis-py closes a socket of another process's
  connection without a word.

Nothing here sends a byte: no close, no goodbye, no ``shutdown()`` on an inherited socket.
"""

from __future__ import annotations

import os
import sys
import weakref
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List

from .._contract import Adapter
from .._locks import fresh, renew
from .._lookup import find_adapter
from ._retire import retire_fd

if TYPE_CHECKING:
    from django.core.cache import CacheHandler
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.utils import ConnectionHandler
    from django.utils.connection import ConnectionProxy

__all__ = ["reset_database", "reset_connections", "reset_caches", "reset_redis_cache",
           "reset_django_redis_cache", "reset_proxy"]

# Every wrapper that connected in this process (or its parent, before a fork), from any thread:
# Django's connection_created signal adds it. Weak: a thread's wrappers go when the thread does.
_connected: "weakref.WeakSet[Any]" = weakref.WeakSet()
# The pid whose own connection an object now holds: set when a wrapper connects, when a pool is
# first seen, and by a reset. A reset skips an object that already belongs to this process (a
# second reset_all(force=True) must not retire the child's own new connection).
_owner: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()
# Wrappers held from just before a fork until the fork is over: in the child, the other
# threads' wrappers must outlive the deletion of those threads' states, so that the resets
# retire their sockets before anything can finalize them.
_held: List[Any] = []
# DBAPI connections no adapter knows and that expose no descriptor to retire: never finalized
# here (their finalizer could say goodbye on the parent's socket).
_kept: List[Any] = []
_looked_up: "weakref.WeakSet[type]" = weakref.WeakSet()


# -- what Django holds -----------------------------------------------------------------------

def _this_thread(handler: Any) -> List[Any]:
    """The connections (or caches) ``handler`` built for the current thread, without building
    any: only aliases already initialized here."""
    settings = handler.__dict__.get("settings")  # cached on first use: nothing built before
    if not settings:
        return []
    local = handler._connections
    found = []
    for alias in list(settings):
        obj = getattr(local, alias, None)
        if obj is not None:
            found.append(obj)
    return found


def _wrappers(handler: Any) -> List[Any]:
    """Every DatabaseWrapper to reset: this thread's, and every thread's that connected."""
    seen: Dict[int, Any] = {}
    for wrapper in _this_thread(handler) + list(_connected) + list(_held):
        seen[id(wrapper)] = wrapper
    return list(seen.values())


def _pools_of(classes: Iterable[type]) -> List[Any]:
    """Django's connection pools (PostgreSQL: one ``psycopg_pool.ConnectionPool`` per alias,
    in the backend class's ``_connection_pools``)."""
    seen: Dict[int, Any] = {}
    for cls in classes:
        for pool in list((getattr(cls, "_connection_pools", None) or {}).values()):
            seen[id(pool)] = pool
    return list(seen.values())


def _backend_classes(handler: Any, wrappers: Iterable[Any]) -> List[type]:
    """The wrapper classes of ``wrappers`` and of every configured backend already imported
    (a pool outlives the wrapper that built it)."""
    classes: Dict[int, type] = {id(type(w)): type(w) for w in wrappers}
    settings = handler.__dict__.get("settings") or {}
    for conf in list(settings.values()):
        module = sys.modules.get(f"{conf.get('ENGINE', '')}.base")
        cls = getattr(module, "DatabaseWrapper", None)
        if isinstance(cls, type):
            classes[id(cls)] = cls
    return list(classes.values())


def _reset_with_adapter(obj: Any) -> None:
    found = find_adapter(type(obj))
    if found is not None:
        found.reset(obj)


def _mine(obj: Any) -> bool:
    """True when ``obj`` already holds this process's own connection (see ``_owner``)."""
    try:
        return _owner.get(obj) == os.getpid()
    except TypeError:  # not weakly referenceable
        return False


def _make_mine(obj: Any) -> None:
    try:
        _owner[obj] = os.getpid()
    except TypeError:
        pass


# -- databases --------------------------------------------------------------------------------

def _retire_dbapi(conn: Any) -> None:
    """Retire an inherited DBAPI connection without a byte on its socket: with its driver's
    adapter (the family table's: psycopg, psycopg2, MySQLdb, ...), else by its descriptor; then
    close it, which the driver does into the dead socket, freeing the descriptor number."""
    found = find_adapter(type(conn))
    if found is not None:
        found.reset(conn)
        retired = found.retires
    else:
        retired = _retire_by_fileno(conn)
    if not retired:
        _kept.append(conn)  # nothing known to retire it: never let its finalizer run here
        return
    if getattr(conn, "_pool", None) is not None:  # psycopg: a connection of Django's pool
        conn._pool = None  # closed here, never handed back to the (reset) pool
    try:
        conn.close()
    except Exception:  # a retired connection may refuse; the retirement is what matters
        pass


def _retire_by_fileno(conn: Any) -> bool:
    """A DBAPI connection of a driver the family table does not know (psycopg, psycopg2 and
    mysqlclient have adapters): retired by the descriptor its ``fileno()`` names, so that the
    goodbye of its ``close()`` or finalizer goes into a dead socket. False: no descriptor
    known, nothing retired."""
    fileno = getattr(conn, "fileno", None)
    if not callable(fileno):
        return False
    try:
        fd = fileno()
    except Exception:  # closed already: the driver holds no socket
        return True
    if isinstance(fd, int) and fd >= 0:
        retire_fd(fd)
        return True
    return False


def reset_database(wrapper: "BaseDatabaseWrapper") -> None:
    """Reset one ``DatabaseWrapper``: its inherited DBAPI connection is retired and dropped
    (Django connects again on first use), its lock renewed, its backend's pool reset."""
    if not _mine(wrapper):
        renew(wrapper, "_thread_sharing_lock")  # allow_thread_sharing takes it
        conn = wrapper.connection
        if conn is not None:
            _retire_dbapi(conn)
            wrapper.connection = None
            if wrapper.in_atomic_block:
                # The transaction is the parent's: as Django's own close() inside an atomic
                # block does, the block must end (rolled back) before a new connection opens.
                wrapper.closed_in_transaction = True
                wrapper.needs_rollback = True
        wrapper.run_on_commit = []  # callbacks of the parent's transaction
        _make_mine(wrapper)
    _reset_pools(_pools_of([type(wrapper)]))


def _reset_pools(pools: Iterable[Any]) -> None:
    for pool in pools:
        if not _mine(pool):
            _reset_with_adapter(pool)  # psycopg_pool.ConnectionPool: postfork's psycopg adapter
            _make_mine(pool)


def reset_connections(handler: "ConnectionHandler") -> None:
    """Reset every wrapper of ``django.db.connections``: this thread's and those every other
    thread of the parent connected (held through the fork), and Django's pools."""
    _renew_local_lock(handler._connections)  # asgiref < 3.8 locks a thread-critical Local too
    try:
        wrappers = _wrappers(handler)
        for wrapper in wrappers:
            reset_database(wrapper)
        _reset_pools(_pools_of(_backend_classes(handler, wrappers)))
    finally:
        del _held[:]  # retired now: their finalizers may run


def _hold(handler: Any) -> None:
    """Before fork, in the parent: keep every connected wrapper alive through the fork (the
    forking thread's own survive it anyway). Takes no lock: a parent thread may hold any."""
    _held[:] = list(_connected)


def _release() -> None:
    del _held[:]


def _close_connections(handler: "ConnectionHandler") -> None:
    """A worker that exits: Django closes its connections; its own pools close."""
    handler.close_all()
    for pool in _pools_of(_backend_classes(handler, _this_thread(handler))):
        if _mine(pool) and not getattr(pool, "closed", True):
            pool.close()


def _manages_connections(handler: Any) -> Iterator[Any]:
    wrappers = _wrappers(handler)
    for wrapper in wrappers:
        yield wrapper
        if wrapper.connection is not None:
            yield wrapper.connection
    yield from _pools_of(_backend_classes(handler, wrappers))


def _on_connection_created(sender: Any, connection: Any, **_: Any) -> None:
    _connected.add(connection)
    _make_mine(connection)
    pool = (getattr(type(connection), "_connection_pools", None) or {}).get(connection.alias)
    if pool is not None and pool not in _owner:
        _make_mine(pool)  # first seen here: built by this process
    for obj in (connection.connection, pool):
        if obj is not None:
            _look_up(obj)


def _look_up(obj: Any) -> None:
    """Find (and import) the adapter for ``obj``'s type here, in the parent, once, rather than
    in every worker's reset."""
    cls = type(obj)
    if cls not in _looked_up:
        _looked_up.add(cls)
        find_adapter(cls)


def _watch() -> None:
    """Know every wrapper that connects, in any thread, from now on."""
    try:
        from django.db.backends.signals import connection_created
    except ImportError:  # no Django: nothing of it can be registered either
        return
    connection_created.connect(_on_connection_created, weak=False,
                               dispatch_uid="postfork.adapters.django")


# -- caches -----------------------------------------------------------------------------------

def _redis_objects(cache: Any) -> List[Any]:
    """The redis-py objects a Django ``RedisCache`` or a django-redis cache holds."""
    found: List[Any] = []
    client = cache.__dict__.get("_cache")  # Django's RedisCache: its client, once built
    if client is not None:
        found += list((getattr(client, "_pools", None) or {}).values())
    client = cache.__dict__.get("_client")  # django-redis: its client, once built
    if client is not None:
        found += [r for r in list(getattr(client, "_clients", None) or ()) if r is not None]
        found += list((getattr(client, "_serverdict", None) or {}).values())  # ShardClient
        factory = getattr(client, "connection_factory", None)
        found += list((getattr(factory, "_pools", None) or {}).values())
    return found


def _django_redis_pools() -> List[Any]:
    """django-redis's process-global pools, shared by every thread's cache client."""
    module = sys.modules.get("django_redis.pool")
    factory = getattr(module, "ConnectionFactory", None)
    return list((getattr(factory, "_pools", None) or {}).values())


def reset_redis_cache(cache: Any) -> None:
    """Django's ``RedisCache``: each of its redis-py pools is reset (no I/O)."""
    for obj in _redis_objects(cache):
        _reset_with_adapter(obj)


def reset_django_redis_cache(cache: Any) -> None:
    """django-redis's ``RedisCache``: its ``redis.Redis`` clients and their pools are reset."""
    for obj in _redis_objects(cache):
        _reset_with_adapter(obj)


def reset_caches(handler: "CacheHandler") -> None:
    """Reset ``django.core.cache.caches``: the RLock of its context-local storage, this
    thread's caches (those of a known family), and django-redis's shared pools."""
    _renew_local_lock(handler._connections)
    for cache in _this_thread(handler):
        _reset_with_adapter(cache)
    for pool in _django_redis_pools():
        _reset_with_adapter(pool)


_LOCAL_LOCKS = ("_lock", "_thread_lock")  # asgiref 3.8+, before


def _local_lock(local: Any) -> Any:
    for name in _LOCAL_LOCKS:
        try:
            return object.__getattribute__(local, name)
        except AttributeError:
            pass
    return None


def _renew_local_lock(local: Any) -> None:
    """Renew the lock an ``asgiref.local.Local`` takes on every access (``_lock`` in asgiref
    3.8+, ``_thread_lock`` before), set as Local itself does: its own ``__setattr__`` would
    store a value in the storage instead."""
    for name in _LOCAL_LOCKS:
        try:
            old = object.__getattribute__(local, name)
        except AttributeError:
            continue
        new = fresh(old)
        if new is not None:
            object.__setattr__(local, name, new)


def _manages_caches(handler: Any) -> Iterator[Any]:
    for cache in _this_thread(handler):
        yield cache
        yield from _redis_objects(cache)
    yield from _django_redis_pools()


def _before_fork_caches(handler: Any) -> None:
    """Before fork, in the parent: look the caches' adapters up here. Reading the caches takes
    the storage's lock; if another thread holds it, skip rather than wait (the fork must go on)."""
    lock = _local_lock(handler._connections)
    if lock is not None and not lock.acquire(blocking=False):
        return
    try:
        for obj in _manages_caches(handler):
            _look_up(obj)
    finally:
        if lock is not None:
            lock.release()


def _close_caches(handler: "CacheHandler") -> None:
    handler.close_all()


# -- django.db.connection, django.core.cache.cache ---------------------------------------------

def _handler_of(proxy: Any) -> Any:
    return proxy.__dict__["_connections"]


def _delegate(what: str) -> Any:
    def call(proxy: "ConnectionProxy") -> Any:
        handler = _handler_of(proxy)
        found = find_adapter(type(handler))
        func = getattr(found, what, None) if found is not None else None
        return func(handler) if func is not None else ()
    call.__name__ = call.__qualname__ = f"{what}_proxy"
    return call


reset_proxy = _delegate("reset")
reset_proxy.__doc__ = """``django.db.connection`` / ``django.core.cache.cache``: the proxy's
handler is reset as a whole (every alias, every thread's connections)."""


def _release_at_fork() -> None:
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_parent=_release)


_watch()
_release_at_fork()

connections = Adapter(reset_connections, close=_close_connections, before_fork=_hold,
                      manages=_manages_connections)
caches = Adapter(reset_caches, close=_close_caches, before_fork=_before_fork_caches,
                manages=_manages_caches)
proxy = Adapter(reset_proxy, close=_delegate("close"), before_fork=_delegate("before_fork"),
                manages=_delegate("manages"))
database = Adapter(reset_database)  # close(): Django's wrapper.close(), in the worker that exits
redis_cache = Adapter(reset_redis_cache)
django_redis_cache = Adapter(reset_django_redis_cache)
