"""nats-py (asyncio) against a real nats-server, forking for real.

The master runs its event loop in a thread, as a sync application using nats-py does, with a
subscription that counts every message. Each test starts its own nats-server on free
127.0.0.1 ports with the monitoring endpoint on: ``/connz`` is the server's own list of
connections (open and closed: client id, port, name, messages in and out, subscriptions).
Children run their own event loop (``asyncio.run``), as a worker does.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
import urllib.request
import uuid
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

import postfork
from _loop_thread import LoopThread
from _polling import wait_until
from _servers import Server, free_port
from postfork.testing import fork_child, run_in_child

nats = pytest.importorskip("nats")

HERE = os.path.relpath(__file__)
N = 200  # messages published while children reset, connect, publish and exit


class NatsServer:
    def __init__(self, server: Server, port: int, monitor: int) -> None:
        self.server = server
        self.url = f"nats://127.0.0.1:{port}"
        self.monitor = monitor

    def connz(self, state: str = "open") -> List[Dict[str, Any]]:
        url = f"http://127.0.0.1:{self.monitor}/connz?subs=1&state={state}&limit=1000"
        with urllib.request.urlopen(url, timeout=5) as r:
            return list(json.load(r).get("connections") or [])

    def named(self, name: str, state: str = "open") -> List[Dict[str, Any]]:
        return [c for c in self.connz(state) if c.get("name") == name]


@pytest.fixture
def natsd(nats_url: str, tmp_path: Path, servers: List[Any]) -> NatsServer:
    """The test's own nats-server (the machine's, at ``nats_url``, has no monitoring port)."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    port, monitor = free_port(), free_port()
    server = Server([binary, "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor)],
                    tmp_path / "nats-server.log", cwd=tmp_path)
    servers.append(server)
    ns = NatsServer(server, port, monitor)

    def up() -> bool:
        try:
            ns.connz()
            return True
        except OSError:
            return False

    server.wait_for(up, 20, "nats-server's monitoring port")
    return ns


class Master:
    """The master's client, connected in the master's loop, with a counting subscription."""

    def __init__(self, loop: LoopThread, url: str, subject: str, name: str) -> None:
        self.loop = loop
        self.subject = subject
        self.received: List[bytes] = []

        async def setup() -> Any:
            nc = await nats.connect(url, name=name, allow_reconnect=False)

            async def count(msg: Any) -> None:
                self.received.append(msg.data)

            await nc.subscribe(subject, cb=count)
            await nc.flush()
            return nc

        self.nc = loop.run(setup())

    def close(self) -> None:
        try:
            self.loop.run(asyncio.wait_for(self.nc.close(), 5), timeout=10)
        except Exception:
            pass


@pytest.fixture
def subject() -> str:
    return f"postfork.test.{uuid.uuid4().hex[:12]}"


def publish_from(loop: LoopThread, url: str, subject: str, count: int, gap: float = 0.0) -> Any:
    """A publisher of its own (another connection), publishing ``count`` messages."""
    async def go() -> None:
        pub = await nats.connect(url, name="publisher")
        for i in range(count):
            await pub.publish(subject, b"pub-%d" % i)
            if gap:
                await asyncio.sleep(gap)
        await pub.flush()
        await pub.close()

    return asyncio.run_coroutine_threadsafe(go(), loop.loop)


# -- the hazards, unmanaged -------------------------------------------------------------------

def test_unmanaged_child_publish_is_lost(natsd: NatsServer, master_loop: LoopThread,
                                         subject: str) -> None:
    """The child's publish lands in the copied buffer of the master's flusher task, a task of
    the master's loop that never runs in the child: flush() times out, nothing is sent."""
    master = Master(master_loop, natsd.url, subject, "master")
    try:
        def child() -> str:
            async def main() -> str:
                await master.nc.publish(subject, b"child")
                try:
                    await asyncio.wait_for(master.nc.flush(timeout=1), 3)
                except Exception as exc:
                    return type(exc).__name__
                return "flushed"

            return asyncio.run(main())

        assert run_in_child(child, timeout=30) == "FlushTimeoutError"
        time.sleep(0.3)
        assert master.received == []
        [conn] = natsd.named("master")
        assert conn["in_msgs"] == 0  # the server never saw the child's message
        assert len(natsd.connz()) == 1  # and the child made no connection of its own
    finally:
        master.close()


def test_unmanaged_child_close_silences_the_masters_subscription(
        natsd: NatsServer, master_loop: LoopThread, subject: str) -> None:
    """A child closing its inherited copy (a worker's cleanup) unregisters the socket from the
    epoll instance it shares with the master's loop: the server goes on sending the master
    every message, the master's loop never reads one, and the client still says connected."""
    master = Master(master_loop, natsd.url, subject, "master")
    try:
        def child() -> str:
            async def main() -> str:
                try:
                    await asyncio.wait_for(master.nc.close(), 5)
                except Exception as exc:
                    return type(exc).__name__
                return "closed"

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return asyncio.run(main())

        run_in_child(child, timeout=30)
        publish_from(master_loop, natsd.url, subject, 50).result(20)
        [conn] = wait_until(lambda: [c for c in natsd.named("master") if c["out_msgs"] == 50])
        assert conn["out_msgs"] == 50  # the server sent them all ...
        time.sleep(0.5)
        assert master.received == []  # ... and the master received none
        assert master.nc.is_connected  # silently
    finally:
        master.close()


# -- managed ----------------------------------------------------------------------------------

def test_registered_children_connect_in_their_own_loop(
        natsd: NatsServer, master_loop: LoopThread, subject: str) -> None:
    master = Master(master_loop, natsd.url, subject, "master")
    postfork.register(master.nc)
    try:
        [before] = natsd.named("master")
        master_cid = master.nc.client_id
        assert before["cid"] == master_cid

        def child(use: bool) -> Tuple[int, Optional[int], List[bytes]]:
            async def main() -> Tuple[int, Optional[int], List[bytes]]:
                nc = master.nc
                mine: List[bytes] = []
                cid = None
                if use:
                    own = f"{subject}.{os.getpid()}"

                    async def collect(msg: Any) -> None:
                        mine.append(msg.data)
                        if msg.reply:
                            await msg.respond(b"pong")

                    await nc.subscribe(own, cb=collect)  # connects, in this loop
                    await nc.publish(own, b"to-myself")
                    await nc.publish(subject, b"child-%d" % os.getpid())
                    reply = await nc.request(own, b"ping", timeout=5)  # its own inbox too
                    mine.append(b"reply:" + reply.data)
                    cid = nc.client_id
                await nc.close()  # a worker's cleanup: its own connection only
                return os.getpid(), cid, mine

            return asyncio.run(main())

        publishing = publish_from(master_loop, natsd.url, subject, N, gap=0.002)
        children = [fork_child(child, use) for use in (True, True, True, False)]
        results = [c.result(timeout=30) for c in children]
        publishing.result(30)

        used = [(pid, cid, mine) for pid, cid, mine in results if cid is not None]
        assert len(used) == 3
        for pid, cid, mine in used:
            assert cid != master_cid
            # its own subscription got its message and its request; the reply came back
            assert mine == [b"to-myself", b"ping", b"reply:pong"], mine
        assert len({cid for _, cid, _ in used}) == 3

        # The master's subscription got every message: the publisher's N and each child's one.
        expected = {b"pub-%d" % i for i in range(N)} | {b"child-%d" % pid for pid, _, _ in used}
        assert wait_until(lambda: len(master.received) >= len(expected), 10)
        time.sleep(0.3)
        assert len(master.received) == len(expected) and set(master.received) == expected

        # The server's side: the master's connection is the same one, still subscribed; each
        # child had a connection of its own, now closed; the unused child opened none.
        [after] = natsd.named("master")
        assert after["cid"] == master_cid and after["port"] == before["port"]
        assert subject in (after.get("subscriptions_list") or [])
        closed = {c["cid"]: c for c in natsd.connz("closed")}
        for pid, cid, _ in used:
            assert cid in closed and closed[cid]["in_msgs"] >= 3, closed.get(cid)
        assert len(closed) == 3 + 1  # the three children and the publisher
        assert master.nc.is_connected and master.nc.client_id == master_cid

        # and it still publishes and receives
        async def roundtrip() -> None:
            await master.nc.publish(subject, b"master-after")
            await master.nc.flush()

        master_loop.run(roundtrip())
        assert wait_until(lambda: master.received[-1:] == [b"master-after"])
    finally:
        postfork.unregister(master.nc)
        master.close()


def test_reset_twice_in_one_process_keeps_the_childs_connection(
        natsd: NatsServer, master_loop: LoopThread, subject: str) -> None:
    master = Master(master_loop, natsd.url, subject, "master")
    postfork.register(master.nc)
    try:
        def child() -> Tuple[Optional[int], Optional[int]]:
            async def main() -> Tuple[Optional[int], Optional[int]]:
                await master.nc.flush()
                first = master.nc.client_id
                postfork.reset_all(force=True)  # a second reset in this process: a no-op here
                await master.nc.flush()
                return first, master.nc.client_id

            return asyncio.run(main())

        first, second = run_in_child(child, timeout=30)
        assert first is not None and first == second != master.nc.client_id
    finally:
        postfork.unregister(master.nc)
        master.close()


# -- the guard --------------------------------------------------------------------------------

def _findings_in_child() -> List[Dict[str, Any]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = postfork.reset_all()
    return [f.as_dict() for f in report.findings]


def test_guard_names_an_unmanaged_client(natsd: NatsServer, master_loop: LoopThread,
                                         restore_guard: None) -> None:
    postfork.guard("warn")
    lines: Dict[str, int] = {}

    async def build() -> Tuple[Any, Any]:
        unmanaged = await nats.connect(natsd.url)
        lines["unmanaged"] = sys._getframe().f_lineno - 1
        managed = postfork.register(await nats.connect(natsd.url))
        lines["managed"] = sys._getframe().f_lineno - 1
        return unmanaged, managed

    unmanaged, managed = master_loop.run(build())
    try:
        findings = run_in_child(_findings_in_child)
    finally:
        postfork.unregister(managed)
        for nc in (unmanaged, managed):
            master_loop.run(nc.close())
    site = f"{HERE}:{lines['unmanaged']}"
    mine = [f for f in findings if f["created_at"] == site]
    assert [f["kind"] for f in mine] == ["client"], findings
    assert mine[0]["subject"] == "nats.Client"
    assert f"pid {os.getpid()} (the master)" in mine[0]["description"]
    # Its socket is named too, by the server it is connected to (asyncio opens it in a task of
    # its own, so its creation site is unknown); the registered client's socket is retired.
    port = natsd.url.rsplit(":", 1)[1]
    # (other tests of this process may have left sockets of their own: only this server's count)
    sockets = [f for f in findings if f["kind"] == "socket" and f["subject"] == f"127.0.0.1:{port}"]
    assert len(sockets) == 1, findings
    assert [f for f in findings if f["created_at"] == f"{HERE}:{lines['managed']}"] == []
