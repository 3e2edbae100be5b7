"""kombu: a ``Connection`` drops what it inherited and reconnects on first use; its producers,
pools and the global pool groups (``kombu.pools.connections`` / ``producers``) follow.

kombu is built to reconnect: ``Connection.connection``/``default_channel`` connect lazily when
``_connection`` is None. What a child must not do is *close* what it inherited, and kombu's own
after-fork paths do exactly that (kombu 5.x and py-amqp 5.x, read from ``kombu/connection.py``,
``kombu/resource.py``, ``kombu/pools.py``, ``amqp/connection.py``, ``amqp/transport.py``):

- ``Connection.release()``/``close()`` sends AMQP ``Connection.Close`` on the parent's socket;
- ``Connection.collect()``, which kombu's pools run after fork (``force_close_all`` ->
  ``collect_resource``) and Celery's rpc backend calls, ends in py-amqp's
  ``Transport.close()``: ``sock.shutdown(SHUT_RDWR)`` (and ``unwrap()`` under TLS) on the
  shared socket. The broker sees the connection end and drops the *master's* connection
  (measured in ``tests/test_kombu.py``, as for ``kombu.pools`` under ``multiprocessing``,
  where kombu registers that cleanup itself);
- a virtual transport (redis) keeps a ``MultiChannelPoller`` whose ``epoll`` instance fork()
  shares with the parent (``unregister`` from the child removes the parent's registrations),
  and channels whose redis client holds a connection outside the pool with a BRPOP in flight:
  a child that drains events reads the replies meant for the master (measured: it takes every
  message).

So no kombu or py-amqp close path runs here. The reset of a ``Connection``:

1. retires the broker socket of a py-amqp connection (``_connection._transport.sock``) with
   :func:`retire_fd`: dead here, the number kept while py-amqp references it, so any later
   ``close()``/``collect()`` of the old object shuts down a dead socket; the old connection's
   channels (which a master-built ``Producer`` or ``Consumer`` may still hold) raise
   :class:`postfork.RetiredError` when used;
2. for a virtual transport, retires the poller's ``epoll`` descriptor first, then resets every
   client of a known family each channel holds (kombu's redis channel: its redis-py clients,
   PubSub and pools, with postfork's redis adapter: copies closed without ``shutdown()``,
   new locks) -- the same thing on a channel registered by itself;
3. forgets the transport, the connection, the default channel (kept referenced, never
   closed, so no finalizer of theirs runs here) and the cache of declared entities. Nothing
   is sent; the child's first use (``publish``, ``default_channel``, ``connect()``) opens its
   own connection and declares what it needs again.

A ``Producer`` resets its connection and is revived on it (``revive(connection)``: a channel
promise, no I/O), so a producer the master built publishes on the child's own connection. A
pool (``ConnectionPool``, ``ProducerPool``, ``ChannelPool``) resets what it holds, gets a new
queue (a parent thread may hold the old one's mutex) and refills with lazy entries; a
``PoolGroup`` resets its pools in place and keeps them, so a pool the application holds stays
the group's. A resource checked out at fork is reset and forgotten by its pool. A
``Consumer`` built in the master is not handled: build consumers in each worker.
"""

from __future__ import annotations

import os
from queue import LifoQueue
from typing import Any, Dict, Iterable, List

from .._contract import Adapter
from .._lookup import find_adapter
from ._retire import public_methods, retire_fd, retire_methods

__all__ = ["reset_connection", "reset_channel", "reset_producer", "reset_pool", "reset_group"]

# Values of these modules are never reset through a kombu object: a channel holds no file or
# bare socket of its own that kombu does not also reach through its client.
_NOT_CLIENTS = ("_io", "io", "socket", "builtins")


def _first_time(obj: Any) -> bool:
    """True the first time ``obj`` is reset in this process (it is reset through several
    paths: itself, its pool, its pool group, a producer; and ``reset_all(force=True)`` must not
    drop the child's own new connections)."""
    state = obj.__dict__
    pid = os.getpid()
    if state.get("_postfork_pid") == pid:
        return False
    state["_postfork_pid"] = pid
    return True


def _fileno(obj: Any) -> int:
    fileno = getattr(obj, "fileno", None)
    if fileno is None:
        return -1
    try:
        fd = fileno()
    except (OSError, ValueError):  # closed
        return -1
    return fd if isinstance(fd, int) else -1


def _reset_known(obj: Any) -> None:
    """Reset ``obj`` with the adapter its type has (kombu's, redis-py's, PyMongo's...), if any."""
    if obj is None or isinstance(obj, type) or type(obj).__module__.split(".")[0] in _NOT_CLIENTS:
        return
    found = find_adapter(type(obj))
    if found is not None:
        found.reset(obj)


