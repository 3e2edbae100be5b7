"""redis-py: resets for ``Redis``, ``PubSub``, connection pools, ``RedisCluster`` and asyncio.

What the child inherits and what each reset does about it (redis-py 8.1, read from its source):

- A pool (``ConnectionPool``, ``BlockingConnectionPool``) checks ``os.getpid()`` on every call
  and resets itself, but a lock that a parent thread held at fork is held forever here:
  ``reset()`` (since 6.0) takes ``_lock`` and then hangs, and ``_checkpid`` gives up on
  ``_fork_lock`` after 5 s with ``ChildDeadlockedError``. The same goes for the client's
  ``single_connection_lock``, a PubSub's ``_lock`` and the locks of the helpers they share
  (event dispatcher, HIMPORT registry, maintenance handler). We re-create every lock first,
  then drop the inherited connections and call the pool's own ``reset()``.
- Dropping a sync connection is ``Connection.disconnect()`` while ``conn.pid`` is still the
  parent's: redis-py then only ``close()``s its copy of the socket, never ``shutdown()`` (which
  would end the parent's connection too), sends nothing, and forgets the socket (``_sock`` and
  the parser's reference become ``None``), so the freed descriptor number is referenced by
  nobody. The connection object then belongs to this process and reconnects on first use.
- ``single_connection_client=True`` and ``PubSub`` hold a connection outside the pool and do
  no pid check at all: the child would read the parent's replies and messages. Their
  connection is dropped as above and handed back to the child's pool as in use.
- ``PubSub`` keeps its subscriptions: the child's copy reconnects on first use on a connection
  of its own and redis-py's connect callback re-subscribes, exactly as after a dropped
  connection. It never reads the parent's socket; messages published between the fork and
  that first use reach the parent only.
- asyncio has no pid check anywhere. Its connections hold a transport of the parent's event
  loop: closing it would touch that loop (epoll, ``call_soon``), so we leave the transport
  alone and retire the descriptor under it (:func:`retire_fd`): the number stays taken while
  the transport lives, and the parent's socket is no longer open here. Its asyncio locks
  belong to the parent's loop and are replaced. A ``single_connection_client`` lets go of its
  connection and takes a new one from the pool on first use, in the child's own loop.
"""

from __future__ import annotations

import os
import queue
import weakref
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Tuple

from .._contract import Adapter
from .._locks import renew
from ._retire import retire_fd

if TYPE_CHECKING:
    import redis
    import redis.asyncio
    import redis.cluster
    import redis.connection

__all__ = [
    "reset_redis",
    "reset_pubsub",
    "reset_pool",
    "reset_cluster",
    "reset_async_redis",
    "reset_async_pubsub",
    "reset_async_pool",
]

# Where each lock lives. A lock held by a parent thread at fork is never released in the
# child; a new one is the only way out (acquiring it would block, or time out in redis-py).
_POOL_LOCKS = ("_lock", "_fork_lock")
# Helper objects with a lock of their own ("_lock"), by the attribute that holds them.
_POOL_SIDES = ("_event_dispatcher", "himport_registry", "_maint_notifications_pool_handler")
_CLUSTER_SIDES = (
    "_event_dispatcher", "_himport_registry", "_oss_cluster_maint_notifications_handler",
)
_CLIENT_SIDES = ("_event_dispatcher",)

# asyncio pools have no pid: the pid each was last reset in, so a second reset in the same
# process (reset_all(force=True)) does not drop the child's own new connections.
_async_reset_pid: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()


class _Renewer:
    """Renews the locks of the helper objects a client shares with others, each once per
    reset (a client and its pool share one event dispatcher; so do all node pools of a
    cluster)."""

    __slots__ = ("_sides",)

    def __init__(self) -> None:
        self._sides: Dict[int, Any] = {}  # id -> helper object (held, so its id stays unique)

    renew = staticmethod(renew)

    def renew_sides(self, obj: Any, attrs: Tuple[str, ...]) -> None:
        """Renew the ``_lock`` of each helper object ``obj`` holds under ``attrs``."""
        for attr in attrs:
            side = getattr(obj, attr, None)
            if side is None or id(side) in self._sides:
                continue
            self._sides[id(side)] = side
            renew(side, "_lock")
            if getattr(side, "_async_lock", None) is not None:  # the event dispatcher's
                side._async_lock = None  # an asyncio.Lock of the parent's loop; rebuilt lazily


# -- sync -------------------------------------------------------------------------------------


