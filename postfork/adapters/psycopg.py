"""psycopg 3: a bare ``Connection`` is retired in the child; a ``psycopg_pool.ConnectionPool``
gets fresh connections, locks and worker threads there.

libpq sends Terminate from ``PQfinish``: psycopg skips it when a connection is garbage-collected
in another process, but an explicit ``close()`` in the child would send it on the parent's
socket and end the parent's backend. So an inherited connection is never closed on its socket:
its descriptor is retired first (a dead socket ``dup2``-ed onto the same number), after which
using it raises psycopg's ``OperationalError`` and ``close()`` is harmless. A ``Connection``
cannot be reconnected in place (its libpq ``PGconn`` is fixed at ``connect()``): for one
connection per process use ``postfork.local(lambda: psycopg.connect(dsn))``.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, List

from .._contract import Adapter
from .._locks import renew
from ._retire import retire_fd, retire_methods

if TYPE_CHECKING:
    from psycopg import Connection
    from psycopg_pool import ConnectionPool

__all__ = ["reset_connection", "reset_pool", "retire_connection"]


def retire_connection(conn: Any) -> bool:
    """Retire the socket of ``conn`` (a psycopg 3 sync or async connection) in this process.

    Returns False when there was nothing to retire (the connection was closed or broken: libpq
    has then closed its socket already)."""
    if conn.closed:
        return False
    try:
        fd = conn.pgconn.socket
    except Exception:  # psycopg.OperationalError: libpq holds no socket
        return False
    retire_fd(fd)
    return True


# What an application calls on a connection; each raises postfork.RetiredError (also a
# psycopg.OperationalError) on a retired one. close() and the properties stay psycopg's own.
_ENTRY_POINTS = ("execute", "cursor", "commit", "rollback", "transaction", "pipeline",
                 "notifies", "cancel", "cancel_safe", "set_autocommit", "set_isolation_level",
                 "set_read_only", "set_deferrable", "tpc_begin", "tpc_prepare", "tpc_commit",
                 "tpc_rollback", "tpc_recover", "xid")


def reset_connection(conn: "Connection[Any]") -> None:
    """Retire an inherited ``psycopg.Connection`` or ``AsyncConnection``: using it raises
    ``postfork.RetiredError`` (a ``psycopg.OperationalError`` too) naming ``postfork.local``;
    closing it sends nothing to the parent's backend."""
    import psycopg

    retire_connection(conn)
    # A parent thread inside a query at fork holds conn.lock forever here: the child's use
    # must raise, not block on that lock.
    renew(conn, "lock")
    retire_methods(conn, _ENTRY_POINTS, "psycopg.connect(dsn)", psycopg.OperationalError)


def reset_pool(pool: "ConnectionPool[Any]") -> None:
    """Give a ``psycopg_pool.ConnectionPool`` a fresh start in the child, with no network I/O.

    The pool's connections are the parent's: each is retired and then closed (its Terminate
    goes into the dead socket; libpq frees the number). The worker threads and the scheduler
    thread did not survive the fork, and a parent thread may hold the pool's lock, its task
    queue's or its scheduler's: all are re-created. The workers start again on the child's
    first ``getconn()``/``connection()``/``wait()``, which then fills the pool to ``min_size``
    as a newly opened pool does.

    Connections checked out by the application at fork time are not known to the pool; they
    stay the parent's (do not fork while holding one).
    """
    # A parent thread inside getconn()/putconn() at fork holds this lock forever here.
    renew(pool, "_lock")
    if pool._closed:  # never opened (open() in the child starts from scratch) or closed
        return
    inherited: List[Any] = list(pool._pool)
    inherited += [client.conn for client in pool._waiting if client.conn is not None]
    # A connection on its way back to the pool sits in a ReturnConnection task.
    inherited += [task.conn for task in list(pool._tasks.queue) if getattr(task, "conn", None)]
    pool._pool = deque()
    pool._waiting = deque()  # the waiting threads are the parent's
    pool._pool_full_event = None
    for conn in inherited:
        conn._pool = None  # so close() closes rather than returning it to the pool
        if retire_connection(conn):
            conn.close()
    pool._workers = []  # threads of the parent: they do not run here
    pool._sched_runner = None
    pool._tasks = type(pool._tasks)()
    pool._sched = type(pool._sched)()
    pool._nconns = pool._nconns_min = pool._min_size
    pool._growing = False
    _start_on_first_use(pool)


def _start_on_first_use(pool: "ConnectionPool[Any]") -> None:
    # Every way to get a connection (getconn, connection, wait) first calls
    # _check_open_getconn(): an instance attribute shadows it once, starts the workers and
    # queues the initial connections as open() does, then gives way to the class's method.
    ref = weakref.ref(pool)  # no reference cycle through the instance attribute
    once = threading.Lock()

    def check_open_getconn() -> None:
        p = ref()
        assert p is not None
        with once:
            if p.__dict__.pop("_check_open_getconn", None) is not None and not p._closed:
                p._start_workers()
                p._start_initial_tasks()
        p._check_open_getconn()

    pool._check_open_getconn = check_open_getconn  # type: ignore[method-assign]



connection = Adapter(reset_connection, retires=True)
pool = Adapter(reset_pool)
