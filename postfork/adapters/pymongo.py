"""PyMongo: a ``MongoClient`` built before fork gets a fresh topology in the child.

PyMongo >= 4.3 resets its clients itself, from an ``os.register_at_fork`` hook
(``_after_fork_child``: release every PyMongo lock, then ``client._after_fork()``). uWSGI does
not run at-fork hooks unless started with ``--py-call-osafterfork``, so there PyMongo's reset
never happens: the child inherits a topology whose monitor threads do not exist, locks a parent
thread may hold forever, and the parent's server sessions (two processes sending one ``lsid``).
This reset does what PyMongo's hook does, for one client, without touching a lock and without
any network I/O, and is harmless when PyMongo's own hook already ran in this child (it only
builds one more unopened topology):

- the inherited idle sockets (application pools, monitor and RTT pools) are closed in this
  process only, the way PyMongo's own ``Pool.__del__`` does it: no lock, no ``endSessions``, no
  goodbye; closing the socket *object* leaves it at fileno -1, so nothing in PyMongo keeps the
  descriptor number;
- the client gets a new ``Topology`` (new locks, conditions, pools, session pool; monitor and
  kill-cursors threads start lazily at first use), a new client lock, and an empty kill-cursors
  queue (those cursor ids are the parent's: killing them from here would kill the parent's
  cursors);
- the new topology is marked as this process's own (``_pid`` unset), so PyMongo's "MongoClient
  opened before fork" warning does not fire at the child's first use: what it warns about
  (locks, sockets and sessions shared with the parent) is what this reset replaced.

Not reachable from the client, so not reset: a connection a parent thread had checked out at
the moment of fork (only that thread's stack, which the child does not have, references it;
it stays open and unused), cursors and explicit ``ClientSession`` objects the application still
holds from the parent, and the internal clients of client-side field level encryption.

The same for PyMongo's ``AsyncMongoClient`` (PyMongo >= 4.9), whose own at-fork hook gives it
a new topology too but leaves it bound to the parent's event loop: PyMongo binds the client to
the loop of its first use (``_loop``) and refuses any other ("Cannot use AsyncMongoClient in
different event loop"), so a client the master used cannot serve a worker at all. Its reset:

- ``_loop`` is unset: the client binds to the loop of its first use in the child;
- its lock is an asyncio lock (``_async_create_lock``) of the parent's loop, maybe held by a
  parent task: a new one;
- its inherited connections are asyncio transports of the parent's loop: closing one here
  would unregister its socket from the parent's epoll instance (shared with the child) and
  schedule callbacks on that loop, so each socket is retired in place (``retire_fd``) and the
  connection marked closed; the old topology (its pools, monitors, and their tasks, which
  belong to the parent's loop) and the old kill-cursors executor are kept referenced, so that
  no finalizer of theirs runs here ("Task was destroyed but it is pending!");
- then the new topology, as for ``MongoClient``, marked as this process's own.
"""

from __future__ import annotations

from typing import Any, Iterator, List

from .._contract import Adapter
from .._locks import renew
from ._retire import retire_fd

__all__ = ["reset_mongo_client", "reset_async_mongo_client", "reset_motor_client"]

# Inherited asyncio objects of AsyncMongoClients, kept for the life of this process.
_kept: List[Any] = []


def reset_mongo_client(client: Any) -> None:
    """Give ``client`` (a ``pymongo.MongoClient``) a fresh, unopened topology in this child."""
    from pymongo.lock import _create_lock

    # MongoClient._lock guards starting the kill-cursors thread in _get_topology().
    renew(client, "_lock", factory=_create_lock)
    # PoolOptions has a lock of its own (appending driver metadata), in a name-mangled slot.
    options = getattr(getattr(client, "_options", None), "pool_options", None)
    if options is not None:
        renew(options, "_PoolOptions__metadata_lock", factory=_create_lock)
    topology = getattr(client, "_topology", None)  # absent: a mongodb+srv:// client never used
    if topology is None or getattr(client, "_closed", False):
        return  # nothing connected, or closed in the parent (its use must keep raising)
    _drop_inherited(client, topology)
    client._kill_cursors_queue = []
    # A new Topology from the same settings (same topology id, so MongoClient._clients keeps one
    # entry); _init_background() also sets _opened = False, so the first use opens it here.
    # old_pid=None: the topology belongs to this process, see the module docstring.
    client._init_background(None)


