"""requests ``Session`` against a real keep-alive HTTP and HTTPS server, forking for real.

Unmanaged, a child's ``Session.get`` goes out on the parent's pooled connection (urllib3's pool
under the session's ``HTTPAdapter``); with TLS the parent's next request then fails with
``BAD_RECORD_MAC``. Registered, every mounted adapter's pools are reset: each child's requests
arrive on connections of its own and the parent's connection never sees a byte from a child.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

import postfork
from _http_peer import (PausedChild, Peer, connections_per_child, eventually, guard_findings,
                        in_children, sockets_to)
from postfork.testing import run_in_child

requests = pytest.importorskip("requests")

pytestmark = pytest.mark.usefixtures("clean_registry")


def get(session: Any, url: str) -> Dict[str, Any]:
    response = session.get(url, timeout=10)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


def _session(peer: Peer) -> Any:
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would win over verify=
    if peer.ca:
        session.verify = peer.ca
    return session


def test_unmanaged_child_writes_on_the_parent_connection() -> None:
    with Peer() as peer:
        session = _session(peer)
        parent_port = get(session, peer.url + "/before")["port"]
        seen = run_in_child(lambda: get(session, peer.url + "/child"), reset=False, hooks=False)
        assert seen["port"] == parent_port
        assert peer.connection(parent_port).requests == ["/before", "/child"]
        session.close()


def test_unmanaged_tls_child_breaks_the_parent_session(tls_folder: Path) -> None:
    with Peer(tls=tls_folder) as peer:
        session = _session(peer)
        parent_port = get(session, peer.url + "/before")["port"]
        run_in_child(lambda: get(session, peer.url + "/child"), reset=False, hooks=False)
        with pytest.raises(requests.exceptions.SSLError, match="BAD_RECORD_MAC"):
            session.get(peer.url + "/after", timeout=10)
        assert "BAD_RECORD_MAC" in eventually(lambda: peer.connection(parent_port).error)
        session.close()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_registered_session_every_adapter_each_child_its_own(tls: bool, tls_folder: Path) -> None:
    with Peer(tls=tls_folder if tls else None) as peer:
        session = _session(peer)
        # an adapter the application mounted for this host, besides the two defaults
        session.mount(peer.url + "/mounted", requests.adapters.HTTPAdapter(pool_maxsize=2))
        postfork.register(session)
        default_port = get(session, peer.url + "/before")["port"]
        mounted_port = get(session, peer.url + "/mounted/before")["port"]
        assert default_port != mounted_port  # one connection per adapter's pool

        def child() -> Tuple[int, List[int]]:
            return os.getpid(), [get(session, peer.url + f"/{where}child/{os.getpid()}")["port"]
                                 for where in ("", "mounted/", "", "mounted/")]

        children = in_children(child)
        assert get(session, peer.url + "/after")["port"] == default_port
        assert get(session, peer.url + "/mounted/after")["port"] == mounted_port

        # keep-alive on each adapter, never on the parent's connections
        assert all(len(set(ports)) == 2 and not {default_port, mounted_port} & set(ports)
                   for _, ports in children)
        parents = [peer.connection(default_port), peer.connection(mounted_port)]
        for parent, path in zip(parents, ("/", "/mounted/")):
            assert parent.requests == [f"{path}before", f"{path}after"]
            assert not parent.closed_by_client and parent.error is None
        # as the server counts them: two new connections per child (one per adapter), none shared
        assert connections_per_child(peer, parents) == {pid: 2 for pid, _ in children}
        session.close()


def test_reset_sends_nothing_until_the_first_request(tls_folder: Path) -> None:
    with Peer(tls=tls_folder) as peer:
        session = postfork.register(_session(peer))
        parent_port = get(session, peer.url + "/one")["port"]
        before = peer.connection(parent_port).bytes
        child = PausedChild(lambda: (sockets_to(peer.port), get(session, peer.url + "/first")["port"]))
        child.wait_reset()
        assert len(peer.connections) == 1 and peer.connection(parent_port).bytes == before
        still_open, port = child.resume()
        assert still_open == 0 and port != parent_port
        assert len(peer.connections) == 2
        session.close()


def test_an_unknown_mounted_adapter_is_reported_after_the_others_were_reset() -> None:
    class Custom(requests.adapters.BaseAdapter):  # no postfork adapter for this type
        def send(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

        def close(self) -> None:
            pass

    with Peer() as peer:
        session = _session(peer)
        session.mount("custom://", Custom())
        postfork.register(session)
        parent_port = get(session, peer.url + "/before")["port"]

        def child() -> Dict[str, Any]:
            report = postfork.reset_all()
            return {"failed": [str(e.error) for e in report.failed],
                    "port": get(session, peer.url + "/child")["port"]}

        seen = run_in_child(child)
        assert len(seen["failed"]) == 1 and "'custom://'" in seen["failed"][0]
        assert "postfork.adapter(" in seen["failed"][0]
        assert seen["port"] != parent_port  # the HTTPAdapters were reset all the same
        session.close()


def test_guard_names_an_unmanaged_session_with_its_line(tmp_path: Path) -> None:
    with Peer() as peer:
        found = guard_findings(tmp_path, f"""
            import postfork, requests
            postfork.guard("warn")
            unmanaged = requests.Session()
            managed = postfork.register(requests.Session())
            managed.mount("http://127.0.0.1", requests.adapters.HTTPAdapter())
            for session in (unmanaged, managed):
                session.get("{peer.url}/x", timeout=10)
        """)
    assert found == [("requests.Session", "app.py:4")]