def _drop(conn: Any) -> None:
    """Forget the parent's socket under ``conn``: close our copy, send nothing, no shutdown.

    ``conn.pid`` stays the parent's: redis-py's own rule is that a pool ignores the release of
    a connection another process made (``owns_connection``), and a connection the parent had
    checked out may be released by code the child inherited. Only a connection the child
    keeps using is adopted (:func:`_adopt`)."""
    inner = getattr(conn, "_conn", None)  # CacheProxyConnection wraps the real connection
    real = inner if inner is not None else conn
    if getattr(real, "pid", None) == os.getpid():
        return  # made in this process: ours, nothing inherited
    renew(conn, "_cache_lock")  # CacheProxyConnection.disconnect() takes it
    # Connection.disconnect() calls socket.shutdown() only when os.getpid() == conn.pid; here
    # the pids differ, so it close()s our descriptor and leaves the parent's connection alone.
    conn.disconnect()


def _pool_connections(pool: Any) -> List[Any]:
    """Every connection a sync or asyncio pool knows (idle, in use, and the blocking pool's
    list of all it created), each once."""
    seen: Dict[int, Any] = {}
    for attr in ("_available_connections", "_in_use_connections", "_connections"):
        for conn in list(getattr(pool, attr, None) or ()):
            seen[id(conn)] = conn
    return list(seen.values())


def reset_pool(pool: "redis.connection.ConnectionPool",
               _renewer: "_Renewer | None" = None) -> None:
    """Reset a sync ``ConnectionPool`` or ``BlockingConnectionPool`` inherited from another
    process: new locks, inherited sockets closed here (no shutdown, no I/O), empty pool. The
    child's first command opens its own connection. A pool already reset in this process (by
    another registered client sharing it, or by redis-py itself) is left alone."""
    if getattr(pool, "pid", None) == os.getpid():
        return
    renewer = _renewer or _Renewer()
    renewer.renew(pool, *_POOL_LOCKS)
    renewer.renew_sides(pool, _POOL_SIDES)
    if hasattr(pool, "_locked"):
        pool._locked = False  # BlockingConnectionPool: a parent thread's "I hold _lock" flag
    for conn in _pool_connections(pool):
        _drop(conn)
        if hasattr(conn, "_pool_lock"):
            conn._pool_lock = pool._lock  # CacheProxyConnection shares the pool's lock
    # The library's own reset: new empty lists (a new queue of placeholders for the blocking
    # pool) and, last, pool.pid = os.getpid(). It takes pool._lock, which is new now.
    pool.reset()


def _adopt(pool: Any, conn: Any) -> None:
    """Make the dropped ``conn`` this process's own and count it as in use by the (reset)
    pool, as it was in the parent, so that the client's ``close()`` returns it to the pool
    and ``max_connections`` still holds."""
    pid = os.getpid()
    inner = getattr(conn, "_conn", None)
    if inner is not None:
        inner.pid = pid
    conn.pid = pid
    if hasattr(pool, "_in_use_connections") and not hasattr(pool, "_connections"):
        if conn not in pool._in_use_connections:
            pool._in_use_connections.add(conn)
            pool._created_connections = getattr(pool, "_created_connections", 0) + 1
    elif hasattr(pool, "_connections") and hasattr(pool, "pool"):  # BlockingConnectionPool
        if conn not in pool._connections:
            pool._connections.append(conn)
            try:
                pool.pool.get_nowait()  # take one of the None placeholders: the slot is used
            except queue.Empty:
                pass


def _reset_held(owner: Any, pool: Any, renewer: "_Renewer") -> None:
    """A connection held outside the pool (single-connection client, PubSub)."""
    reset_pool(pool, renewer)
    conn = getattr(owner, "connection", None)
    if conn is not None:
        _drop(conn)
        _adopt(pool, conn)


def reset_redis(client: "redis.Redis", _renewer: "_Renewer | None" = None) -> None:
    """Reset a sync ``redis.Redis``: its pool, and the dedicated connection of a
    ``single_connection_client`` (dropped here, reconnected on first use)."""
    renewer = _renewer or _Renewer()
    renewer.renew(client, "single_connection_lock")
    renewer.renew_sides(client, _CLIENT_SIDES)
    _reset_held(client, client.connection_pool, renewer)


def reset_pubsub(pubsub: "redis.client.PubSub") -> None:
    """Reset a sync ``PubSub``: the child's copy never reads the parent's subscription socket.

    Its connection is dropped; the subscriptions are kept, and on first use the child connects
    on its own connection, where redis-py's connect callback subscribes again."""
    renewer = _Renewer()
    renewer.renew(pubsub, "_lock", "subscribed_event")
    renewer.renew_sides(pubsub, _CLIENT_SIDES)
    _reset_held(pubsub, pubsub.connection_pool, renewer)
    # PINGs the parent sent whose replies would come on the parent's socket, not ours.
    pubsub.health_check_response_counter = 0


