"""aiohttp ``ClientSession`` against a real aiohttp server the test starts, forking for real.

A session belongs to the event loop it was built in. Unmanaged, in a worker's own loop it
fails ("Event loop is closed" when the master used it under ``asyncio.run``; "Timeout context
manager should be used inside a task" when the master's loop runs in a thread), and a worker
that closes it unregisters the master's socket from the epoll instance both processes share:
the master's next request then times out although the server answered it. postfork cannot make
the session usable in the worker without rewriting a dozen private loop-bound attributes, so
the child's copy is *retired*: use raises ``postfork.RetiredError`` (also an
``aiohttp.ClientConnectionError``) naming ``postfork.local``; ``close()``, the garbage collector
and the worker's exit touch nothing of the master's. ``postfork.local`` gives each worker a
session of its own, on its own loop.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Coroutine, Dict, Iterator, List, Set, Tuple

import pytest

import postfork
from _http_peer import PausedChild, Peer, eventually, guard_findings, in_children, sockets_to
from _loop_thread import LoopThread, in_own_loop
from postfork.testing import run_in_child

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

pytestmark = pytest.mark.usefixtures("clean_registry")


class AioServer:
    """An aiohttp server in a thread of its own: each answer names the client's port (the
    connection) and echoes the path; ``requests`` lists the paths each connection carried."""

    def __init__(self) -> None:
        self.requests: Dict[int, List[str]] = {}
        self._loop = LoopThread("aiohttp-server")
        self.port = self._loop.run(self._start())
        self.url = f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: Any) -> Any:
        port = request.transport.get_extra_info("peername")[1]
        self.requests.setdefault(port, []).append(request.path_qs)
        return web.json_response({"port": port, "path": request.path_qs})

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    def stop(self) -> None:
        self._loop.run(self._runner.cleanup())
        self._loop.stop()


@pytest.fixture
def server() -> Iterator[AioServer]:
    s = AioServer()
    yield s
    s.stop()


async def _session(timeout: float = 5) -> Any:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))


async def aget(session: Any, url: str) -> Dict[str, Any]:
    async with session.get(url) as response:
        response.raise_for_status()
        return await response.json()  # type: ignore[no-any-return]


def _error_of(coro: Coroutine[Any, Any, Any]) -> str:
    try:
        in_own_loop(coro)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


# -- the hazard, unmanaged ---------------------------------------------------------------------


def test_unmanaged_session_fails_in_the_worker_loop(server: AioServer,
                                                    master_loop: LoopThread) -> None:
    in_thread = master_loop.run(_session())
    master_loop.run(aget(in_thread, server.url + "/startup"))
    under_run = asyncio.run(_startup_check(server))  # built and used under asyncio.run
    errors = run_in_child(lambda: [_error_of(aget(in_thread, server.url + "/child")),
                                   _error_of(aget(under_run, server.url + "/child"))],
                          reset=False, hooks=False)
    assert errors == ["RuntimeError: Timeout context manager should be used inside a task",
                      "RuntimeError: Event loop is closed"]
    master_loop.run(in_thread.close())


async def _startup_check(server: AioServer) -> Any:
    session = await _session()
    await aget(session, server.url + "/startup")
    return session


def test_unmanaged_close_in_a_worker_silences_the_master(server: AioServer,
                                                         master_loop: LoopThread) -> None:
    session = master_loop.run(_session(timeout=1))
    port = master_loop.run(aget(session, server.url + "/before"))["port"]
    run_in_child(lambda: _error_of(session.close()), reset=False, hooks=False)
    with pytest.raises(asyncio.TimeoutError):  # the master's loop no longer sees its socket
        master_loop.run(aget(session, server.url + "/after"))
    # although the server answered
    assert eventually(lambda: server.requests[port] == ["/before", "/after"])
    master_loop.run(session.close())


# -- registered: retired -----------------------------------------------------------------------


def test_registered_session_is_retired_in_the_child_and_the_master_keeps_its_connection(
        server: AioServer, master_loop: LoopThread) -> None:
    session = postfork.register(master_loop.run(_session()))
    port = master_loop.run(aget(session, server.url + "/before"))["port"]

    def child() -> Dict[str, Any]:
        try:
            in_own_loop(aget(session, server.url + "/child"))
        except postfork.RetiredError as exc:
            error: Any = (str(exc), isinstance(exc, aiohttp.ClientConnectionError))
        else:
            error = None
        in_own_loop(session.close())  # harmless: nothing of the master's is touched
        report = postfork.reset_all()
        return {"error": error, "retired": [e.name for e in report.retired]}

    children = in_children(child)
    for seen in children:
        message, is_aiohttp_error = seen["error"]
        assert is_aiohttp_error and "postfork.local(lambda: aiohttp.ClientSession())" in message
        assert len(seen["retired"]) == 1
    assert master_loop.run(aget(session, server.url + "/after"))["port"] == port
    assert server.requests[port] == ["/before", "/after"]
    assert list(server.requests) == [port]  # no child connected anywhere
    master_loop.run(session.close())


def test_local_gives_each_worker_its_own_session(server: AioServer,
                                                master_loop: LoopThread) -> None:
    http = postfork.local(lambda: aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)))
    port = master_loop.run(aget(http, server.url + "/master"))["port"]

    async def two() -> Set[int]:
        ports = {(await aget(http, server.url + f"/child/{os.getpid()}/{n}"))["port"]
                 for n in range(2)}
        await http.close()
        return ports

    children = in_children(lambda: in_own_loop(two()))
    assert all(len(ps) == 1 and port not in ps for ps in children)  # its own, kept alive
    assert master_loop.run(aget(http, server.url + "/master-after"))["port"] == port
    assert server.requests[port] == ["/master", "/master-after"]  # nothing from a child
    assert sum(len(paths) for paths in server.requests.values()) == 2 + 40
    master_loop.run(http.close())


def test_reset_sends_nothing(master_loop: LoopThread) -> None:
    with Peer() as peer:  # the counting peer: bytes per connection
        session = postfork.register(master_loop.run(_session()))
        port = master_loop.run(aget(session, peer.url + "/one"))["port"]
        before = peer.connection(port).bytes

        def child() -> Tuple[int, str]:
            still_open = sockets_to(peer.port)  # retired: a dead socket under the number
            error = _error_of(aget(session, peer.url + "/child"))
            in_own_loop(session.close())
            return still_open, error

        paused = PausedChild(child)
        paused.wait_reset()
        still_open, error = paused.resume()
        assert still_open == 0 and "RetiredError" in error
        assert len(peer.connections) == 1 and peer.connection(port).bytes == before
        assert not peer.connection(port).closed_by_client
        master_loop.run(session.close())


def test_guard_names_an_unmanaged_session_with_its_line(tmp_path: Path, server: AioServer) -> None:
    found = guard_findings(tmp_path, f"""
        import asyncio, aiohttp, postfork
        postfork.guard("warn")
        async def build():
            unmanaged = aiohttp.ClientSession()
            managed = postfork.register(aiohttp.ClientSession())
            for s in (unmanaged, managed):
                async with s.get("{server.url}/x") as r:
                    await r.read()
            return unmanaged, managed
        sessions = asyncio.run(build())
    """)
    assert found == [("aiohttp.ClientSession", "app.py:5")]
