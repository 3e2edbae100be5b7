"""Issue 2, item 3, "the parent survives": 20 children each reset and use the parent's
registered psycopg connection, psycopg pool, SQLAlchemy engine (with a checked-out-and-returned
pooled connection) and redis client, then close everything as an exiting worker does
(``postfork.close_all()``). The parent's same objects still work, on the same PostgreSQL
backends (same pid and start time: no Terminate came from a child) and the same Redis
connection; every child had backends and a Redis connection of its own.

The hazard is shown too: the same children with the same objects unmanaged end the parent's
PostgreSQL connections.
"""

from __future__ import annotations

import uuid
from typing import Any, Dict, Iterator, List, Tuple

import pytest

import postfork
from postfork.testing import fork_child, run_in_child

psycopg = pytest.importorskip("psycopg")
psycopg_pool = pytest.importorskip("psycopg_pool")
sqlalchemy = pytest.importorskip("sqlalchemy")
redis = pytest.importorskip("redis")

CHILDREN, AT_A_TIME = 20, 5

# A backend is named by its pid and its start time: pids are reused (pid_max may be 32768).
BACKEND = "SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()"
Backend = Tuple[int, str]


def psycopg_backend(conn: Any) -> Backend:
    pid, started = conn.execute(BACKEND).fetchone()
    return int(pid), str(started)


def engine_backend(engine: Any) -> Backend:
    with engine.connect() as conn:  # checked out, then returned to the pool
        pid, started = conn.execute(sqlalchemy.text(BACKEND)).one()
    return int(pid), str(started)


def pool_backend(pool: Any) -> Backend:
    with pool.connection() as conn:
        return psycopg_backend(conn)


class Clients:
    """What a preloaded app builds at import time, in the parent."""

    def __init__(self, dsn: str, redis_url: str, managed: bool) -> None:
        app = f"postfork-test-{uuid.uuid4().hex[:12]}"
        self.conn = psycopg.connect(dsn, autocommit=True, application_name=app)
        self.pool = psycopg_pool.ConnectionPool(
            dsn, min_size=1, open=True, kwargs={"autocommit": True, "application_name": app})
        self.pool.wait(timeout=10)
        self.engine = sqlalchemy.create_engine(
            dsn.replace("postgresql://", "postgresql+psycopg://", 1), pool_size=2,
            connect_args={"application_name": app})
        self.redis = redis.Redis.from_url(redis_url)
        self.per_process = postfork.local(
            lambda: psycopg.connect(dsn, autocommit=True, application_name=app))
        if managed:
            for client in (self.conn, self.pool, self.engine, self.redis):
                postfork.register(client)

    def identities(self) -> Dict[str, Any]:
        return {
            "conn": psycopg_backend(self.conn),
            "pool": pool_backend(self.pool),
            "engine": engine_backend(self.engine),
            "redis": self.redis.client_id(),
        }

    def close(self) -> None:
        for client in (self.conn, self.pool, self.engine, self.redis):
            postfork.unregister(client)
        self.conn.close()
        self.pool.close()
        self.engine.dispose()
        self.redis.close()
        if self.per_process.built:
            self.per_process.close()


@pytest.fixture
def managed(postgres_dsn: str, redis_url: str) -> Iterator[Clients]:
    clients = Clients(postgres_dsn, redis_url, managed=True)
    try:
        yield clients
    finally:
        clients.close()


def test_the_parent_survives_20_children(managed: Clients) -> None:
    parent = managed.identities()  # the engine's connection: checked out and returned
    assert psycopg_backend(managed.per_process.get()) != parent["conn"]

    def child() -> Dict[str, Any]:
        try:
            managed.conn.execute("SELECT 1")
        except postfork.RetiredError as exc:
            # a bare connection is retired, not reconnected; still a psycopg.OperationalError
            retired = "retired" if isinstance(exc, psycopg.OperationalError) else "wrong class"
        else:
            retired = "usable"
        seen = {
            "retired": retired,
            "local": psycopg_backend(managed.per_process.get()),  # the way to one per process
            "pool": pool_backend(managed.pool),
            "engine": engine_backend(managed.engine),
            "engine_again": engine_backend(managed.engine),
            "redis": managed.redis.client_id(),
        }
        report = postfork.close_all()  # a worker's exit: goodbyes on its own connections only
        seen["closed_ok"] = report.ok
        return seen

    results: List[Dict[str, Any]] = []
    for _ in range(CHILDREN // AT_A_TIME):
        batch = [fork_child(child) for _ in range(AT_A_TIME)]
        results += [c.result(timeout=60) for c in batch]

    assert managed.identities() == parent  # the same objects work, on the same connections
    for seen in results:
        assert seen["retired"] == "retired" and seen["closed_ok"]
        assert seen["engine_again"] == seen["engine"]  # the child's engine pools its own
    for key in ("local", "pool", "engine", "redis"):
        ids = [seen[key] for seen in results]
        assert len(set(ids)) == CHILDREN, key  # one per child
        assert not set(ids) & set(parent.values()), key  # none of them the parent's
    with managed.engine.connect() as conn:  # and the server still has the parent's backends
        live = {tuple(r) for r in conn.execute(sqlalchemy.text(
            "SELECT pid, backend_start::text FROM pg_stat_activity"))}
    assert {parent["conn"], parent["pool"], parent["engine"]} <= live


def test_without_postfork_a_child_ends_the_parents_connections(postgres_dsn: str,
                                                               redis_url: str) -> None:
    """The same objects unmanaged: one child closing them as an exiting worker would."""
    clients = Clients(postgres_dsn, redis_url, managed=False)
    try:
        clients.identities()

        def child() -> None:
            clients.conn.close()
            clients.pool.close()
            clients.engine.dispose()

        run_in_child(child)
        with pytest.raises(psycopg.OperationalError):
            psycopg_backend(clients.conn)
        with pytest.raises(psycopg.OperationalError):
            pool_backend(clients.pool)
        with pytest.raises(sqlalchemy.exc.OperationalError):
            engine_backend(clients.engine)
    finally:
        clients.close()
