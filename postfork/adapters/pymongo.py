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
"""

from __future__ import annotations

from typing import Any, Iterator

from .._contract import Adapter
from .._locks import renew

__all__ = ["reset_mongo_client"]


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


client = Adapter(reset_mongo_client)
