"""sentry-sdk: the child's client gets an empty queue, its own background worker, locks and
connections; the master's pending events stay the master's.

What sentry-sdk already does at fork (sentry-sdk 2.x, read from ``worker.py``,
``transport.py``, ``client.py``, ``sessions.py``, ``monitor.py``, ``_batcher.py``): the
transport's ``BackgroundWorker`` compares the pid it started its thread in with the current one
and starts a thread in the child on the first event (``is_alive``); the ``Monitor`` and the
log, metrics and span batchers reset their thread state from at-fork hooks of their own.

What it does not (sentry-python#2699), measured against a local endpoint:

- The worker's queue is the master's, with the events the master had captured and not sent
  yet: the child's new thread sends them as well (20 of 20 queued master events arrived twice).
- The worker's ``_lock``: the master holds it for the whole of a ``flush()`` (up to its
  timeout); a worker forked meanwhile waits for ever on its first event (measured: the
  child's ``capture_message`` never returned).
- The transport's urllib3 pool keeps the master's keep-alive connection: the child's events go
  down it.
- The ``SessionFlusher``'s locks and pending sessions (sent twice, like the queue), and the
  transport's count of discarded events (reported twice in client reports).

The reset, with no I/O: the worker gets a new queue and lock and forgets the master's thread
(sentry starts this process's on the first event, as it does after any fork); the pool is
handed to the urllib3 family's adapter through the family table
(:mod:`postfork.adapters._http_pools`: idle connections closed in this process only, detach +
close, no ``shutdown()``, no TLS ``close_notify``), or, for a transport whose pool postfork does
not know (HTTP/2 over httpcore), the transport builds a new pool and the master's is kept
referenced, unused; the session flusher gets new locks and no pending sessions; the monitor and
batchers are reset with sentry's own ``_reset_thread_state`` (for servers that run no at-fork
hook: uWSGI).
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Iterable, List

from .._contract import Adapter
from .._locks import renew
from .._lookup import find_adapter
from ._http_pools import reset_http

__all__ = ["reset_client", "reset_transport"]

# Pools of the master postfork cannot reset (httpcore's, for HTTP/2): referenced for ever in
# this process, unused, so that no finalizer closes the master's connections.
_kept: List[Any] = []


def _reset_worker(worker: Any) -> None:
    queue = getattr(worker, "_queue", None)
    if queue is None or not hasattr(worker, "_thread_for_pid"):
        return  # an AsyncWorker (bound to the master's event loop) or a worker of the app's own
    worker._queue = type(queue)(queue.maxsize)  # the master's pending events stay the master's
    worker._lock = threading.Lock()  # a master thread in flush() holds it at fork
    worker._thread = None  # the master's thread, which does not run here
    worker._thread_for_pid = None  # so the first event starts this process's


def reset_transport(transport: Any) -> None:
    """sentry-sdk's HTTP transport: an empty queue, a worker of its own, connections of its own."""
    _reset_worker(transport._worker)
    discarded = getattr(transport, "_discarded_events", None)
    if discarded is not None:
        transport._discarded_events = collections.defaultdict(int)  # the master reports its own
    pool = transport._pool
    try:
        reset_http(pool)
    except TypeError:  # not urllib3 (httpcore for HTTP/2): a new pool here, the old one kept
        _kept.append(pool)
        transport._pool = transport._make_pool()


def reset_client(client: Any) -> None:
    """sentry-sdk's client (``sentry_sdk.get_client()`` after ``sentry_sdk.init(dsn)``)."""
    transport = client.transport
    if transport is not None:
        found = find_adapter(type(transport))
        if found is not None:
            found.reset(transport)
    flusher = getattr(client, "session_flusher", None)
    if flusher is not None:
        renew(flusher, "_thread_lock", "_aggregate_lock")
        flusher.pending_sessions = []
        flusher.pending_aggregates = {}
    for name in ("monitor", "log_batcher", "metrics_batcher", "span_batcher"):
        part = getattr(client, name, None)
        reset_state = getattr(part, "_reset_thread_state", None)
        if reset_state is not None:
            reset_state()  # sentry's own at-fork reset (idempotent): also where no hook runs


def manages_client(client: Any) -> Iterable[Any]:
    transport = client.transport
    return [] if transport is None else [transport, *manages_transport(transport)]


def manages_transport(transport: Any) -> Iterable[Any]:
    return [transport._pool]


def _flush_and_close(client: Any) -> None:
    client.close(timeout=2)  # a worker's own events: sent before it exits


def _kill(transport: Any) -> None:
    transport.flush(2)
    transport.kill()


client = Adapter(reset_client, close=_flush_and_close, manages=manages_client)
transport = Adapter(reset_transport, close=_kill, manages=manages_transport)
