"""urllib3 against a real keep-alive HTTP and HTTPS server, forking for real.

Unmanaged, a child takes the parent's idle keep-alive connection from the pool: the server
receives the child's request on the parent's connection, and with TLS the two processes then
write with the same keys and sequence numbers, so the parent's next request breaks the session
(``DECRYPTION_FAILED_OR_BAD_RECORD_MAC``, on both sides). Registered, each child's requests
arrive on a connection of its own, and the parent's connection (the same one, as the server
sees it) never receives a byte from a child, nor a TLS close_notify.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

import postfork
from _http_peer import (PausedChild, Peer, connections_per_child, eventually, guard_findings,
                        in_children, sockets_to)
from postfork.testing import run_in_child

urllib3 = pytest.importorskip("urllib3")

pytestmark = pytest.mark.usefixtures("clean_registry")


def get(client: Any, url: str) -> Dict[str, Any]:
    response = client.request("GET", url)
    assert response.status == 200
    return response.json()  # type: ignore[no-any-return]


def _build(kind: str, peer: Peer) -> Any:
    if kind == "PoolManager":
        return urllib3.PoolManager(ca_certs=peer.ca, retries=False)
    cls = urllib3.HTTPSConnectionPool if peer.ca else urllib3.HTTPConnectionPool
    kwargs = {"ca_certs": peer.ca} if peer.ca else {}
    return cls("127.0.0.1", peer.port, retries=False, **kwargs)


def _url(client: Any, peer: Peer, path: str) -> str:
    return peer.url + path if isinstance(client, urllib3.PoolManager) else path


# -- the hazard, unmanaged ---------------------------------------------------------------------


def test_unmanaged_child_writes_on_the_parent_connection() -> None:
    with Peer() as peer:
        pm = urllib3.PoolManager(retries=False)
        parent_port = get(pm, peer.url + "/before")["port"]
        seen = run_in_child(lambda: get(pm, peer.url + "/child"), reset=False, hooks=False)
        assert seen["port"] == parent_port  # the child used the parent's connection
        assert peer.connection(parent_port).requests == ["/before", "/child"]
        pm.clear()


def test_unmanaged_tls_child_breaks_the_parent_session(tls_folder: Path) -> None:
    with Peer(tls=tls_folder) as peer:
        pm = urllib3.PoolManager(ca_certs=peer.ca, retries=False)
        parent_port = get(pm, peer.url + "/before")["port"]
        run_in_child(lambda: get(pm, peer.url + "/child"), reset=False, hooks=False)
        with pytest.raises(urllib3.exceptions.SSLError, match="BAD_RECORD_MAC"):
            pm.request("GET", peer.url + "/after")
        parent = peer.connection(parent_port)
        assert parent.requests == ["/before", "/child"]
        assert "BAD_RECORD_MAC" in eventually(lambda: parent.error)  # the server saw it too
        pm.clear()


# -- registered --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["PoolManager", "pool"])
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_registered_each_child_its_own_connection_parent_untouched(kind: str, tls: bool,
                                                                    tls_folder: Path) -> None:
    with Peer(tls=tls_folder if tls else None) as peer:
        client = postfork.register(_build(kind, peer))
        parent_port = get(client, _url(client, peer, "/before"))["port"]

        def child() -> Tuple[int, List[int]]:
            return os.getpid(), [get(client, _url(client, peer, f"/child/{os.getpid()}/{n}"))["port"]
                                 for n in range(2)]

        children = in_children(child)
        assert get(client, _url(client, peer, "/after"))["port"] == parent_port  # same connection

        # keep-alive within a child, never on the parent's connection
        assert all(len(set(ports)) == 1 and parent_port not in ports for _, ports in children)
        parent = peer.connection(parent_port)
        # as the server counts them: one new connection per child, none shared
        assert connections_per_child(peer, [parent]) == {pid: 1 for pid, _ in children}
        assert parent.requests == ["/before", "/after"]  # nothing from a child
        assert not parent.closed_by_client  # no close, no close_notify reached the server
        assert parent.error is None  # no BAD_RECORD_MAC
        client.close() if kind == "pool" else client.clear()


def test_reset_sends_nothing_until_the_first_request(tls_folder: Path) -> None:
    with Peer(tls=tls_folder) as peer:
        pm = postfork.register(urllib3.PoolManager(ca_certs=peer.ca, retries=False))
        parent_port = get(pm, peer.url + "/one")["port"]
        before = peer.connection(parent_port).bytes

        child = PausedChild(lambda: (sockets_to(peer.port), get(pm, peer.url + "/first")["port"]))
        child.wait_reset()
        time.sleep(0.1)  # anything the reset had sent would have reached the server by now
        assert len(peer.connections) == 1  # the reset opened nothing
        assert peer.connection(parent_port).bytes == before  # and sent nothing
        still_open, port = child.resume()
        assert still_open == 0  # the parent's socket is not open in the child any more
        assert len(peer.connections) == 2 and port != parent_port  # the first request connects
        assert peer.connection(parent_port).requests == ["/one"]
        pm.clear()


def test_reset_is_safe_while_a_parent_thread_holds_the_pool_locks() -> None:
    with Peer() as peer:
        pm = postfork.register(urllib3.PoolManager(retries=False, timeout=5))
        get(pm, peer.url + "/warm")
        queue = pm.connection_from_url(peer.url).pool
        held, done = threading.Event(), threading.Event()

        def hold() -> None:
            with pm.pools.lock, queue.mutex:  # a thread inside the pool at fork
                held.set()
                done.wait(30)

        thread = threading.Thread(target=hold)
        thread.start()
        try:
            assert held.wait(10)
            seen = run_in_child(lambda: get(pm, peer.url + "/child"), timeout=20)
            assert seen["path"] == "/child"
        finally:
            done.set()
            thread.join(10)
        pm.clear()


def test_a_blocking_pool_keeps_its_size_when_a_connection_was_checked_out() -> None:
    with Peer() as peer:
        pool = postfork.register(urllib3.HTTPConnectionPool("127.0.0.1", peer.port, maxsize=1,
                                                            block=True, retries=False))
        conn = pool._get_conn()  # checked out by the parent at fork: the parent's

        def child() -> int:
            return int(get(pool, "/child")["port"])

        port = run_in_child(child, timeout=20)  # a blocking pool would wait forever without its slot
        assert port != 0
        pool._put_conn(conn)
        pool.close()


# -- the guard ---------------------------------------------------------------------------------


def test_guard_names_unmanaged_pools_with_their_line_and_not_managed_ones(tmp_path: Path) -> None:
    with Peer() as peer:
        found = guard_findings(tmp_path, f"""
            import postfork, urllib3
            postfork.guard("warn")
            unmanaged = urllib3.PoolManager()
            pool = urllib3.HTTPConnectionPool("127.0.0.1", {peer.port})
            managed = postfork.register(urllib3.PoolManager())
            for client in (unmanaged, managed):
                client.request("GET", "{peer.url}/x")
            pool.request("GET", "/y")
        """)
    assert sorted(found) == [("urllib3.HTTPConnectionPool", "app.py:5"),
                             ("urllib3.PoolManager", "app.py:4")]