def _drop_inherited(client: Any, topology: Any) -> None:
    for pool in _pools(topology):
        # Lock-free, as PyMongo's own Pool.__del__: the pool lock may be held by a parent thread.
        for conn in list(pool.conns):
            conn.close_conn(None)  # socket.close() in this process only: nothing is sent
    for executor in _executors(client, topology):
        # Their threads do not exist here. Without PyOS_AfterFork_Child (uWSGI) the threading
        # module still believes they run, and PyMongo's atexit hook would wait 1 s for each.
        executor.close()
        executor._thread = None


def _pools(topology: Any) -> Iterator[Any]:
    for server in list(getattr(topology, "_servers", {}).values()):
        monitor = getattr(server, "_monitor", None)
        rtt = getattr(monitor, "_rtt_monitor", None)
        for owner in (server, monitor, rtt):
            pool = getattr(owner, "_pool", None)
            if pool is not None and hasattr(pool, "conns"):
                yield pool


def _executors(client: Any, topology: Any) -> Iterator[Any]:
    owners = [client, topology, getattr(topology, "_srv_monitor", None)]
    for server in list(getattr(topology, "_servers", {}).values()):
        monitor = getattr(server, "_monitor", None)
        owners += [monitor, getattr(monitor, "_rtt_monitor", None)]
    for owner in owners:
        for attr in ("_executor", "_kill_cursors_executor", "_events_executor"):
            executor = getattr(owner, attr, None)
            if executor is not None and hasattr(executor, "_stopped"):
                yield executor


def reset_async_mongo_client(client: Any) -> None:
    """Give ``client`` (a ``pymongo.AsyncMongoClient``) a fresh, unopened topology in this
    child, unbound from the parent's event loop (see the module docstring). Nothing is sent,
    nothing awaited, the parent's loop untouched."""
    from pymongo.lock import _create_lock

    options = getattr(getattr(client, "_options", None), "pool_options", None)
    if options is not None:
        renew(options, "_PoolOptions__metadata_lock", factory=_create_lock)
    lock = getattr(client, "_lock", None)
    if lock is not None:
        _kept.append(lock)
        client._lock = type(lock)()  # PyMongo's asyncio Lock: binds to the loop that uses it
    client._loop = None  # PyMongo binds the client to the loop of its first use here
    topology = getattr(client, "_topology", None)
    if topology is None or getattr(client, "_closed", False):
        return
    for pool in _pools(topology):
        for conn in list(pool.conns):
            _retire_async_conn(conn)
    _kept.append((topology, getattr(client, "_kill_cursors_executor", None)))
    client._kill_cursors_queue = []
    client._init_background(None)


def _retire_async_conn(conn: Any) -> None:
    """An inherited ``AsyncConnection``: its transport's socket retired, the connection marked
    closed (PyMongo then never touches its transport); nothing is sent."""
    interface = getattr(conn, "conn", None)  # AsyncNetworkingInterface: (transport, protocol)
    sock = getattr(interface, "sock", None)  # the transport's socket
    fd = sock.fileno() if sock is not None else -1
    if fd >= 0:
        retire_fd(fd)
    conn.closed = True


def reset_motor_client(client: Any) -> None:
    """Reset a Motor ``AsyncIOMotorClient``: its ``MongoClient`` (``delegate``) as above, and
    its event loop, which is the parent's once used there (Motor creates its futures on it):
    unset, so the client takes the loop of its first use here. Motor runs PyMongo calls on a
    module-level thread pool whose threads do not exist in a child; Motor renews it from an
    at-fork hook, which a fork without hooks (uWSGI) skips: then it is renewed here."""
    reset_mongo_client(client.delegate)
    client._io_loop = None
    _renew_motor_executor()


_motor_executor_pid: List[int] = []


def _renew_motor_executor() -> None:
    import os
    import sys

    framework = sys.modules.get("motor.frameworks.asyncio")
    if framework is None or _motor_executor_pid == [os.getpid()]:
        return
    _motor_executor_pid[:] = [os.getpid()]
    executor = getattr(framework, "_EXECUTOR", None)
    if not getattr(executor, "_threads", None):
        return  # none started yet: Motor's own at-fork hook renewed it, or the parent never used it
    # Every thread it started is the parent's and does not exist here; its idle count says
    # they wait for work, so it would start none, and work submitted here would never run.
    _kept.append(executor)
    framework._reset_global_executor()


client = Adapter(reset_mongo_client)
async_client = Adapter(reset_async_mongo_client)
motor_client = Adapter(reset_motor_client)
