"""``logging.handlers``: ``SocketHandler``, ``DatagramHandler``, ``SysLogHandler``,
``QueueHandler`` and ``QueueListener`` in the child.

What the child inherits (CPython's ``logging/handlers.py``, 3.11):

- ``SocketHandler`` (TCP) and ``DatagramHandler`` (UDP) hold ``sock``, made on the first
  ``emit``; ``SysLogHandler`` holds ``socket`` (UDP, TCP or a Unix socket such as
  ``/dev/log``), made in ``__init__``. Unmanaged, every worker's records go out on the
  master's socket: on one TCP stream, interleaved with the master's (a receiver cannot tell
  the processes apart and a record split by a partial write corrupts the stream), or from the
  master's UDP port. The reset closes the child's copy (``detach()`` then ``os.close``: no
  ``shutdown()``, nothing sent) and forgets it; the handler makes its own socket on its next
  ``emit``, as after an error (``SocketHandler.createSocket``; ``SysLogHandler.createSocket``
  since Python 3.11, a socket made in the reset before that: ``socket()`` only, for UDP, and
  for TCP and Unix sockets on the first ``emit``).
- Every handler's ``lock`` (an ``RLock`` a parent thread may hold at fork): renewed. logging
  renews it itself in an at-fork hook, which a server that forks without at-fork hooks (uWSGI
  without ``--py-call-osafterfork``) skips.
- ``QueueListener``: the thread the master started (``start()``) does not exist in the child,
  so a worker's ``QueueHandler`` would fill its copy of a ``queue.Queue`` that nobody reads.
  The reset gives the queue a new mutex and conditions, drops the master's pending records
  (the master handles them; handling them here would log them twice), resets the listener's
  own handlers with their adapters (a ``SocketHandler`` behind it gets a socket of its own),
  and starts the listener's thread in the child. With a ``multiprocessing`` queue, the
  master's listener already receives every worker's records through the queue's pipe: the
  child's queue is reset as ``multiprocessing`` resets it in the processes it starts (its
  feeder thread state, ``Queue._after_fork``), and no second listener is started (it would
  take records meant for the master's).
- ``QueueHandler``: its queue, as above (and, Python 3.12+, the ``listener`` that
  ``dictConfig`` attached to it).

Nothing is sent by the reset.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import weakref
from typing import Any, Callable

from .._contract import Adapter
from .._locks import renew
from .._lookup import find_adapter
from .socket import reset_socket
from .urllib3 import _renew_queue

__all__ = ["reset_socket_handler", "reset_syslog_handler", "reset_queue_handler",
           "reset_queue_listener"]

_reset_pid: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()


def _first_time_here(obj: Any) -> bool:
    """True once per process for ``obj``: a handler reached from several registered objects
    (a listener and the handler itself) is reset once, never twice (the second time would drop
    the child's own new socket)."""
    pid = os.getpid()
    try:
        if _reset_pid.get(obj) == pid:
            return False
        _reset_pid[obj] = pid
    except TypeError:  # not weakly referenceable
        pass
    return True


def _renew_handler_lock(handler: logging.Handler) -> None:
    renew(handler, "lock")


def reset_socket_handler(handler: logging.handlers.SocketHandler) -> None:
    """``SocketHandler`` / ``DatagramHandler``: the child's copy of the socket closed, a new
    socket on the next ``emit``."""
    if not _first_time_here(handler):
        return
    _renew_handler_lock(handler)
    sock, handler.sock = handler.sock, None
    handler.retryTime = None  # no back-off inherited from the master's failures
    if isinstance(sock, socket.socket):
        reset_socket(sock)


def reset_syslog_handler(syslog: logging.handlers.SysLogHandler) -> None:
    """``SysLogHandler``: the child's copy of the socket closed; a socket of its own on the
    next ``emit`` (Python 3.11+: ``createSocket``)."""
    handler: Any = syslog
    if not _first_time_here(handler):
        return
    _renew_handler_lock(handler)
    sock, handler.socket = handler.socket, None
    if isinstance(sock, socket.socket):
        reset_socket(sock)
    if not hasattr(handler, "createSocket"):  # Python < 3.11: emit() does not reconnect
        _reconnect_on_first_emit(handler, sock)


def _reconnect_on_first_emit(handler: Any, old: Any) -> None:
    family = getattr(old, "family", socket.AF_INET)
    if isinstance(handler.address, str) or getattr(handler, "unixsocket", False):
        connect: Callable[[], None] = lambda: handler._connect_unixsocket(handler.address)
    elif handler.socktype == socket.SOCK_DGRAM:
        handler.socket = socket.socket(family, socket.SOCK_DGRAM)  # no I/O
        return
    else:
        def connect() -> None:
            handler.socket = socket.create_connection(handler.address)
    cls_emit = type(handler).emit

    def emit(record: logging.LogRecord) -> None:
        if handler.socket is None:
            try:
                connect()
            except OSError:
                handler.handleError(record)
                return
        handler.__dict__.pop("emit", None)
        cls_emit(handler, record)

    handler.emit = emit


def _is_multiprocessing_queue(q: Any) -> bool:
    return type(q).__module__.startswith("multiprocessing") and hasattr(q, "_after_fork")


def _reset_queue(q: Any) -> None:
    if q is None or not _first_time_here(q):
        return
    if _is_multiprocessing_queue(q):
        q._after_fork()  # multiprocessing's own reset of the child's copy: no I/O
        return
    _renew_queue(q)
    items = getattr(q, "queue", None)
    if items is not None and hasattr(items, "clear"):
        items.clear()  # the master's pending records: the master's to handle
    if hasattr(q, "unfinished_tasks"):
        q.unfinished_tasks = 0


def reset_queue_listener(listener: logging.handlers.QueueListener) -> None:
    """``QueueListener``: its queue (see the module docstring), its handlers, and, if the
    master had started it, its thread, started again here (not for a multiprocessing queue,
    whose records the master's listener receives)."""
    if not _first_time_here(listener):
        return
    q = listener.queue
    _reset_queue(q)
    for handler in listener.handlers:
        found = find_adapter(type(handler))
        if found is not None:
            found.reset(handler)
        else:
            _renew_handler_lock(handler)
    was_running = listener._thread is not None
    listener._thread = None  # the master's, gone here
    if was_running and not _is_multiprocessing_queue(q):
        listener.start()


def reset_queue_handler(handler: logging.handlers.QueueHandler) -> None:
    """``QueueHandler``: its lock and queue, and the listener ``dictConfig`` gave it (3.12+)."""
    if not _first_time_here(handler):
        return
    _renew_handler_lock(handler)
    _reset_queue(handler.queue)
    listener = getattr(handler, "listener", None)
    if listener is not None:
        reset_queue_listener(listener)


def _close_listener(listener: logging.handlers.QueueListener) -> None:
    if listener._thread is not None:
        listener.stop()


socket_handler = Adapter(reset_socket_handler)
syslog_handler = Adapter(reset_syslog_handler)
queue_handler = Adapter(reset_queue_handler)
queue_listener = Adapter(reset_queue_listener, close=_close_listener)
