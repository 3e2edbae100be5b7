"""asyncpg (bare connections, pools) and SQLAlchemy ``postgresql+asyncpg`` against the real
PostgreSQL, forking for real.

The parent keeps its event loop open across the forks; each child runs a loop of its own
(``asyncio.run``). The server says who is who: each connection's backend pid, and
``pg_stat_activity`` (read on a psycopg connection of the test's own) filtered by an
``application_name`` unique to the test.
"""

from __future__ import annotations

import asyncio
import gc
import os
import select
import socket
import sys
import time
import uuid
import warnings
from typing import Any, Callable, Iterator, Set, Tuple

import pytest

import postfork
from _guard_findings import findings_in_a_child
from _polling import wait_until
from postfork.testing import fork_child, run_in_child

asyncpg = pytest.importorskip("asyncpg")
psycopg = pytest.importorskip("psycopg")


# -- fixtures and the server's view ---------------------------------------------------------


@pytest.fixture
def app() -> str:
    return f"postfork-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def observer(postgres_dsn: str) -> Iterator[Any]:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        yield conn


def backends(observer: Any, app: str) -> Set[int]:
    rows = observer.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [app]).fetchall()
    return {row[0] for row in rows}


def backends_now(dsn: str, app: str) -> Set[int]:
    """``backends`` asked on a connection of the calling process's own (a child's)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return backends(conn, app)


def alive(observer: Any, pid: int) -> bool:
    return bool(observer.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()[0])


def gone_soon(observer: Any, pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not alive(observer, pid):
            return True
        time.sleep(0.05)
    return False


def connect(loop: asyncio.AbstractEventLoop, dsn: str, app: str) -> Any:
    return loop.run_until_complete(
        asyncpg.connect(dsn, server_settings={"application_name": app}))


def make_pool(loop: asyncio.AbstractEventLoop, dsn: str, app: str, size: int = 2) -> Any:
    async def build() -> Any:
        return await asyncpg.create_pool(dsn, min_size=size, max_size=size + 1,
                                         server_settings={"application_name": app})

    return loop.run_until_complete(build())


def outcome(func: Callable[[], Any]) -> Any:
    """What ``func()`` returned, or its exception's type name and message."""
    try:
        return func()
    except BaseException as exc:  # noqa: BLE001 - the outcome is the measurement
        return f"{type(exc).__name__}: {exc}"


def parent_query(loop: asyncio.AbstractEventLoop, conn: Any, timeout: float = 3.0) -> Any:
    return outcome(lambda: loop.run_until_complete(
        asyncio.wait_for(conn.fetchval("SELECT 42"), timeout)))


def unsolicited(conn: Any) -> bool:
    """Bytes waiting on the parent's socket that the parent never asked for."""
    sock = conn._transport.get_extra_info("socket")
    return bool(select.select([sock.fileno()], [], [], 0.3)[0])


# -- 1. the hazard: a bare connection used or closed by a child ----------------------------


def test_hazard_child_query_lands_on_the_parents_connection(
        postgres_dsn: str, loop: asyncio.AbstractEventLoop, app: str) -> None:
    """The child's query is written on the parent's socket before asyncpg sees that its
    futures belong to another loop; the reply lands in the parent's connection."""
    conn = connect(loop, postgres_dsn, app)
    try:
        child = run_in_child(lambda: outcome(lambda: asyncio.run(conn.fetchval("SELECT 7"))))
        assert "attached to a different loop" in child
        assert unsolicited(conn)
        after = parent_query(loop, conn)
        assert after != 42, after  # measured: InternalClientError (another operation in progress)
    finally:
        conn.terminate()


@pytest.mark.parametrize("how", ["close", "terminate", "finalizer"])
def test_hazard_child_closing_sends_terminate(postgres_dsn: str, loop: asyncio.AbstractEventLoop,
                                              observer: Any, app: str, how: str) -> None:
    """close(), terminate() and the garbage collector (Connection.__del__ calls terminate())
    all send Terminate on the inherited socket: the parent's backend ends."""
    holder = [connect(loop, postgres_dsn, app)]  # the only reference: the child drops it
    backend = holder[0].get_server_pid()

    def in_child() -> None:
        if how == "close":
            outcome(lambda: asyncio.run(holder[0].close()))  # Terminate, then a foreign future
        elif how == "terminate":
            holder[0].terminate()
        else:
            holder.clear()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()

    try:
        run_in_child(in_child)
        assert gone_soon(observer, backend)
        assert parent_query(loop, holder[0]) != 42
    finally:
        holder[0].terminate()


