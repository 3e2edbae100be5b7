"""nats-py: the child's copy of an asyncio ``nats.aio.client.Client`` forgets the master's
connection without touching the master's event loop, and connects again on first use, in the
child's own event loop.

What the child inherits (nats-py 2.16, read from ``nats/aio/client.py`` and ``transport.py``):

- ``_transport``: a ``TcpTransport`` whose asyncio ``StreamReader``/``StreamWriter`` belong to
  the master's event loop. Closing it would unregister the socket from that loop's epoll
  instance, which the child shares with the master (``epoll_ctl(DEL)`` there would silence the
  master's socket in the master), and schedule callbacks on that loop; a ``flush()`` from the
  child writes straight onto the master's socket. So the descriptor under it is retired
  (:func:`retire_fd`: nothing sent, the number stays taken, and a later ``epoll_ctl`` on it
  no longer names the master's socket) and the transport is kept referenced, never closed,
  so no finalizer of it runs here. The child's copy gets no transport: nats-py builds a new
  one when it connects.
- ``_reading_task``, ``_flusher_task``, ``_ping_interval_task``, ``_reconnection_task``: tasks
  of the master's loop, which never runs here. Never cancelled (that is ``call_soon`` on the
  master's loop); kept referenced so that no "Task was destroyed but it is pending" fires.
- ``_flush_queue``, ``_pongs``, ``_resp_map``: an asyncio queue and futures of the master's
  loop. A new queue is made in the child's loop at first use; pongs and pending requests are
  the master's and are dropped, as are ``_pending`` (the master's unflushed commands: the child
  would publish them a second time) and the parser's half-read buffer.
- ``_subs``: the master's subscriptions. Their message queues and handler tasks belong to the
  master's loop; their messages arrive on the master's connection, and keep arriving there.
  The child's copy starts with none: a worker subscribes on its own connection (and, unlike the
  master, sees only what is published after it subscribed).

The child's first ``publish``/``subscribe``/``request``/``flush``/``rtt``/``drain`` (also
through a ``JetStreamContext``, which calls them) connects as ``connect()`` does, with the
options the master gave ``connect()``, in the event loop that awaits it (``asyncio.run`` in
a worker). ``close()`` before any use sends nothing. Nothing is connected, awaited or
scheduled by the reset itself.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from .._contract import Adapter
from ._retire import retire_fd

if TYPE_CHECKING:
    import nats.aio.client

__all__ = ["reset_client"]

# The master's asyncio objects, referenced for this process's lifetime so that none of their
# finalizers (a transport closing its socket, a pending task logging) ever runs here.
_inherited: List[Any] = []
_reset_pid: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()

# Coroutine methods the application (or a JetStreamContext) uses the connection through.
_FIRST_USE = ("publish", "subscribe", "request", "flush", "rtt", "drain", "close")

_DEFAULT_FLUSHER_QUEUE_SIZE = 1024


def _sockets(transport: Any) -> List[Any]:
    """The sockets under a nats transport: the asyncio transports of a ``TcpTransport``'s
    writers (plain and after the TLS upgrade: one socket), a ``WebSocketTransport``'s aiohttp
    connection."""
    found: Dict[int, Any] = {}
    for attr in ("_bare_io_writer", "_io_writer", "_ws"):
        holder = getattr(transport, attr, None)
        get = getattr(holder, "get_extra_info", None)
        if get is None:
            continue
        try:
            sock = get("socket")
        except Exception:
            sock = None
        if sock is not None:
            found[id(sock)] = sock
    return list(found.values())


def reset_client(nc: "nats.aio.client.Client") -> None:
    """Reset an asyncio nats ``Client`` inherited from another process (see the module
    docstring): its connection is forgotten with no I/O and no call into the master's loop; it
    connects again in the child's own loop on first use."""
    pid = os.getpid()
    if _reset_pid.get(nc) == pid:
        return  # reset in this process already: what it holds now is this process's own
    _reset_pid[nc] = pid
    cls = type(nc)
    was_used = nc._flush_queue is not None  # connect() was called in an ancestor
    transport = nc._transport
    if transport is not None:
        for sock in _sockets(transport):
            try:
                fd = sock.fileno()
            except Exception:
                fd = -1
            if fd >= 0:
                retire_fd(fd)
    _inherited.append((transport, nc._reading_task, nc._flusher_task, nc._ping_interval_task,
                       nc._reconnection_task, nc._reconnection_task_future, nc._flush_queue,
                       nc._pongs, nc._resp_map, nc._subs))
    maxsize = getattr(nc._flush_queue, "maxsize", _DEFAULT_FLUSHER_QUEUE_SIZE)
    nc._transport = None
    nc._reading_task = nc._flusher_task = nc._ping_interval_task = None
    nc._reconnection_task = nc._reconnection_task_future = None
    nc._flush_queue = None
    nc._pongs = []
    nc._pings_outstanding = 0
    nc._resp_map = {}
    nc._resp_sub_prefix = None
    nc._subs = {}
    nc._pending = []
    nc._pending_data_size = 0
    nc._ps.reset()
    nc._current_server = None
    nc._client_id = None
    nc._client_ip = None
    nc._err = None
    for server in nc._server_pool:  # the master's connect attempts: no back-off for ours
        server.last_attempt = None
        server.reconnects = 0
    for key in nc.stats:
        nc.stats[key] = 0
    _disarm(nc)
    if was_used and nc._status != cls.CLOSED:
        nc._status = cls.DISCONNECTED
        _connect_on_first_use(nc, maxsize)


def _disarm(nc: Any) -> None:
    for name in _FIRST_USE:
        nc.__dict__.pop(name, None)


async def _connect(nc: Any) -> None:
    """What ``Client.connect()`` does once its options are set, in the running loop."""
    while True:
        await nc._select_next_server()  # retries, backs off, raises NoServersError at the end
        try:
            await nc._process_connect_init()
        except (OSError, asyncio.TimeoutError) as exc:  # as connect(): try the next server
            nc._err = exc
            if not nc.options.get("allow_reconnect", True):
                raise
            await nc._error_cb(exc)
            if nc._transport is not None:
                _inherited.append(nc._transport)  # ours, half open: closed by its own loop
                nc._transport.close()
                nc._transport = None
            continue
        nc._current_server.reconnects = 0
        return


def _connect_on_first_use(nc: "nats.aio.client.Client", maxsize: int) -> None:
    ref = weakref.ref(nc)  # no reference cycle through the instance attributes
    state: Dict[str, Optional["asyncio.Future[None]"]] = {"connecting": None}

    async def connect_now(name: str) -> None:
        c = ref()
        assert c is not None
        if name not in c.__dict__:
            return  # connected already
        if c._flush_queue is None:
            c._flush_queue = asyncio.Queue(maxsize=maxsize)  # of this loop
        if name in ("close", "drain") and state["connecting"] is None:
            _disarm(c)  # nothing on the wire to close or drain: it just becomes closed
            return
        connecting = state["connecting"]
        if connecting is None or (connecting.done() and (connecting.cancelled()
                                                         or connecting.exception() is not None)):
            connecting = state["connecting"] = asyncio.ensure_future(_connect(c))
        await asyncio.shield(connecting)
        _disarm(c)

    def shadow(name: str) -> Any:
        method = getattr(type(nc), name)

        async def first_use(*args: Any, **kwargs: Any) -> Any:
            await connect_now(name)
            return await method(ref(), *args, **kwargs)

        first_use.__name__ = name
        return first_use

    for name in _FIRST_USE:
        nc.__dict__[name] = shadow(name)


client = Adapter(reset_client)
