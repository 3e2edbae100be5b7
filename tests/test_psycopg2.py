"""psycopg2 and its pools against the real PostgreSQL, forking for real.

A bare connection is retired in the child (psycopg2's own error on use, a harmless close);
``SimpleConnectionPool`` and ``ThreadedConnectionPool`` reconnect. Connections are told apart
from the server's side with ``pg_backend_pid()``.
"""

from __future__ import annotations

import gc
import os
import threading
from typing import Any, Iterator, Tuple

import pytest

import postfork
from _locks import held_by_a_parent_thread
from postfork.testing import run_in_child

psycopg2 = pytest.importorskip("psycopg2")
pg_pool = pytest.importorskip("psycopg2.pool")


def backend_pid(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return int(cur.fetchone()[0])


def connect(dsn: str) -> Any:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


@pytest.fixture
def managed(postgres_dsn: str) -> Iterator[Any]:
    """A registered psycopg2 connection. psycopg2 connections take no weak reference, so the
    registry holds them strongly: unregister at the end."""
    conn = postfork.register(connect(postgres_dsn))
    try:
        yield conn
    finally:
        postfork.unregister(conn)
        conn.close()


def test_unmanaged_connection_closed_in_child_kills_the_parents_backend(postgres_dsn: str) -> None:
    conn = connect(postgres_dsn)
    try:
        backend_pid(conn)
        run_in_child(conn.close)
        with pytest.raises(psycopg2.OperationalError):
            backend_pid(conn)
    finally:
        conn.close()


def test_registered_connection_is_retired_in_the_child(managed: Any) -> None:
    parent_backend = backend_pid(managed)

    def use_then_close() -> Tuple[str, int]:
        try:
            backend_pid(managed)
        except psycopg2.Error as exc:
            error = type(exc).__name__
        else:
            error = "no error"
        managed.close()  # harmless: libpq's Terminate goes into the dead socket
        return error, managed.closed

    error, closed = run_in_child(use_then_close)
    assert error == "OperationalError" and closed
    run_in_child(managed.close)  # an unused retired connection closes harmlessly too
    assert backend_pid(managed) == parent_backend


def _query_after_plain_close(conn: Any, redis_url: str) -> Tuple[bool, bool]:
    """What a naive reset does: os.close() the inherited descriptor. The child's next socket
    (here redis-py's) takes the freed number, and psycopg2 still writes to it."""
    import redis

    fd = conn.fileno()
    gc.disable()  # no collection may free a lower number before the Redis socket takes this one
    os.close(fd)
    r = redis.Redis.from_url(redis_url, single_connection_client=True)
    r.ping()
    same_number = r.connection._sock.fileno() == fd
    # The query goes into the Redis socket: Redis waits for a newline, libpq for a reply.
    query = threading.Thread(target=backend_pid, args=(conn,), daemon=True)
    query.start()
    query.join(1.0)
    return same_number, query.is_alive()


def test_retired_descriptor_number_cannot_be_taken_by_the_childs_next_socket(
        managed: Any, redis_url: str) -> None:
    """SPEC.md: a psycopg2 query written into a Redis socket hangs the child. Retired, the
    number stays taken: the child's Redis connection gets another one, psycopg2 raises."""
    import redis

    def child() -> Tuple[bool, str, bool, int]:
        r = redis.Redis.from_url(redis_url, single_connection_client=True)
        r.ping()
        other_number = r.connection._sock.fileno() != managed.fileno()
        try:
            backend_pid(managed)
        except psycopg2.OperationalError:
            error = "OperationalError"
        else:
            error = "no error"
        managed.close()
        r.set("postfork-test:psycopg2", b"x", ex=10)
        return other_number, error, r.ping(), r.client_id()

    other_number, error, pong, _ = run_in_child(child, timeout=20)
    assert other_number and error == "OperationalError" and pong

    # The hazard, with an unmanaged connection and a plain os.close(): the child's query is
    # written into its Redis connection and hangs there.
    conn = connect(managed.dsn)
    try:
        assert run_in_child(_query_after_plain_close, conn, redis_url) == (True, True)
        assert backend_pid(conn) > 0  # the parent's own connection was never touched
    finally:
        conn.close()


@pytest.mark.parametrize("kind", ["SimpleConnectionPool", "ThreadedConnectionPool"])
def test_registered_pool_reconnects_in_the_child(postgres_dsn: str, kind: str) -> None:
    pool = postfork.register(getattr(pg_pool, kind)(1, 3, postgres_dsn))
    try:
        idle = pool.getconn()
        keyed = pool.getconn(key="reports")  # checked out at fork, under a key
        parent_backend, keyed_backend = backend_pid(idle), backend_pid(keyed)
        pool.putconn(idle)  # checked out and returned: idle in the pool at fork

        def child() -> Tuple[int, int, int, int]:
            conn = pool.getconn()
            mine = backend_pid(conn)
            pool.putconn(conn)
            again = backend_pid(pool.getconn())  # the same child connection, from the pool
            fresh_keyed = backend_pid(pool.getconn(key="reports"))
            pool.closeall()  # Terminate on the child's own connections only
            return mine, again, fresh_keyed, len({mine, again, fresh_keyed})

        mine, again, fresh_keyed, distinct = run_in_child(child)
        assert mine not in (parent_backend, keyed_backend)
        assert again == mine
        assert fresh_keyed not in (parent_backend, keyed_backend)
        assert distinct == 2

        conn = pool.getconn()
        assert backend_pid(conn) == parent_backend  # the parent's pooled connection survived
        pool.putconn(conn)
        assert backend_pid(pool.getconn(key="reports")) == keyed_backend
    finally:
        pool.closeall()


def test_threaded_pool_lock_held_by_a_parent_thread_at_fork(postgres_dsn: str) -> None:
    pool = postfork.register(pg_pool.ThreadedConnectionPool(1, 2, postgres_dsn))

    def child() -> Tuple[bool, float, int]:
        report = postfork.reset_all()
        conn = pool.getconn()
        return report.ok, report.seconds, backend_pid(conn)

    try:
        with held_by_a_parent_thread(pool._lock):
            ok, seconds, pid = run_in_child(child, timeout=20)
        assert ok and seconds < 2.0 and pid > 0
    finally:
        pool.closeall()


def test_registered_pool_has_no_goodbye_for_the_parent(postgres_dsn: str) -> None:
    """An unmanaged pool closed in a child ends the parent's backends; registered, it doesn't."""
    unmanaged = pg_pool.SimpleConnectionPool(1, 1, postgres_dsn)
    managed_pool = postfork.register(pg_pool.SimpleConnectionPool(1, 1, postgres_dsn))
    try:
        run_in_child(unmanaged.closeall)
        run_in_child(managed_pool.closeall)
        conn = unmanaged.getconn()
        with pytest.raises(psycopg2.OperationalError):
            backend_pid(conn)
        assert backend_pid(managed_pool.getconn()) > 0
    finally:
        unmanaged.closeall()
        managed_pool.closeall()
