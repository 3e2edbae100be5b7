"""psycopg 3 and psycopg_pool against the real PostgreSQL, forking for real.

Each process's connection is identified from the server's side (``pg_backend_pid()``,
``pg_stat_activity`` filtered by an ``application_name`` unique to the test).
"""

from __future__ import annotations

import logging

import uuid
from typing import Any, Iterator, Set, Tuple

import pytest

import postfork
from _locks import held_by_a_parent_thread
from postfork.testing import ChildError, fork_child, run_in_child

psycopg = pytest.importorskip("psycopg")
psycopg_pool = pytest.importorskip("psycopg_pool")


def backend_pid(conn: Any) -> int:
    return int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])


def app_pids(observer: Any, app: str) -> Set[int]:
    rows = observer.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [app]
    ).fetchall()
    return {row[0] for row in rows}


@pytest.fixture
def observer(postgres_dsn: str) -> Iterator[Any]:
    """The test's own view of the server: who is connected."""
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def app() -> str:
    return f"postfork-test-{uuid.uuid4().hex[:12]}"


def make_pool(dsn: str, app: str, min_size: int = 2) -> Any:
    pool = psycopg_pool.ConnectionPool(
        dsn, min_size=min_size, max_size=4, open=True, timeout=10,
        kwargs={"application_name": app, "autocommit": True},
    )
    pool.wait(timeout=10)
    return pool


def test_unmanaged_connection_closed_in_child_kills_the_parents_backend(postgres_dsn: str) -> None:
    """The hazard: close() in a child sends libpq's Terminate on the parent's socket."""
    conn = psycopg.connect(postgres_dsn, autocommit=True)
    try:
        backend_pid(conn)
        run_in_child(conn.close)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()


def test_registered_connection_is_retired_in_the_child(postgres_dsn: str, observer: Any,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="postfork"):
        conn = postfork.register(psycopg.connect(postgres_dsn, autocommit=True))
    # register() says at once that the object can only be retired in workers, and what to use
    told = [r.getMessage() for r in caplog.records if "cannot be reused" in r.getMessage()]
    assert told and "postfork.local(lambda: psycopg.connect(dsn))" in told[0]
    try:
        parent_backend = backend_pid(conn)

        def use_then_close() -> Tuple[str, bool, bool, bool, str]:
            report = postfork.reset_all()
            try:
                conn.execute("SELECT 1")
            except psycopg.OperationalError as exc:  # the application's own except still works
                error = f"{type(exc).__name__}: {exc}"
                retired_error = isinstance(exc, postfork.RetiredError)
            else:
                error, retired_error = "no error", False
            conn.close()  # harmless: libpq's Terminate goes into the dead socket
            entry = [e for e in report.entries if e.name == "psycopg.Connection"][0]
            return error, retired_error, conn.closed, entry.retired, str(report)

        error, retired_error, closed, marked, summary = run_in_child(use_then_close)
        assert retired_error and closed and marked
        assert error.startswith("RetiredError: postfork retired this psycopg.Connection in pid ")
        assert "postfork.local(lambda: psycopg.connect(dsn))" in error
        assert "1 retired (unusable in this process: psycopg.Connection; use postfork.local)" in summary
        run_in_child(conn.close)  # closing an unused retired connection: harmless too

        assert backend_pid(conn) == parent_backend
        assert observer.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [parent_backend]
        ).fetchone()[0] == 1
    finally:
        postfork.unregister(conn)
        conn.close()


def test_unmanaged_pool_closed_in_child_kills_the_parents_backends(postgres_dsn: str, app: str) -> None:
    """The hazard SPEC.md measured: closing an inherited pool in a child sends Terminate on
    every pooled connection of the parent."""
    pool = make_pool(postgres_dsn, app, min_size=1)
    try:
        run_in_child(pool.close)
        with pytest.raises(psycopg.OperationalError):
            with pool.connection() as conn:
                conn.execute("SELECT 1")
    finally:
        pool.close()


def test_registered_pool_gives_each_child_its_own_backends(postgres_dsn: str, observer: Any,
                                                           app: str) -> None:
    pool = postfork.register(make_pool(postgres_dsn, app))
    try:
        parent_backends = app_pids(observer, app)
        assert len(parent_backends) == 2
        with pool.connection() as conn:
            assert backend_pid(conn) in parent_backends

        def child() -> Tuple[int, int, int]:
            with pool.connection() as conn:
                mine = backend_pid(conn)
            pool.wait(timeout=10)  # the restarted workers fill the child's pool to min_size
            size = pool.get_stats()["pool_size"]
            with pool.connection() as conn:
                again = backend_pid(conn)
            pool.close()  # Terminate on the child's own connections only
            return mine, again, size

        children = [fork_child(child) for _ in range(3)]
        results = [c.result(timeout=30) for c in children]

        child_backends = {mine for mine, _, _ in results}
        assert len(child_backends) == 3, results  # one per child ...
        assert not child_backends & parent_backends  # ... and none of them the parent's
        for mine, again, size in results:
            assert size >= 2  # refilled to min_size (plus the one its first getconn() grew)
            assert again not in parent_backends
        run_in_child(pool.close)  # a child closing the pool before any use: nothing to close
        assert parent_backends <= app_pids(observer, app)  # the parent's backends live on
        for _ in range(2):
            with pool.connection() as conn:
                assert backend_pid(conn) in parent_backends
    finally:
        pool.close()


def test_pool_lock_held_by_a_parent_thread_at_fork(postgres_dsn: str, app: str) -> None:
    """Issue 2, item 5: a parent thread holds the pool's lock while the parent forks."""
    registered = postfork.register(make_pool(postgres_dsn, app, min_size=1))
    unmanaged = make_pool(postgres_dsn, app + "-unmanaged", min_size=1)
    with registered.connection() as conn:
        parent_backend = backend_pid(conn)

    def child() -> Tuple[float, bool, int, int]:
            report = postfork.reset_all()  # the at-fork hook's run, which faced the held lock
            with registered.connection(timeout=10) as conn:
                one = conn.execute("SELECT 1").fetchone()[0]
                pid = backend_pid(conn)
            return report.seconds, report.ok, one, pid

    try:
        with held_by_a_parent_thread(registered._lock, unmanaged._lock):
            seconds, ok, one, pid = run_in_child(child, timeout=20)
            assert ok and seconds < 2.0
            assert one == 1 and pid != parent_backend

            # Without the reset the child's first getconn() waits forever on the parent's lock.
            with pytest.raises(ChildError, match="did not finish"):
                run_in_child(lambda: unmanaged.getconn(timeout=1), timeout=2)
    finally:
        registered.close()
        unmanaged.close()

