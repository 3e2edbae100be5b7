"""SQLAlchemy: an ``Engine`` (or an ``AsyncEngine``'s sync engine) gets a new, empty pool in
the child, as ``engine.dispose(close=False)`` does (SQLAlchemy's own recipe for a forked child).

``dispose(close=False)`` only swaps in a new pool (no lock taken, no I/O): the new pool
connects lazily on first use, and the inherited pool is dropped without closing its
connections, which are the parent's. Where the driver's family is one postfork retires
(psycopg 3, psycopg2, PyMySQL, mysqlclient, asyncpg, whose connection SQLAlchemy's
``AdaptedConnection`` holds as ``driver_connection``: see the family table), the dropped idle
connections are retired too, so that the child holds no live copy of the parent's
connections and nothing is sent on them, not even by a finalizer (mysqlclient's deallocator
sends COM_QUIT, asyncpg's Terminate); they stay referenced. Connections checked out at fork
time belong to the old pool and stay the parent's: do not fork while holding one.
"""

from __future__ import annotations

import weakref

from typing import TYPE_CHECKING, Any, Dict, Iterable, List

from .._contract import Adapter
from .._lookup import find_adapter

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import Pool

__all__ = ["reset_engine", "reset_async_engine"]


def reset_engine(engine: "Engine") -> None:
    """Give ``engine`` a new pool in this process; retire the inherited idle connections."""
    old = engine.pool
    engine.dispose(close=False)
    dropped = _dropped.setdefault(engine, [])
    for record in _idle_records(old):
        conn = getattr(record, "driver_connection", None)
        _retire_driver_connection(conn)
        if conn is not None:
            dropped.append(conn)


def reset_async_engine(engine: "AsyncEngine") -> None:
    """The same on the ``AsyncEngine``'s sync engine: swapping the pool needs no await."""
    reset_engine(engine.sync_engine)


# engine -> the driver connections its resets dropped in this process, kept referenced (their
# finalizers must not run here) and counted as the engine's by the guard.
_dropped: "weakref.WeakKeyDictionary[Any, List[Any]]" = weakref.WeakKeyDictionary()


def _engine_manages(engine: "Engine") -> List[Any]:
    """The driver connections an engine's reset covers, for the guard: those of its pool and
    those its resets dropped. Under asyncio they are opened from a greenlet, whose frames the
    guard cannot see from the connection's construction, so it cannot tell they are the
    engine's (asyncpg's ``Connection`` is tracked; psycopg's sync one is owned through the
    engine's method on the stack)."""
    conns = [getattr(r, "driver_connection", None) for r in _idle_records(engine.pool)]
    return [c for c in conns if c is not None] + _dropped.get(engine, [])


def _async_engine_manages(engine: "AsyncEngine") -> List[Any]:
    return _engine_manages(engine.sync_engine)


def _idle_records(pool: "Pool") -> Iterable[Any]:
    # Read without the pools' locks (a parent thread may hold them); the child is the only
    # thread left that could touch them.
    queue = getattr(pool, "_pool", None)  # QueuePool, AsyncAdaptedQueuePool
    if queue is not None:
        items = getattr(queue, "queue", None)  # sqlalchemy.util.queue.Queue: a deque
        if items is None:  # AsyncAdaptedQueue: an asyncio.Queue built on first use
            items = getattr(queue.__dict__.get("_queue"), "_queue", None)
        return list(items or ())
    records: List[Any] = list(getattr(pool, "_all_conns", ()))  # SingletonThreadPool
    static = pool.__dict__.get("connection")  # StaticPool, once connected
    if static is not None:
        records.append(static)
    return records


def _retire_driver_connection(conn: Any) -> None:
    """Retire a dropped DBAPI connection whose family postfork can only retire (the family
    table says which: psycopg, psycopg2, ...). Nothing is sent on it."""
    if conn is None:
        return
    found = find_adapter(type(conn))
    if found is not None and found.retires:
        found.reset(conn)


def _dispose(engine: "Engine") -> None:
    engine.dispose()


def _dispose_async(engine: "AsyncEngine") -> None:
    # close_all() runs in a worker that is exiting, from synchronous code (gunicorn's
    # worker_exit, Celery's worker_process_shutdown): run the coroutine on a loop of its own.
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(engine.dispose())
    else:  # inside a running loop nothing can be awaited from here: leave it to exit
        pass


engine = Adapter(reset_engine, close=_dispose, manages=_engine_manages)
async_engine = Adapter(reset_async_engine, close=_dispose_async, manages=_async_engine_manages)
