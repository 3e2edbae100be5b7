"""pymemcache: ``Client``, ``PooledClient``, ``HashClient`` and ``RetryingClient`` drop the
parent's sockets in the child and reconnect on first use.

What the child inherits (pymemcache 4.0, read from ``pymemcache/client/base.py``, ``hash.py``,
``retrying.py``, ``pool.py``):

- ``Client`` holds one plain socket in ``self.sock`` and makes no pid check: parent and child
  share the connection and read each other's replies (measured: tests/test_pymemcache.py).
  It reconnects by itself whenever ``sock`` is None (``_fetch_cmd``/``_store_cmd`` call
  ``_connect()`` first). The reset sets ``sock`` to None and closes the child's copy of the
  descriptor: ``socket.close()`` in this process only, no ``shutdown()``, no ``quit`` (the
  library's own ``close()`` does the same, but ``quit()`` would send ``quit`` to the parent's
  connection). A TLS socket's ``close()`` sends no close_notify either (only ``unwrap()`` does).
- ``PooledClient`` keeps its ``Client`` objects in an ``ObjectPool`` whose ``_lock`` a parent
  thread may hold at fork: the lock is re-created (a custom ``lock_generator``'s lock of a type
  postfork does not know is left as it is), each pooled client's socket is dropped as above,
  and the pool is emptied: the clients checked out by parent threads are gone with them. Its
  ``clear()`` would take the old lock, so the lists are emptied directly.
- ``HashClient`` holds a ``Client`` or ``PooledClient`` per server in ``clients``; each is
  reset as above. The failed/dead server bookkeeping is kept: it is the parent's view of the
  servers, and it expires on its own timeouts.
- ``RetryingClient`` wraps one of the above in ``_client``: that one is reset.
"""

from __future__ import annotations

from typing import Any

from .._contract import Adapter
from .._locks import renew

__all__ = ["reset_client", "reset_pooled", "reset_hash", "reset_retrying"]


def reset_client(client: Any) -> None:
    """Forget the parent's socket of a ``pymemcache.Client``: closed here only, nothing sent."""
    sock, client.sock = client.sock, None
    if sock is not None:
        try:
            sock.close()  # our descriptor only: no shutdown(), no "quit"
        except OSError:
            pass


def reset_pooled(client: Any) -> None:
    """Reset a ``PooledClient``: new pool lock, every pooled client's socket dropped, empty pool."""
    pool = client.client_pool
    renew(pool, "_lock")
    inherited = list(pool._used_objs) + list(pool._free_objs)
    pool._used_objs.clear()
    pool._free_objs.clear()
    for member in inherited:
        reset_client(member)


def reset_hash(client: Any) -> None:
    """Reset every per-server client of a ``HashClient``."""
    for member in list(client.clients.values()):
        _reset_any(member)


def reset_retrying(client: Any) -> None:
    """Reset the client a ``RetryingClient`` wraps."""
    _reset_any(client._client)


def _reset_any(member: Any) -> None:
    if hasattr(member, "client_pool"):
        reset_pooled(member)
    elif hasattr(member, "clients"):
        reset_hash(member)
    elif hasattr(member, "_client"):
        reset_retrying(member)
    else:
        reset_client(member)


client = Adapter(reset_client)
pooled = Adapter(reset_pooled)
hash_client = Adapter(reset_hash)
retrying = Adapter(reset_retrying)
