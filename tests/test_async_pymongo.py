"""PyMongo's ``AsyncMongoClient`` (and Motor's ``AsyncIOMotorClient``) against MockupDB, in
real forked children, each running an event loop of its own.

As in tests/test_pymongo.py, every check is made on the server's side: MockupDB records, for
each tagged ping, the TCP port it came from and its session id (``lsid``). A hookless fork
(``hooks=False``) is uWSGI's: no at-fork hook runs in the child, neither PyMongo's nor Motor's
nor postfork's, only the ``reset_all()`` an integration calls.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import sys
import threading
import warnings
from typing import Any, Dict, Iterator, List, Tuple

import pytest

import postfork
from _guard_findings import findings_in_a_child
from postfork.testing import ChildError, fork_child, run_in_child

pymongo = pytest.importorskip("pymongo")
AsyncMongoClient = getattr(pymongo, "AsyncMongoClient", None)
if AsyncMongoClient is None:
    pytest.skip("PyMongo < 4.9 has no AsyncMongoClient", allow_module_level=True)

from test_pymongo import Seen, mongo, quiet  # noqa: E402,F401 - MockupDB recording pings (a fixture)

FORK_WARNING = "opened before fork"

pytestmark = pytest.mark.usefixtures("clean_registry")


@pytest.fixture
def client(mongo: Tuple[Any, Seen], loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    server, _ = mongo
    c = AsyncMongoClient(server.uri, serverSelectionTimeoutMS=10_000, socketTimeoutMS=10_000)
    try:
        yield c
    finally:
        loop.run_until_complete(c.close())


async def aping(client: Any, tag: str) -> None:
    await client.admin.command({"ping": 1, "tag": tag})


def ping_here(loop: asyncio.AbstractEventLoop, client: Any, tag: str) -> None:
    loop.run_until_complete(asyncio.wait_for(aping(client, tag), 20))


def hookless(func: Any, *args: Any, baseline: int) -> Any:
    """A fork without hooks (uWSGI's), once MockupDB's threads have settled (``quiet``)."""
    quiet(baseline)
    return fork_child(func, *args, reset=False, hooks=False)


def child_ping(client: Any, tag: str, reset: bool = False, timeout: float = 20) -> Dict[str, Any]:
    """In the child: (reset_all as an integration would,) then a ping on a new loop."""
    report = postfork.reset_all() if reset else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            asyncio.run(asyncio.wait_for(aping(client, tag), timeout))
            error = None
        except Exception as exc:  # noqa: BLE001 - the unmanaged child's failure is measured
            error = f"{type(exc).__name__}: {exc}"
    return {
        "error": error,
        "reset": [e.name for e in report.entries] if report else [],
        "warnings": [str(w.message) for w in caught if FORK_WARNING in str(w.message)],
    }


# -- 1. the hazard: a client the master used is bound to the master's loop ------------------


@pytest.mark.parametrize("hooks", [True, False], ids=["os.fork", "hookless"])
def test_hazard_an_unmanaged_client_cannot_serve_a_child(
        mongo: Tuple[Any, Seen], loop: asyncio.AbstractEventLoop, client: Any,
        hooks: bool) -> None:
    _, seen = mongo
    ping_here(loop, client, "parent")
    baseline = threading.active_count()
    child = (fork_child(child_ping, client, "child", reset=False) if hooks
             else hookless(child_ping, client, "child", baseline=baseline))
    result = child.result(30)
    assert "Cannot use AsyncMongoClient in different event loop" in result["error"]
    assert not seen.pings["child"]


def test_hazard_a_lock_held_by_a_parent_task_at_fork(
        mongo: Tuple[Any, Seen], loop: asyncio.AbstractEventLoop, client: Any) -> None:
    """A task of the master holds the client's asyncio lock when the master forks (its loop
    is idle, the task suspended). PyMongo's own at-fork hook does not renew it."""
    _, seen = mongo
    ping_here(loop, client, "parent")
    loop.run_until_complete(client._lock.acquire())  # held by a task that is suspended
    try:
        result = run_in_child(lambda: (setattr(client, "_loop", None),  # past the loop check
                                       child_ping(client, "child", timeout=2))[1], timeout=30)
        assert result["error"] == "TimeoutError: ", result  # waits for the lock forever
        assert not seen.pings["child"]
        postfork.register(client)
        result = run_in_child(child_ping, client, "managed-child", True, timeout=30)
        assert result["error"] is None, result
        assert seen.ports("managed-child").isdisjoint(seen.ports("parent"))
    finally:
        client._lock.release()


# -- 2. registered: each child its own connection and session, on its own loop --------------


@pytest.mark.parametrize("hooks", [True, False], ids=["os.fork", "hookless"])
def test_each_child_pings_from_its_own_port_on_its_own_loop(
        mongo: Tuple[Any, Seen], loop: asyncio.AbstractEventLoop, client: Any,
        hooks: bool) -> None:
    _, seen = mongo
    ping_here(loop, client, "parent")
    postfork.register(client)
    baseline = threading.active_count()
    if hooks:
        children = [fork_child(child_ping, client, f"child-{i}", True, reset=False)
                    for i in range(3)]
        results = [c.result(30) for c in children]
    else:  # one at a time: see quiet()
        results = [hookless(child_ping, client, f"child-{i}", True, baseline=baseline).result(30)
                   for i in range(3)]
    ping_here(loop, client, "parent-after")

    parent_ports = seen.ports("parent")
    for i, result in enumerate(results):
        assert result["error"] is None, result
        assert "pymongo.AsyncMongoClient" in result["reset"]
        assert result["warnings"] == []  # the client belongs to the child now
        ports = seen.ports(f"child-{i}")
        assert ports and ports.isdisjoint(parent_ports)
        assert seen.lsids(f"child-{i}").isdisjoint(seen.lsids("parent"))
        for j in range(i):
            assert ports.isdisjoint(seen.ports(f"child-{j}"))
    assert seen.ports("parent-after") <= parent_ports  # the master kept its connection
    assert seen.lsids("parent-after") == seen.lsids("parent")
    assert seen.end_sessions == []  # no child said goodbye for the master