# -- 2. a registered bare connection is retired ---------------------------------------------


@pytest.mark.parametrize("explicit_reset", [True, False], ids=["reset_all", "at_fork_hook_only"])
def test_registered_connection_is_retired_in_the_child(
        postgres_dsn: str, loop: asyncio.AbstractEventLoop, observer: Any, app: str,
        explicit_reset: bool) -> None:
    conn = postfork.register(connect(loop, postgres_dsn, app))
    backend = conn.get_server_pid()
    holder = [conn]

    def in_child() -> Tuple[str, bool, bool, bool, bool, str]:
        report = postfork.reset_all()
        try:
            asyncio.run(conn.fetchval("SELECT 1"))
        except asyncpg.InterfaceError as exc:  # the application's own except still catches it
            error, retired = f"{type(exc).__name__}: {exc}", isinstance(exc, postfork.RetiredError)
        else:
            error, retired = "no error", False
        try:
            conn.transaction()
        except postfork.RetiredError:
            pass
        else:
            error = "transaction() did not raise"
        asyncio.run(conn.close())  # harmless: nothing sent, the parent's loop untouched
        conn.terminate()
        holder.clear()
        gc.collect()  # and its finalizer: nothing either (the object is kept, not collected)
        family = socket.socket(fileno=os.dup(fd)).family.name
        entry = [e for e in report.entries if e.name == "asyncpg.Connection"][0]
        return error, retired, isinstance(conn, asyncpg.Connection), entry.retired, \
            conn.is_closed(), family

    fd = conn._transport.get_extra_info("socket").fileno()
    try:
        error, retired, still_a_connection, marked, closed, family = fork_child(
            in_child, reset=explicit_reset).result(30)
        assert retired and marked and closed and still_a_connection
        assert error.startswith("RetiredError: postfork retired this asyncpg.Connection in pid ")
        assert "postfork.local(lambda: asyncpg.create_pool(dsn))" in error
        assert family == "AF_UNIX"  # the parent's socket is no longer open in the child
        assert not unsolicited(conn)
        assert alive(observer, backend)
        assert loop.run_until_complete(conn.fetchval("SELECT pg_backend_pid()")) == backend
    finally:
        postfork.unregister(conn)
        loop.run_until_complete(conn.close())


def test_local_pool_is_the_connection_per_process(postgres_dsn: str, loop: asyncio.AbstractEventLoop,
                                                  observer: Any, app: str) -> None:
    """What the retired connection's error recommends, as written there."""
    db = postfork.local(lambda: asyncpg.create_pool(
        postgres_dsn, min_size=1, max_size=2, server_settings={"application_name": app}))

    async def backend() -> int:
        pool = await db()
        return int(await pool.fetchval("SELECT pg_backend_pid()"))

    try:
        parent = loop.run_until_complete(backend())

        def child() -> Tuple[int, int]:
            async def main() -> Tuple[int, int]:
                mine, again = await backend(), await backend()
                await db().close()
                return mine, again

            return asyncio.run(main())

        results = [run_in_child(child) for _ in range(2)]
        assert len({mine for mine, _ in results}) == 2
        assert all(mine == again != parent for mine, again in results)
        assert loop.run_until_complete(backend()) == parent
        assert alive(observer, parent)
    finally:
        postfork.unregister(db)
        if db.built:
            loop.run_until_complete(db().close())


# -- 3. pools --------------------------------------------------------------------------------


