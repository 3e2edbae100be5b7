"""httpx ``Client`` and ``AsyncClient`` against a real keep-alive HTTP/HTTPS server, forking
for real.

Unmanaged, a child's ``Client.get`` goes out on the parent's pooled connection. An
``AsyncClient`` the master used on its event loop fails in a worker's own loop, after writing
the request on the master's connection: "Event loop is closed" (the master used it under
``asyncio.run``), or "... is bound to a different event loop" (the master's loop runs in a
thread), and then the master's keep-alive connection is gone (the server reset it).
Registered, each child's pool starts empty and each child connects on its own; an
``AsyncClient`` works on the worker's own loop; the parent keeps its connection.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

import postfork
from _http_peer import (PausedChild, Peer, connections_per_child, eventually, guard_findings,
                        in_children, sockets_to)
from _loop_thread import LoopThread, in_own_loop
from postfork.testing import run_in_child

httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.usefixtures("clean_registry")


def _client(peer: Peer, asynchronous: bool = False) -> Any:
    verify: Any = ssl.create_default_context(cafile=peer.ca) if peer.ca else True
    cls = httpx.AsyncClient if asynchronous else httpx.Client
    return cls(verify=verify, timeout=10, trust_env=False)


def get(client: Any, url: str) -> Dict[str, Any]:
    response = client.get(url)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


async def aget(client: Any, url: str) -> Dict[str, Any]:
    response = await client.get(url)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


# -- the hazard, unmanaged ---------------------------------------------------------------------


def test_unmanaged_sync_child_writes_on_the_parent_connection() -> None:
    with Peer() as peer:
        client = _client(peer)
        parent_port = get(client, peer.url + "/before")["port"]
        seen = run_in_child(lambda: get(client, peer.url + "/child"), reset=False, hooks=False)
        assert seen["port"] == parent_port
        assert peer.connection(parent_port).requests == ["/before", "/child"]
        client.close()


def test_unmanaged_async_client_fails_in_the_worker_loop_and_costs_the_master_its_connection(
        master_loop: LoopThread) -> None:
    with Peer() as peer:
        client = _client(peer, asynchronous=True)
        parent_port = master_loop.run(aget(client, peer.url + "/before"))["port"]

        def child() -> str:
            try:
                in_own_loop(aget(client, peer.url + "/child"))
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"
            return "no error"

        error = run_in_child(child, reset=False, hooks=False)
        assert "bound to a different event loop" in error
        # ...after the child's request went out on the master's connection
        assert eventually(lambda: peer.connection(parent_port).requests == ["/before", "/child"])
        # the server's answer to the child lands, unread, on the master's socket
        assert eventually(lambda: peer.connection(parent_port).answered == 2)
        # httpcore finds the master's idle connection readable (the child's answer): it drops
        # it and connects again
        assert master_loop.run(aget(client, peer.url + "/after"))["port"] != parent_port
        master_loop.run(client.aclose())


def test_unmanaged_async_client_used_under_asyncio_run_fails_in_the_worker() -> None:
    with Peer() as peer:
        client = _client(peer, asynchronous=True)
        asyncio.run(aget(client, peer.url + "/startup"))  # the master's start-up check

        def child() -> str:
            try:
                in_own_loop(aget(client, peer.url + "/child"))
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"
            return "no error"

        assert run_in_child(child, reset=False, hooks=False) == "RuntimeError: Event loop is closed"


# -- registered --------------------------------------------------------------------------------


def _check_parent_untouched(peer: Peer, parent_port: int,
                            children: List[Tuple[int, List[int]]], paths: List[str]) -> None:
    # keep-alive within a child, never on the parent's connection
    assert all(len(set(ports)) == 1 and parent_port not in ports for _, ports in children)
    parent = peer.connection(parent_port)
    assert parent.requests == paths  # nothing from a child
    assert not parent.closed_by_client and parent.error is None  # no close_notify, no bad MAC
    # as the server counts them: one new connection per child, none shared
    assert connections_per_child(peer, [parent]) == {pid: 1 for pid, _ in children}


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_registered_client_each_child_its_own_pool(tls: bool, tls_folder: Path) -> None:
    with Peer(tls=tls_folder if tls else None) as peer:
        client = postfork.register(_client(peer))
        parent_port = get(client, peer.url + "/before")["port"]

        def child() -> Tuple[int, List[int]]:
            return os.getpid(), [get(client, peer.url + f"/child/{os.getpid()}/{n}")["port"]
                                 for n in range(2)]

        children = in_children(child)
        assert get(client, peer.url + "/after")["port"] == parent_port
        _check_parent_untouched(peer, parent_port, children, ["/before", "/after"])
        client.close()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_registered_async_client_works_in_each_worker_loop(tls: bool, tls_folder: Path,
                                                          master_loop: LoopThread) -> None:
    with Peer(tls=tls_folder if tls else None) as peer:
        client = postfork.register(_client(peer, asynchronous=True))
        parent_port = master_loop.run(aget(client, peer.url + "/before"))["port"]

        async def two_requests() -> Tuple[int, List[int]]:
            return os.getpid(), [(await aget(client, peer.url + f"/child/{os.getpid()}/{n}"))["port"]
                                 for n in range(2)]

        children = in_children(lambda: in_own_loop(two_requests()))
        assert master_loop.run(aget(client, peer.url + "/after"))["port"] == parent_port
        _check_parent_untouched(peer, parent_port, children, ["/before", "/after"])
        master_loop.run(client.aclose())


def test_registered_async_client_built_under_asyncio_run_in_the_master() -> None:
    with Peer() as peer:
        client = postfork.register(_client(peer, asynchronous=True))
        asyncio.run(aget(client, peer.url + "/startup"))
        seen = run_in_child(lambda: in_own_loop(aget(client, peer.url + "/child")))
        assert seen["path"] == "/child"


@pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])
def test_reset_sends_nothing_until_the_first_request(asynchronous: bool, tls_folder: Path,
                                                     master_loop: LoopThread) -> None:
    with Peer(tls=tls_folder) as peer:
        client = postfork.register(_client(peer, asynchronous))
        if asynchronous:
            parent_port = master_loop.run(aget(client, peer.url + "/one"))["port"]
            first: Any = lambda: in_own_loop(aget(client, peer.url + "/first"))["port"]
        else:
            parent_port = get(client, peer.url + "/one")["port"]
            first = lambda: get(client, peer.url + "/first")["port"]
        before = peer.connection(parent_port).bytes
        child = PausedChild(lambda: (sockets_to(peer.port), first()))
        child.wait_reset()
        assert len(peer.connections) == 1 and peer.connection(parent_port).bytes == before
        still_open, port = child.resume()
        assert still_open == 0 and port != parent_port  # closed (sync) or retired (async)
        assert len(peer.connections) == 2
        assert peer.connection(parent_port).requests == ["/one"]


# -- the guard ---------------------------------------------------------------------------------


def test_guard_names_unmanaged_clients_with_their_line(tmp_path: Path) -> None:
    with Peer() as peer:
        found = guard_findings(tmp_path, f"""
            import asyncio, httpx, postfork
            postfork.guard("warn")
            unmanaged = httpx.Client()
            aclient = httpx.AsyncClient()
            managed = postfork.register(httpx.Client())
            for client in (unmanaged, managed):
                client.get("{peer.url}/x")
            asyncio.run(aclient.get("{peer.url}/y"))
        """)
    assert sorted(found) == [("httpx.AsyncClient", "app.py:5"), ("httpx.Client", "app.py:4")]
