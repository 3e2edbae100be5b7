"""urllib3: ``PoolManager`` (and ``ProxyManager``), ``HTTPConnectionPool``,
``HTTPSConnectionPool`` and their ``HTTPConnection`` objects reconnect in the child.

What the child inherits (urllib3 2.x, read from ``connectionpool.py``, ``poolmanager.py``,
``_collections.py`` and ``connection.py``):

- A pool's ``pool`` is a ``queue.LifoQueue`` of idle keep-alive ``HTTPConnection`` objects
  (``None`` for a slot never used). The child's next request takes the parent's connection
  from it and writes on the parent's socket: measured, the server received the child's request
  on the parent's connection, and with TLS the parent's next request on that connection broke
  the session (both processes encrypt with the same keys and sequence numbers: the server
  answers ``DECRYPTION_FAILED_OR_BAD_RECORD_MAC``). The queue's ``mutex`` (and its three
  conditions built on it) may be held by a parent thread at fork: a new lock, new conditions.
- Each idle connection's socket: the child's copy is closed with no ``shutdown()`` and, for
  TLS, no ``close_notify`` (:func:`postfork.adapters.socket.reset_socket`: ``detach()`` then
  ``os.close``, never through the SSL layer), and the connection is put back in the state
  urllib3's own ``close()`` leaves it in: idle, ``sock`` None. It stays in the queue; urllib3
  sees it as dropped on the next ``_get_conn`` and reconnects it (``connect()`` on first use).
- Connections a parent thread had checked out at fork are not in the queue: they are the
  parent's. Their slots come back as ``None`` so that a ``block=True`` pool keeps its size.
- ``PoolManager.pools`` is a ``RecentlyUsedContainer`` whose ``RLock`` is renewed; every pool
  in it is reset as above (read without that lock). Pools are kept, never closed or dropped,
  so no finalizer (``weakref.finalize(pool, _close_pool_connections, queue)``) runs early.

Nothing is sent and nothing is connected by the reset.
"""

from __future__ import annotations

import os
import socket
import threading
import weakref
from typing import TYPE_CHECKING, Any

from .._contract import Adapter
from .._locks import fresh, renew
from .http_client import reset_connection as _reset_http_client
from .socket import reset_socket

if TYPE_CHECKING:
    import urllib3

__all__ = ["reset_connection", "reset_pool", "reset_pool_manager", "close_socket_copy"]

# The pid each pool was last reset in: a second reset in the same process (reset_all(force=True),
# a pool reached through two registered objects) must not drop the child's own new connections.
_reset_pid: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()


def close_socket_copy(sock: Any) -> None:
    """Close this process's copy of ``sock``: a socket, an ``ssl.SSLSocket``, or a wrapper
    holding one under ``.socket`` (urllib3's ``SSLTransport``, TLS through an HTTPS proxy).
    No ``shutdown()``, no TLS ``close_notify``: nothing reaches the peer."""
    seen = 0
    while sock is not None and not isinstance(sock, socket.socket) and seen < 4:
        sock = getattr(sock, "socket", None)
        seen += 1
    if isinstance(sock, socket.socket):
        reset_socket(sock)


def reset_connection(conn: "urllib3.connection.HTTPConnection") -> None:
    """An urllib3 ``HTTPConnection`` (or ``HTTPSConnection``): this process's copy of its socket
    closed without a byte sent, the connection idle as after urllib3's own ``close()``."""
    sock = conn.sock
    conn.sock = None
    _reset_http_client(conn)  # http.client's request state: idle, no pending response
    if sock is not None:
        close_socket_copy(sock)
    # What urllib3's close() resets, so that the next request starts as on a new connection
    # (a proxy tunnel is set up again by the pool when it sees the connection closed).
    for name, value in (("_response_options", None), ("_has_connected_to_proxy", False),
                        ("is_verified", False), ("proxy_is_verified", None)):
        if hasattr(conn, name):
            setattr(conn, name, value)
    if hasattr(conn, "_response_options"):  # urllib3 2: close() forgets the tunnel too
        for name in ("_tunnel_host", "_tunnel_port", "_tunnel_scheme"):
            if hasattr(conn, name):
                setattr(conn, name, None)


def _renew_queue(q: Any) -> None:
    """A ``queue.Queue``'s mutex and the conditions that share it, new and released."""
    mutex = getattr(q, "mutex", None)
    if mutex is None:
        return
    new = fresh(mutex) or threading.Lock()
    q.mutex = new
    for name in ("not_empty", "not_full", "all_tasks_done"):
        if hasattr(q, name):
            setattr(q, name, threading.Condition(new))


def reset_pool(pool: "urllib3.HTTPConnectionPool") -> None:
    """Reset an ``HTTPConnectionPool`` / ``HTTPSConnectionPool`` inherited from another
    process: see the module docstring. A closed pool (``pool.pool is None``) stays closed."""
    pid = os.getpid()
    if _reset_pid.get(pool) == pid:
        return
    _reset_pid[pool] = pid
    q = pool.pool
    if q is None:
        return
    _renew_queue(q)
    items = getattr(q, "queue", None)  # LifoQueue: a list, read without the (old) lock
    if items is None:
        return
    for conn in list(items):
        if conn is not None:
            reset_connection(conn)
    maxsize = getattr(q, "maxsize", 0)
    missing = maxsize - len(items) if maxsize > 0 else 0
    if missing > 0 and isinstance(items, list):
        # slots of connections a parent thread had checked out: free again, taken last (LIFO)
        items[0:0] = [None] * missing
    if hasattr(q, "unfinished_tasks"):
        q.unfinished_tasks = 0


def reset_pool_manager(manager: "urllib3.PoolManager") -> None:
    """Reset a ``PoolManager`` (``ProxyManager``, ``SOCKSProxyManager``): the lock of its
    pools container, and every pool in it."""
    pools: Any = manager.pools
    renew(pools, "lock")
    container = getattr(pools, "_container", None)
    for pool in list(container.values()) if container is not None else ():
        reset_pool(pool)


connection = Adapter(reset_connection)
pool = Adapter(reset_pool)
pool_manager = Adapter(reset_pool_manager)