def test_hazard_unmanaged_pool_used_or_closed_in_a_child(
        postgres_dsn: str, loop: asyncio.AbstractEventLoop, observer: Any, app: str) -> None:
    pool = make_pool(loop, postgres_dsn, app)
    parent_backends = backends(observer, app)
    assert len(parent_backends) == 2
    try:
        # A child's query through the pool goes out on one of the parent's connections ...
        used = run_in_child(lambda: outcome(lambda: asyncio.run(pool.fetchval("SELECT 7"))))
        assert used != 7, used
        # ... and a child closing the pool sends Terminate on every one of them.
        run_in_child(lambda: outcome(lambda: asyncio.run(pool.close())))
        assert all(gone_soon(observer, pid) for pid in parent_backends)
    finally:
        pool.terminate()


@pytest.mark.parametrize("explicit_reset", [True, False], ids=["reset_all", "at_fork_hook_only"])
def test_registered_pool_reopens_on_the_childs_own_loop(
        postgres_dsn: str, loop: asyncio.AbstractEventLoop, observer: Any, app: str,
        explicit_reset: bool) -> None:
    pool = postfork.register(make_pool(loop, postgres_dsn, app))
    parent_backends = backends(observer, app)
    assert len(parent_backends) == 2

    async def backend() -> int:
        async with pool.acquire() as conn:
            return int(await conn.fetchval("SELECT pg_backend_pid()"))

    def child() -> Tuple[int, int, int, Set[int]]:
        async def main() -> Tuple[int, int, int, Set[int]]:
            mine, again = await backend(), await backend()
            size = pool.get_size()  # asyncpg opened min_size connections, on this loop
            seen = backends_now(postgres_dsn, app)
            await pool.close()  # the child's own connections only
            return mine, again, size, seen

        return asyncio.run(main())

    try:
        assert loop.run_until_complete(backend()) in parent_backends
        children = [fork_child(child, reset=explicit_reset) for _ in range(3)]
        results = [c.result(60) for c in children]
        mine = {m for m, _, _, _ in results}
        assert len(mine) == 3 and not mine & parent_backends
        for m, again, size, seen in results:
            assert again == m and size == 2
            assert parent_backends <= seen  # the parent's connections, there at the same time
        assert backends(observer, app) == parent_backends  # children closed theirs; ours live
        assert loop.run_until_complete(backend()) in parent_backends
        assert pool.get_size() == 2
    finally:
        postfork.unregister(pool)
        loop.run_until_complete(pool.close())


@pytest.mark.parametrize("how", ["close", "terminate", "finalizers"])
def test_registered_pool_closed_in_a_child_before_use_is_harmless(
        postgres_dsn: str, loop: asyncio.AbstractEventLoop, observer: Any, app: str,
        how: str) -> None:
    pool = postfork.register(make_pool(loop, postgres_dsn, app))
    parent_backends = backends(observer, app)

    def in_child() -> str:
        if how == "close":
            asyncio.run(pool.close())
        elif how == "terminate":
            pool.terminate()
        else:
            for holder in pool._holders:  # the reset kept the inherited ones: no finalizer
                assert holder._con is None
            gc.collect()
        return outcome(lambda: asyncio.run(pool.fetchval("SELECT 1")))

    try:
        after = run_in_child(in_child)
        if how != "finalizers":
            assert "pool is closed" in after
        else:
            assert after == 1
        time.sleep(0.2)  # time for a wrongful goodbye on the parent's connections to take effect
        # the child's own backends (the finalizers case) leave when PostgreSQL sees its exit
        assert wait_until(lambda: backends(observer, app) == parent_backends)
        assert loop.run_until_complete(pool.fetchval("SELECT 1")) == 1
    finally:
        postfork.unregister(pool)
        loop.run_until_complete(pool.close())


# -- 4. SQLAlchemy postgresql+asyncpg ---------------------------------------------------------


def sa_url(dsn: str) -> str:
    return "postgresql+asyncpg://" + dsn.split("://", 1)[1]


