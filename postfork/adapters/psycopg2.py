"""psycopg2: a bare connection is retired in the child; ``psycopg2.pool`` pools reconnect.

psycopg2 skips libpq's Terminate when a connection is garbage-collected in another process,
but an explicit ``close()`` in the child sends it on the parent's socket and ends the parent's
backend. A plain ``os.close`` of the descriptor is no better: the child's next socket gets the
number and psycopg2's next query (or Terminate) is written into that unrelated connection. So
the inherited descriptor is retired (a dead socket ``dup2``-ed onto the same number): using the
connection raises psycopg2's ``OperationalError``, closing it is harmless. A connection cannot
be reopened in place: for one per process use ``postfork.local(lambda: psycopg2.connect(dsn))``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._contract import Adapter
from .._locks import renew
from ._retire import retire_fd

if TYPE_CHECKING:
    from psycopg2.extensions import connection
    from psycopg2.pool import AbstractConnectionPool

__all__ = ["reset_connection", "reset_pool", "retire_connection"]


def retire_connection(conn: "connection") -> bool:
    """Retire the socket of ``conn`` in this process; False when it was closed already."""
    if conn.closed:
        return False
    retire_fd(conn.fileno())
    return True


def reset_connection(conn: "connection") -> None:
    """Retire an inherited psycopg2 connection: using it raises ``OperationalError``,
    closing it sends nothing to the parent's backend."""
    retire_connection(conn)


def reset_pool(pool: "AbstractConnectionPool") -> None:
    """Empty a ``SimpleConnectionPool``/``ThreadedConnectionPool`` in the child, with no
    network I/O: ``getconn()`` then connects anew, and ``putconn()`` refills it to ``minconn``.

    Idle connections are retired and closed (libpq's Terminate goes into the dead socket and
    the number is freed). Connections that were checked out at fork may still be in the
    application's hands: they are retired, not closed, and forgotten by the pool (``putconn``
    of one raises psycopg2's ``PoolError``).
    """
    # ThreadedConnectionPool: a parent thread inside getconn()/putconn() at fork holds this
    # lock forever here.
    renew(pool, "_lock")
    if pool.closed:
        return
    idle, used = pool._pool, list(pool._used.values())
    pool._pool, pool._used, pool._rused = [], {}, {}
    for conn in idle:
        if retire_connection(conn):
            conn.close()
    for conn in used:
        retire_connection(conn)


def _close_pool(pool: "AbstractConnectionPool") -> None:
    if not pool.closed:
        pool.closeall()


connection = Adapter(reset_connection, retires=True)
pool = Adapter(reset_pool, close=_close_pool)