# -- connections -------------------------------------------------------------------------------


def _retire_broker_socket(connection: Any) -> None:
    """The socket of a transport-level connection: py-amqp's ``Connection._transport.sock``
    (TCP or TLS), else the connection's own ``fileno()`` (librabbitmq)."""
    transport = getattr(connection, "_transport", None)
    fd = _fileno(getattr(transport, "sock", None)) if transport is not None else -1
    if fd < 0 and transport is None:
        fd = _fileno(connection)
    if fd >= 0:
        retire_fd(fd)


def _closed(*args: Any, **kwargs: Any) -> None:
    """``close()`` of a retired py-amqp channel: nothing to send, nothing to do."""


def _retire_amqp_channels(connection: Any) -> None:
    """py-amqp channels of the parent's connection (``connection.channels``; the connection is
    its own channel 0) cannot be used again: a ``Producer`` or ``Consumer`` built in the master
    still holds one. Their methods raise :class:`postfork.RetiredError` instead of failing on
    the dead socket -- which kombu's ``ensure()`` (``publish(retry=True)``) would take for a
    lost connection and retry forever on the same dead channel (measured)."""
    channels = getattr(connection, "channels", None)
    if not isinstance(channels, dict):
        return
    for amqp_channel in list(channels.values()):
        if amqp_channel is connection:
            continue
        retire_methods(amqp_channel, public_methods(type(amqp_channel)), "connection.channel()")
        amqp_channel.close = _closed


def _retire_poller(poller: Any) -> None:
    """kombu.utils.eventio's poller: ``_epoll`` wraps an epoll instance, which fork() shares
    with the parent. Dead here, nothing can change the parent's registrations through it."""
    for attr in ("_epoll", "_kqueue"):
        fd = _fileno(getattr(poller, attr, None))
        if fd >= 0:
            retire_fd(fd)


def _channels_of(transport: Any) -> List[Any]:
    seen: Dict[int, Any] = {}
    for attr in ("channels", "_avail_channels"):
        for channel in list(getattr(transport, attr, None) or ()):
            seen[id(channel)] = channel
    return list(seen.values())


def reset_connection(conn: Any) -> None:
    """Reset a ``kombu.Connection`` (or ``PooledConnection``) in the child: its inherited
    sockets retired, its transport, connection and default channel forgotten, no byte sent.
    The first use reconnects."""
    if not _first_time(conn):
        return
    state = conn.__dict__
    transport = state.get("_transport")
    connection = state.get("_connection")
    if connection is not None and connection is not transport:  # virtual: _connection is it
        _retire_broker_socket(connection)
        _retire_amqp_channels(connection)
    if transport is not None:
        _retire_poller(getattr(getattr(transport, "cycle", None), "poller", None))
        for channel in _channels_of(transport):
            _reset_known(channel)
    # Forgotten, not closed; kept referenced so that no finalizer of theirs runs here.
    state["_postfork_inherited"] = (transport, connection, state.get("_default_channel"))
    state["_connection"] = None
    state["_default_channel"] = None
    state["_transport"] = None  # a virtual transport's poller and channels are the parent's
    declared = state.get("declared_entities")
    if declared is not None:
        declared.clear()  # declared on the parent's connection: declare again on ours


def _client_values(channel: Any) -> List[Any]:
    """The clients a virtual channel holds: kombu's redis channel caches its ``client`` and
    ``subclient`` (PubSub) and its pools in attributes; a Sentinel manager holds more."""
    values = [v for v in list(vars(channel).values())
              if not isinstance(v, type) and type(v).__module__.split(".")[0] not in _NOT_CLIENTS]
    for attr in ("_sentinel_manager", "_async_sentinel_manager"):
        manager = vars(channel).get(attr)
        values.extend(getattr(manager, "sentinels", None) or ())
    return values


def reset_channel(channel: Any) -> None:
    """Reset the clients a virtual transport's channel holds (kombu's redis channel: redis-py
    clients, PubSub and pools), each with its own family's adapter. Nothing is sent: redis-py
    connections of the parent are closed here without ``shutdown()``."""
    if not _first_time(channel):
        return
    connection = getattr(channel, "connection", None)  # the virtual Transport
    _retire_poller(getattr(getattr(connection, "cycle", None), "poller", None))
    for value in _client_values(channel):
        if find_adapter(type(value)) is not None:
            _reset_known(value)


# -- producers and pools ---------------------------------------------------------------------