def test_hazard_unmanaged_asyncpg_engine_breaks_the_parents_connection(
        postgres_dsn: str, loop: asyncio.AbstractEventLoop, observer: Any, app: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(sa_url(postgres_dsn), pool_size=1,
                                 connect_args={"server_settings": {"application_name": app}})

    async def backend() -> int:
        async with engine.connect() as conn:
            return int(await conn.scalar(text("SELECT pg_backend_pid()")))

    try:
        parent = loop.run_until_complete(backend())
        child = run_in_child(lambda: outcome(lambda: asyncio.run(backend())))
        assert "attached to a different loop" in child
        # the parent's pooled connection got the child's reply and then a Terminate
        assert outcome(lambda: loop.run_until_complete(asyncio.wait_for(backend(), 5))) != parent
        assert gone_soon(observer, parent)
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome(lambda: loop.run_until_complete(engine.dispose()))


def test_registered_asyncpg_engine_retires_the_dropped_connections(
        postgres_dsn: str, loop: asyncio.AbstractEventLoop, observer: Any, app: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = postfork.register(create_async_engine(
        sa_url(postgres_dsn), pool_size=2,
        connect_args={"server_settings": {"application_name": app}}))

    async def backend() -> int:
        async with engine.connect() as conn:
            return int(await conn.scalar(text("SELECT pg_backend_pid()")))

    try:
        parent = loop.run_until_complete(backend())
        pooled = engine.sync_engine.pool._pool._queue._queue[0].driver_connection
        fd = pooled._transport.get_extra_info("socket").fileno()

        def child() -> Tuple[int, int, bool, str]:
            retired = type(pooled).__dict__.get("__postfork_retired__", False)
            family = socket.socket(fileno=os.dup(fd)).family.name

            async def main() -> Tuple[int, int]:
                mine, again = await backend(), await backend()
                await engine.dispose()  # the child's own connections
                return mine, again

            mine, again = asyncio.run(main())
            return mine, again, retired, family

        results = [run_in_child(child) for _ in range(2)]
        assert len({mine for mine, _, _, _ in results}) == 2
        for mine, again, retired, family in results:
            assert mine == again != parent
            assert retired and family == "AF_UNIX"  # dropped, retired: nothing sent on it
        assert not unsolicited(pooled)
        assert alive(observer, parent)
        assert loop.run_until_complete(backend()) == parent
    finally:
        postfork.unregister(engine)
        loop.run_until_complete(engine.dispose())


# -- 5. the guard ----------------------------------------------------------------------------


def _line() -> int:
    return sys._getframe(1).f_lineno


def test_guard_names_unmanaged_connections_and_pools_by_line(
        postgres_dsn: str, loop: asyncio.AbstractEventLoop, app: str,
        restore_guard: None) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    settings = {"application_name": app}
    postfork.guard("warn")
    conn = loop.run_until_complete(asyncpg.connect(postgres_dsn, server_settings=settings))
    conn_line = _line() - 1
    # An asyncpg Pool cannot be weakly referenced, so the guard cannot hold it: it names the
    # pool's connections, at the line that opened the pool.
    pool = loop.run_until_complete(asyncpg.create_pool(
        postgres_dsn, min_size=2, max_size=2, loop=loop, server_settings=settings))
    pool_line = _line() - 2
    managed_pool = postfork.register(loop.run_until_complete(asyncpg.create_pool(
        postgres_dsn, min_size=2, max_size=2, loop=loop, server_settings=settings)))
    managed_line = _line() - 2
    engine = postfork.register(create_async_engine(
        sa_url(postgres_dsn), connect_args={"server_settings": settings}))

    async def use_engine() -> None:
        async with engine.connect() as c:
            await c.scalar(text("SELECT 1"))

    loop.run_until_complete(use_engine())
    engine_conn = engine.sync_engine.pool._pool._queue._queue[0].driver_connection

    here = os.path.relpath(__file__)
    try:
        found = findings_in_a_child()
        clients = sorted((s, site) for k, s, site in found if k == "client")
        assert clients == [("asyncpg.Connection", f"{here}:{conn_line}")] + [
            ("asyncpg.Connection", f"{here}:{pool_line}")] * 2, found
        # the managed pool's and the registered engine's connections: covered by their resets
        assert not [f for f in found if f[2] == f"{here}:{managed_line}"]
        assert not [f for f in found if f[0] == "socket"
                    and f[1] == "{}:{}".format(*engine_conn._transport.get_extra_info("sockname"))]
    finally:
        postfork.unregister(managed_pool)
        postfork.unregister(engine)
        conn.terminate()
        pool.terminate()
        managed_pool.terminate()
        outcome(lambda: loop.run_until_complete(engine.dispose()))