def test_inherited_sockets_are_retired_in_the_child_only(
        mongo: Tuple[Any, Seen], loop: asyncio.AbstractEventLoop, client: Any) -> None:
    _, seen = mongo
    ping_here(loop, client, "parent")
    postfork.register(client)
    server = next(iter(client._topology._servers.values()))
    inherited = list(server.pool.conns)
    fds = [conn.conn.sock.fileno() for conn in inherited]
    assert fds

    def child() -> List[Tuple[bool, str]]:
        postfork.reset_all()
        gc.collect()  # the old topology is kept: nothing of it is finalized here
        return [(conn.closed, socket.socket(fileno=os.dup(fd)).family.name)
                for conn, fd in zip(inherited, fds)]

    assert hookless(child, baseline=threading.active_count()).result(30) == \
        [(True, "AF_UNIX")] * len(inherited)
    assert all(not conn.closed for conn in inherited)
    ping_here(loop, client, "parent-after")
    assert seen.ports("parent-after") <= seen.ports("parent")
    assert seen.end_sessions == []


# -- 3. Motor -------------------------------------------------------------------------------

try:
    import motor.motor_asyncio as motor_asyncio
except ImportError:  # Motor is optional (deprecated for AsyncMongoClient)
    motor_asyncio = None


@pytest.fixture
def motor_client(mongo: Tuple[Any, Seen], loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    if motor_asyncio is None:
        pytest.skip("Motor is not installed")
    server, _ = mongo
    asyncio.set_event_loop(loop)  # Motor takes the current loop at its first use
    c = motor_asyncio.AsyncIOMotorClient(server.uri, serverSelectionTimeoutMS=10_000,
                                         socketTimeoutMS=10_000)
    try:
        yield c
    finally:
        c.close()
        asyncio.set_event_loop(None)


@pytest.mark.parametrize("hooks", [True, False], ids=["os.fork", "hookless"])
def test_motor_hazard_then_registered(mongo: Tuple[Any, Seen], loop: asyncio.AbstractEventLoop,
                                      motor_client: Any, hooks: bool) -> None:
    """Unmanaged, a Motor client the master used makes its futures on the master's loop (and,
    hookless, submits to a thread pool whose threads are the master's): the child's ping
    fails or never finishes. Registered, it pings from a port of its own."""
    _, seen = mongo
    ping_here(loop, motor_client, "parent")
    baseline = threading.active_count()

    def fork(func: Any, *args: Any) -> Any:
        return (fork_child(func, *args, reset=False) if hooks
                else hookless(func, *args, baseline=baseline))

    try:
        unmanaged = fork(child_ping, motor_client, "unmanaged", False, 5).result(25)
        assert "attached to a different loop" in unmanaged["error"], unmanaged
    except ChildError as exc:  # hookless: the work waits for a thread that does not exist
        assert "did not finish" in str(exc)
    if not hooks:
        # Past the loop: the work goes to Motor's thread pool, whose threads are the master's.
        # Motor renews the pool from an at-fork hook, which a hookless fork skips.
        def past_the_loop() -> Dict[str, Any]:
            motor_client._io_loop = None
            return child_ping(motor_client, "unmanaged", False, 3)

        stuck = fork(past_the_loop).result(25)
        assert stuck["error"] == "TimeoutError: ", stuck
        assert not seen.pings["unmanaged"]  # (with hooks, Motor's thread may still send it)
    postfork.register(motor_client)
    result = fork(child_ping, motor_client, "child", True).result(30)
    assert result["error"] is None, result
    assert "motor.AsyncIOMotorClient" in result["reset"]
    assert seen.ports("child").isdisjoint(seen.ports("parent"))
    assert seen.lsids("child").isdisjoint(seen.lsids("parent"))
    ping_here(loop, motor_client, "parent-after")
    assert seen.ports("parent-after") <= seen.ports("parent")


# -- 4. the guard ----------------------------------------------------------------------------


def test_guard_names_an_unmanaged_async_client_and_its_line(
        mongo: Tuple[Any, Seen], loop: asyncio.AbstractEventLoop, restore_guard: None) -> None:
    server, _ = mongo
    postfork.guard("warn")
    unmanaged = AsyncMongoClient(server.uri, serverSelectionTimeoutMS=10_000)
    line = sys._getframe().f_lineno - 1
    managed = postfork.register(AsyncMongoClient(server.uri, serverSelectionTimeoutMS=10_000))
    managed_line = sys._getframe().f_lineno - 1
    ping_here(loop, unmanaged, "u")
    ping_here(loop, managed, "m")

    here = os.path.relpath(__file__)
    try:
        found = findings_in_a_child()
    finally:
        loop.run_until_complete(unmanaged.close())
        loop.run_until_complete(managed.close())
    assert ("client", "pymongo.AsyncMongoClient", f"{here}:{line}") in found, found
    assert not [f for f in found if f[2] == f"{here}:{managed_line}"]
