"""httpx: a ``Client`` and an ``AsyncClient`` start the child with empty connection pools.

What the child inherits (httpx 0.28 and httpcore 1.0, read from ``httpx/_client.py``,
``httpx/_transports/default.py``, ``httpcore/_sync|_async/connection_pool.py``,
``connection.py``, ``http11.py``, ``http2.py``, ``http_proxy.py`` and ``_backends/``):

- A client's transports (``client._transport`` and every mounted one, ``client._mounts``:
  proxies) each hold an httpcore pool (``transport._pool``: ``ConnectionPool``,
  ``HTTPProxy``, ``SOCKSProxy`` or their async twins) whose ``_connections`` are the parent's
  keep-alive connections. Unmanaged, the child's next request picks an idle one and writes on
  the parent's socket. The pool is emptied in the child (``_connections`` and the queue of
  waiting ``_requests``: those belong to the parent's threads or tasks); the child's first
  request opens a connection of its own.
- The sync pool's ``_optional_thread_lock`` may be held by a parent thread at fork: a new one.
- Sync connections: the child's copy of each socket under them (``get_extra_info("socket")``
  on each network stream: plain, TLS, TLS through a proxy) is closed with ``detach()`` and
  ``os.close``: no ``shutdown()``, no TLS ``close_notify`` (never through the SSL layer).
- Async connections hold anyio streams over asyncio transports of the parent's event loop
  (and anyio locks and events of that loop). Closing them would act on that loop, whose epoll
  instance the child shares with the parent. So their descriptors are retired in place
  (:func:`retire_fd`: nothing sent, the number stays taken), and the connection objects are
  kept referenced for the life of the process, so that no transport finalizer runs here. An
  ``AsyncClient`` built (and used) in the master then works in the worker's own event loop.
- The cookie jar's ``RLock`` (``http.cookiejar``) is renewed.
"""

from __future__ import annotations

import os
import weakref
from typing import TYPE_CHECKING, Any, Iterator, List

from .._contract import Adapter
from .._locks import renew
from ._retire import retire_fd
from .urllib3 import close_socket_copy

if TYPE_CHECKING:
    import httpx

__all__ = ["reset_client", "reset_pool"]

# The parent's async connections, referenced for this process's lifetime (see the docstring).
_inherited: List[Any] = []
_reset_pid: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()


def _streams(conn: Any, depth: int = 0) -> Iterator[Any]:
    """The network streams under an httpcore connection: its HTTP/1.1 or HTTP/2 connection's,
    and through proxy connections (``ForwardHTTPConnection``, ``TunnelHTTPConnection``) the
    connection they wrap."""
    stream = getattr(conn, "_network_stream", None)
    if stream is not None:
        yield stream
    inner = getattr(conn, "_connection", None)
    if inner is not None and depth < 4:
        yield from _streams(inner, depth + 1)


def _socket_of(stream: Any) -> Any:
    try:
        return stream.get_extra_info("socket")
    except Exception:  # a stream that cannot say: nothing to act on
        return None


def _is_async(pool: Any) -> bool:
    # (httpcore sets __module__ = "httpcore" on its public classes: ask the interface instead)
    return hasattr(pool, "handle_async_request")


def reset_pool(pool: Any) -> None:
    """Reset an httpcore connection pool (sync or async, direct or through a proxy) inherited
    from another process: empty, with the parent's connections closed here (sync) or retired
    in place and kept (async). Nothing is sent, awaited or scheduled."""
    pid = os.getpid()
    if _reset_pid.get(pool) == pid:
        return
    _reset_pid[pool] = pid
    lock = getattr(pool, "_optional_thread_lock", None)
    if lock is not None and hasattr(lock, "_lock"):  # httpcore's ThreadLock wraps a Lock
        renew(lock, "_lock")
    connections = list(getattr(pool, "_connections", None) or ())
    requests = list(getattr(pool, "_requests", None) or ())
    pool._connections = []
    pool._requests = []
    asynchronous = _is_async(pool)
    if asynchronous:
        _inherited.append((connections, requests))
    for conn in connections:
        for stream in _streams(conn):
            sock = _socket_of(stream)
            if sock is None:
                continue
            if asynchronous:
                try:
                    fd = sock.fileno()
                except Exception:
                    fd = -1
                if fd >= 0:
                    retire_fd(fd)
            else:
                close_socket_copy(sock)


def _pools(client: Any) -> Iterator[Any]:
    transports = [getattr(client, "_transport", None)]
    transports += list((getattr(client, "_mounts", None) or {}).values())
    seen = set()
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        if pool is not None and hasattr(pool, "_connections") and id(pool) not in seen:
            seen.add(id(pool))
            yield pool


def reset_client(client: "httpx.Client | httpx.AsyncClient") -> None:
    """Reset an ``httpx.Client`` or ``httpx.AsyncClient``: every transport's pool (the default
    one and the mounted ones), and the cookie jar's lock. Transports with no pool (a
    ``MockTransport``, ``WSGITransport``, ``ASGITransport``) hold no connection."""
    cookies = getattr(client, "_cookies", None)
    jar = getattr(cookies, "jar", None)
    if jar is not None:
        renew(jar, "_cookies_lock")
    for pool in _pools(client):
        reset_pool(pool)


client = Adapter(reset_client)
pool = Adapter(reset_pool)