def reset_producer(producer: Any) -> None:
    """Reset a ``kombu.Producer``'s connection and revive the producer on it: it publishes on
    the child's own connection (its default channel, opened on first publish)."""
    if not _first_time(producer):
        return
    state = producer.__dict__
    conn = state.get("__connection__")
    channel = state.get("_channel")
    if conn is None and channel is not None:  # built on a channel: the connection behind it
        conn = getattr(getattr(channel, "connection", None), "client", None)
    if conn is None:
        return
    reset_connection(conn)
    if channel is not None:  # None: released to a ProducerPool, which revives it on acquire
        producer.revive(conn)  # a ChannelPromise of conn.default_channel: nothing is sent


def _pool_contents(pool: Any) -> List[Any]:
    """What a kombu ``Resource`` holds, read without its queue's lock (a parent thread may hold
    it): idle and checked-out resources, and the connection (pool) it builds them from."""
    state = pool.__dict__
    items = list(getattr(state.get("_resource"), "queue", None) or ())
    items += list(state.get("_dirty") or ())
    for attr in ("connection", "connections"):  # ConnectionPool/ChannelPool; ProducerPool
        if state.get(attr) is not None:
            items.append(state[attr])
    return items


def reset_pool(pool: Any) -> None:
    """Reset a kombu pool (``ConnectionPool``, ``ProducerPool``, ``ChannelPool``) in place:
    what it holds is reset (never closed: kombu's own after-fork ``force_close_all`` ends the
    parent's connections), then it starts over with a new queue of lazy entries."""
    if not _first_time(pool):
        return
    inherited = _pool_contents(pool)
    for item in inherited:
        _reset_known(item)  # lazy entries have no adapter: never evaluated, nothing inherited
    state = pool.__dict__
    # The dropped resources stay referenced: no finalizer of theirs runs here, and the guard
    # still counts them (a producer the application holds) as this pool's.
    state["_postfork_inherited"] = inherited
    old = state.get("_resource")
    pool._resource = type(old)() if isinstance(old, LifoQueue) else LifoQueue()
    pool._dirty = set()
    if not state.get("_closed"):
        pool.setup()  # lazy entries only: connecting happens on acquire


def reset_group(group: Any) -> None:
    """Reset a ``kombu.pools.PoolGroup`` (``kombu.pools.connections``, ``producers``): each of
    its pools in place (kept in the group, so a pool the application holds stays its pool) and
    the connections they are keyed by."""
    if not _first_time(group):
        return
    for key, pool in list(dict.items(group)):
        _reset_known(key)
        _reset_known(pool)


# -- what each reset covers, for the guard ---------------------------------------------------


def _covered(obj: Any, out: Dict[int, Any], depth: int = 0) -> None:
    if obj is None or id(obj) in out or depth > 4:
        return
    out[id(obj)] = obj
    state = getattr(obj, "__dict__", None) or {}
    if isinstance(obj, dict):  # a PoolGroup: its keys and pools
        for key, value in list(dict.items(obj)):
            _covered(key, out, depth + 1)
            _covered(value, out, depth + 1)
    if "_resource" in state:  # a pool
        for item in _pool_contents(obj) + list(state.get("_postfork_inherited") or ()):
            if find_adapter(type(item)) is not None:
                _covered(item, out, depth + 1)
    conn = state.get("__connection__")  # a producer
    if conn is not None:
        _covered(conn, out, depth + 1)


def _manages(obj: Any) -> Iterable[Any]:
    out: Dict[int, Any] = {}
    _covered(obj, out)
    out.pop(id(obj), None)
    return list(out.values())


def _channel_clients(channel: Any) -> Iterable[Any]:
    return [v for v in _client_values(channel) if find_adapter(type(v)) is not None]


def _close_pool(pool: Any) -> None:
    """A worker exiting: close the pool's connections gracefully (``Connection.Close``; kombu's
    ``force_close_all`` would only ``collect()`` them). Only ever this process's own: an
    inherited one was reset, and its reset retired its socket."""
    for item in _pool_contents(pool):
        if item is pool.__dict__.get("connection") or find_adapter(type(item)) is None:
            continue  # the template connection, or a lazy entry never evaluated
        if "_resource" in getattr(item, "__dict__", {}):  # a ProducerPool's ConnectionPool
            _close_pool(item)
            continue
        try:
            pool.close_resource(item)
        except Exception:  # noqa: BLE001 - the worker is exiting: close what can be closed
            pass


def _close_group(group: Any) -> None:
    for pool in list(dict.values(group)):
        _close_pool(pool)


connection = Adapter(reset_connection)
channel = Adapter(reset_channel, manages=_channel_clients)
producer = Adapter(reset_producer, manages=_manages)
pool = Adapter(reset_pool, manages=_manages, close=_close_pool)
pool_group = Adapter(reset_group, manages=_manages, close=_close_group)
