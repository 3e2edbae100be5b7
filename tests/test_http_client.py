"""``http.client`` against a real keep-alive HTTP and HTTPS server, forking for real.

Unmanaged, a child shares the parent's connection: it reads the response to the parent's
request. Registered, each child's requests arrive on a connection of its own, and the parent's
connection (the same one, as the server sees it) never receives a byte from a child, nor a
TLS close_notify.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
from pathlib import Path
from typing import Any, Dict, List

import pytest

import postfork
from _guard_script import client_findings
from _http_peer import PausedChild, Peer, sockets_to
from postfork.testing import fork_child, run_in_child

pytestmark = pytest.mark.usefixtures("clean_registry")


def get(conn: http.client.HTTPConnection, path: str) -> Dict[str, Any]:
    conn.request("GET", path)
    return json.loads(conn.getresponse().read())  # type: ignore[no-any-return]


def test_unmanaged_child_reads_the_parent_response() -> None:
    with Peer() as peer:
        conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=10)
        parent_port = get(conn, "/hello")["port"]
        conn.request("GET", "/parent")  # in flight at fork: the reply is the parent's

        def child() -> Dict[str, Any]:
            return json.loads(conn.getresponse().read())  # type: ignore[no-any-return]

        stolen = run_in_child(child, reset=False, hooks=False)  # no postfork in the child
        assert stolen == {"path": "/parent", "port": parent_port, "n": 2}  # the parent's reply
        conn.close()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_registered_connection_each_child_its_own_parent_untouched(tls: bool, tmp_path: Path) -> None:
    with Peer(tls=tmp_path if tls else None) as peer:
        if tls:
            context = ssl.create_default_context(cafile=peer.ca)
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", peer.port, timeout=10, context=context)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=10)
        postfork.register(conn)
        parent_port = get(conn, "/before")["port"]
        conn.request("GET", "/in-flight")  # the parent's response is pending at every fork

        def child() -> Dict[str, Any]:
            seen = [get(conn, f"/child/{os.getpid()}/{n}") for n in range(2)]
            return {"ports": {s["port"] for s in seen}}

        children: List[Dict[str, Any]] = []
        for _ in range(4):
            batch = [fork_child(child) for _ in range(5)]
            children += [c.result(timeout=30) for c in batch]
        assert json.loads(conn.getresponse().read())["port"] == parent_port  # still the parent's
        assert get(conn, "/after")["port"] == parent_port  # the same connection, still alive

        ports = [next(iter(c["ports"])) for c in children]
        assert all(len(c["ports"]) == 1 for c in children)  # keep-alive within a child
        assert len(set(ports)) == 20 and parent_port not in ports
        parent = peer.connection(parent_port)
        assert parent.requests == ["/before", "/in-flight", "/after"]  # nothing from a child
        assert not parent.closed_by_client  # no close, no close_notify reached the server
        conn.close()


def test_reset_sends_nothing_until_the_first_request() -> None:
    with Peer() as peer:
        conn = postfork.register(http.client.HTTPConnection("127.0.0.1", peer.port, timeout=10))
        parent_port = get(conn, "/one")["port"]
        before = peer.connection(parent_port).bytes

        # (read the real server from the parent: the child's copy of it is not the server)
        child = PausedChild(lambda: (sockets_to(peer.port), get(conn, "/first")["port"]))
        child.wait_reset()
        assert len(peer.connections) == 1  # no connection opened by the reset
        assert peer.connection(parent_port).bytes == before  # and no byte on the parent's
        still_open, port = child.resume()
        assert still_open == 0 and port != parent_port
        conn.close()


def test_guard_names_an_unmanaged_connection_with_its_line(tmp_path: Path) -> None:
    code = """
        import http.client, os, postfork
        postfork.guard("warn")
        conn = http.client.HTTPConnection("127.0.0.1", 9)  # unmanaged
    """
    done = client_findings(tmp_path, code)
    assert done.stdout.strip() == str([("client", "http.HTTPConnection", "app.py:4")]), done.stderr