def _cluster_nodes(manager: Any) -> Iterable[Any]:
    nodes: Dict[int, Any] = {}
    for node in list(manager.nodes_cache.values()) + list(manager.startup_nodes.values()):
        nodes[id(node)] = node
    for slot_nodes in list(manager.slots_cache.values()):
        for node in slot_nodes:
            nodes[id(node)] = node
    if manager.default_node is not None:
        nodes[id(manager.default_node)] = manager.default_node
    return nodes.values()


def reset_cluster(cluster: "redis.cluster.RedisCluster") -> None:
    """Reset a sync ``RedisCluster``: the locks of the client and its nodes manager, and every
    node's ``Redis`` (its pool). The slot map is kept: it is data, not a connection."""
    renewer = _Renewer()
    renewer.renew(cluster, "_lock")
    renewer.renew_sides(cluster, _CLUSTER_SIDES)
    manager = cluster.nodes_manager
    renewer.renew(manager, "_lock", "_initialization_lock")
    renewer.renew_sides(manager, _POOL_SIDES)
    balancer = getattr(manager, "read_load_balancer", None)
    if balancer is not None:
        renewer.renew(balancer, "_lock")
    for node in _cluster_nodes(manager):
        if node.redis_connection is not None:
            reset_redis(node.redis_connection, renewer)


# -- asyncio ----------------------------------------------------------------------------------


def _drop_async(conn: Any) -> None:
    """Forget the parent's transport under an asyncio connection, without touching its loop.

    ``writer.close()`` would unregister the socket from the parent's event loop (whose epoll
    instance the parent shares with us) and schedule callbacks on it; nothing can be awaited
    in a sync reset anyway. So the descriptor is retired in place: the transport, if it is
    ever closed or collected, closes a dead socket, and the number stays taken until then.
    """
    writer = getattr(conn, "_writer", None)
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    fd = sock.fileno() if sock is not None else -1
    if fd >= 0:
        retire_fd(fd)
    conn._parser.on_disconnect()
    if hasattr(conn, "reset_should_reconnect"):
        conn.reset_should_reconnect()
    if hasattr(conn, "_reset_himport_state"):
        conn._reset_himport_state()
    conn._reader = None
    conn._writer = None


def reset_async_pool(pool: "redis.asyncio.ConnectionPool",
                     _renewer: "_Renewer | None" = None) -> None:
    """Reset an asyncio ``ConnectionPool`` or ``BlockingConnectionPool`` inherited from
    another process: new asyncio locks (the old ones belong to the parent's loop), inherited
    sockets retired without touching the parent's loop, empty pool. Nothing is awaited."""
    pid = os.getpid()
    if _async_reset_pid.get(pool) == pid:
        return
    renewer = _renewer or _Renewer()
    renewer.renew(pool, "_lock", "_condition")
    renewer.renew_sides(pool, _POOL_SIDES)
    for conn in _pool_connections(pool):
        _drop_async(conn)
    pool.reset()  # type: ignore[no-untyped-call, unused-ignore]  # sync: new empty list and WeakSet
    _async_reset_pid[pool] = pid


def reset_async_redis(client: "redis.asyncio.Redis") -> None:
    """Reset a ``redis.asyncio.Redis``: its pool, and a ``single_connection_client``'s
    connection, which is dropped; the client fetches a new one from the pool on first use, in
    the child's own event loop."""
    renewer = _Renewer()
    renewer.renew(client, "_single_conn_lock", "_usage_lock")
    renewer.renew_sides(client, _CLIENT_SIDES)
    reset_async_pool(client.connection_pool, renewer)
    conn = client.connection
    if conn is not None:
        _drop_async(conn)
        client.connection = None  # initialize() gets one from the reset pool when used


def reset_async_pubsub(pubsub: "redis.asyncio.client.PubSub") -> None:
    """Reset an asyncio ``PubSub`` as :func:`reset_pubsub` does the sync one: the inherited
    transport is dropped, the subscriptions kept; ``connect()`` on first use reconnects on the
    child's own connection and the connect callback subscribes again."""
    renewer = _Renewer()
    renewer.renew(pubsub, "_lock")
    renewer.renew_sides(pubsub, _CLIENT_SIDES)
    reset_async_pool(pubsub.connection_pool, renewer)
    conn = pubsub.connection
    if conn is not None:
        _drop_async(conn)
        pool = pubsub.connection_pool
        if hasattr(pool, "_in_use_connections"):
            pool._in_use_connections.add(conn)  # released to this pool by aclose(), as before


client = Adapter(reset_redis)
pubsub = Adapter(reset_pubsub)
pool = Adapter(reset_pool)
cluster = Adapter(reset_cluster)
async_client = Adapter(reset_async_redis)
async_pubsub = Adapter(reset_async_pubsub)
async_pool = Adapter(reset_async_pool)
