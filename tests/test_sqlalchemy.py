"""SQLAlchemy engines (PostgreSQL through psycopg, sync and asyncio; a SQLite file), forking
for real: the child gets a new pool that connects lazily, the parent's pooled connections
survive. PostgreSQL connections are told apart from the server's side (``pg_backend_pid()``).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, List, Tuple

import pytest

import postfork
from postfork.testing import run_in_child

sqlalchemy = pytest.importorskip("sqlalchemy")
pytest.importorskip("psycopg")
from sqlalchemy import event, text  # noqa: E402


def pg_url(dsn: str, driver: str = "psycopg") -> str:
    return dsn.replace("postgresql://", f"postgresql+{driver}://", 1)


def backend_pid(engine: Any) -> int:
    with engine.connect() as conn:  # checked out, then returned to the pool
        return int(conn.scalar(text("SELECT pg_backend_pid()")))


def alive(engine: Any, pid: int) -> bool:
    with engine.connect() as conn:
        return bool(conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"),
                                {"p": pid}))


def test_unmanaged_engine_disposed_in_child_kills_the_parents_connection(postgres_dsn: str) -> None:
    """The hazard: engine.dispose() in a child closes the parent's pooled connection."""
    engine = sqlalchemy.create_engine(pg_url(postgres_dsn), pool_size=1)
    try:
        backend_pid(engine)
        run_in_child(engine.dispose)
        with pytest.raises(sqlalchemy.exc.OperationalError):
            backend_pid(engine)
    finally:
        engine.dispose()


def test_registered_engine_child_connects_anew(postgres_dsn: str) -> None:
    engine = postfork.register(sqlalchemy.create_engine(pg_url(postgres_dsn), pool_size=2))
    observer = sqlalchemy.create_engine(pg_url(postgres_dsn), poolclass=sqlalchemy.pool.NullPool)
    try:
        parent_backend = backend_pid(engine)
        old_pool = engine.pool

        def child() -> Tuple[int, int, bool]:
            mine, again = backend_pid(engine), backend_pid(engine)
            fresh_pool = engine.pool is not old_pool
            engine.dispose()  # closes the child's own connections, not the parent's
            return mine, again, fresh_pool

        results = [run_in_child(child) for _ in range(3)]
        child_backends = {mine for mine, _, _ in results}
        assert len(child_backends) == 3 and parent_backend not in child_backends
        assert all(again == mine and fresh for mine, again, fresh in results)  # pooled per child
        assert engine.pool is old_pool
        assert backend_pid(engine) == parent_backend
        assert alive(observer, parent_backend)
    finally:
        engine.dispose()
        observer.dispose()


def test_registered_async_engine_child_connects_anew(postgres_dsn: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = postfork.register(create_async_engine(pg_url(postgres_dsn), pool_size=2))

    async def backend() -> int:
        async with engine.connect() as conn:
            return int(await conn.scalar(text("SELECT pg_backend_pid()")))

    loop = asyncio.new_event_loop()  # the parent's loop, alive across the forks
    try:
        parent_backend = loop.run_until_complete(backend())

        def child() -> Tuple[int, int]:
            async def main() -> Tuple[int, int]:
                mine, again = await backend(), await backend()
                await engine.dispose()  # the child's own connections
                return mine, again

            return asyncio.run(main())  # a loop of the child's own

        results = [run_in_child(child) for _ in range(2)]
        assert len({mine for mine, _ in results}) == 2
        for mine, again in results:
            assert mine == again and mine != parent_backend
        assert loop.run_until_complete(backend()) == parent_backend
    finally:
        loop.run_until_complete(engine.dispose())
        loop.close()


def test_registered_sqlite_file_engine_child_opens_its_own_connection(tmp_path: Path) -> None:
    engine = postfork.register(sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    connects: List[int] = []  # the pid of every process that opened a DBAPI connection
    event.listen(engine, "connect", lambda dbapi_conn, record: connects.append(os.getpid()))
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE hits (pid INTEGER)"))
            conn.execute(text("INSERT INTO hits VALUES (:p)"), {"p": os.getpid()})
        parent_dbapi = engine.pool._pool.queue[0].dbapi_connection  # the pooled connection

        def child() -> Tuple[List[int], int]:
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO hits VALUES (:p)"), {"p": os.getpid()})
                count = conn.scalar(text("SELECT count(*) FROM hits"))
            engine.dispose()
            return connects, count

        child_connects, count = run_in_child(child)
        assert child_connects[:1] == [os.getpid()] and len(child_connects) == 2
        assert child_connects[1] != os.getpid()  # the child opened a connection of its own
        assert count == 2
        assert connects == [os.getpid()]  # the parent's pool opened nothing new ...
        assert engine.pool._pool.queue[0].dbapi_connection is parent_dbapi  # ... and kept its own
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM hits")) == 2
    finally:
        engine.dispose()
