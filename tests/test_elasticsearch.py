"""elasticsearch-py against a small Elasticsearch peer on 127.0.0.1 (HTTP and HTTPS), forking for
real.

The peer (``tests/_http_peer.py``) answers the endpoints these tests use as Elasticsearch 9 does
(``GET /`` with the version and the ``X-Elastic-Product: Elasticsearch`` header the client's
product check wants, document index and get), and records per client connection (its port as
the server sees it) every request, the bytes, and whether the client closed it.

Unmanaged, a worker's requests go down the master's keep-alive connection (deterministic for a
worker that runs alone). Measured with 4 workers each reading its own document 50 times over an
inherited client (``test_unmanaged_workers_together``, three runs): 10 to 11 requests went down
the master's connection, every worker hit 1 or 2 timeouts (another process had read its answer),
and up to 2 workers per run got another worker's document as their own, silently.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

import pytest

import postfork
from _guard_script import client_findings
from _http_peer import Peer, Request
from _locks import held_by_a_parent_thread
from postfork.testing import fork_child, run_in_child

elasticsearch = pytest.importorskip("elasticsearch")

pytestmark = pytest.mark.usefixtures("clean_registry")

INFO = {"name": "postfork-peer", "cluster_name": "postfork", "cluster_uuid": "postfork",
        "version": {"number": "9.0.0", "build_flavor": "default", "lucene_version": "10.0.0",
                    "minimum_wire_compatibility_version": "8.18.0",
                    "minimum_index_compatibility_version": "8.0.0"},
        "tagline": "You Know, for Search"}


class Node:
    """The Elasticsearch endpoints the tests use, in memory."""

    def __init__(self) -> None:
        self.docs: Dict[Tuple[str, str], Any] = {}
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Tuple[int, Dict[str, str], bytes]:
        headers = {"X-Elastic-Product": "Elasticsearch",
                   "Content-Type": "application/vnd.elasticsearch+json;compatible-with=9"}
        path = urlsplit(request.path).path.strip("/").split("/")
        if request.method in ("GET", "HEAD") and path == [""]:
            return 200, headers, json.dumps(INFO).encode()
        if len(path) == 3 and path[1] == "_doc":
            index, _, doc_id = path
            meta = {"_index": index, "_id": doc_id, "_version": 1, "_seq_no": 0, "_primary_term": 1}
            if request.method in ("PUT", "POST"):
                with self.lock:
                    self.docs[index, doc_id] = json.loads(request.body)
                return 201, headers, json.dumps({**meta, "result": "created", "_shards": {
                    "total": 1, "successful": 1, "failed": 0}}).encode()
            with self.lock:
                doc = self.docs.get((index, doc_id))
            if doc is None:
                return 404, headers, json.dumps({"_index": index, "_id": doc_id, "found": False}).encode()
            return 200, headers, json.dumps({**meta, "found": True, "_source": doc}).encode()
        return 404, headers, b'{"error": "not an endpoint of this peer"}'


@pytest.fixture(params=[False, True], ids=["http", "https"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Peer]:
    with Peer(tls=tmp_path if request.param else None, handle=Node()) as peer:
        yield peer


def client(peer: Peer) -> Any:
    return elasticsearch.Elasticsearch(peer.url, ca_certs=peer.ca, request_timeout=5, max_retries=0)


def port_of(peer: Peer, path: str) -> int:
    found = [c.port for c in peer.connections if path in c.requests]
    assert len(found) == 1, found
    return found[0]


# -- the hazard ------------------------------------------------------------------------------

def test_unmanaged_worker_sends_on_the_masters_connection(node: Peer) -> None:
    es = client(node)
    es.index(index="master", id="1", document={"who": "master"})
    master = port_of(node, "/master/_doc/1")

    def worker() -> Any:
        es.index(index="worker", id=str(os.getpid()), document={"who": os.getpid()})
        return es.get(index="worker", id=str(os.getpid()))["_source"]

    child = fork_child(worker)
    assert child.result(30) == {"who": child.pid}
    assert f"/worker/_doc/{child.pid}" in node.connection(master).requests  # the master's
    es.close()


def test_unmanaged_workers_together(tmp_path: Path) -> None:
    """Four workers reading their own document over one inherited client at the same time:
    they write on the master's connection, so each may read another's answer."""
    with Peer(handle=Node()) as peer:
        es = client(peer)
        for n in range(4):
            es.index(index="doc", id=str(n), document={"n": n})
        master = port_of(peer, "/doc/_doc/0")

        def worker(n: int) -> Dict[str, int]:
            seen = {"right": 0, "wrong": 0, "error": 0}
            for _ in range(50):
                try:
                    got = es.get(index="doc", id=str(n))["_source"]["n"]
                    seen["right" if got == n else "wrong"] += 1
                except Exception:
                    seen["error"] += 1  # a timeout: another process read this worker's answer
            return seen

        results = [c.result(60) for c in [fork_child(worker, n) for n in range(4)]]
        on_master = [p for p in peer.connection(master).requests if p.startswith("/doc/_doc/")]
        es.close()
    # Workers' requests went down the master's connection. Not necessarily every worker's: a
    # worker that finds another's answer waiting unread on the inherited socket takes it for a
    # dropped connection (urllib3's is_connection_dropped) and opens one of its own. Whatever
    # else happened (answers read by the wrong process, timeouts), not every worker got all its
    # own answers on a connection of its own.
    assert {f"/doc/_doc/{n}" for n in range(4)} & set(on_master)
    assert sum(r["wrong"] + r["error"] for r in results) + len(on_master) > 4


# -- the fix ---------------------------------------------------------------------------------

def test_registered_client_rebuilds_the_node_pool_in_each_worker(node: Peer) -> None:
    es = postfork.register(client(node))
    es.index(index="master", id="before", document={"n": 0})
    master = port_of(node, "/master/_doc/before")
    pool = es.transport.node_pool
    masters_nodes = [id(n) for n in pool.all()]

    def worker() -> Dict[str, Any]:
        pid = os.getpid()
        nodes = [id(n) for n in es.transport.node_pool.all()]
        for n in range(3):
            es.index(index="worker", id=f"{pid}-{n}", document={"pid": pid, "n": n})
        quiet = es.options(request_timeout=5)  # a copy shares the transport, rebuilt
        docs = [quiet.get(index="worker", id=f"{pid}-{n}")["_source"] for n in range(3)]
        return {"pid": pid, "docs": docs, "nodes": nodes}

    with held_by_a_parent_thread(pool._all_nodes_write_lock, es.transport._sniffing_lock):
        before = node.connection(master)
        requests_before, bytes_before = list(before.requests), before.bytes
        results = [c.result(60) for c in [fork_child(worker) for _ in range(4)]]

    for r in results:
        assert r["docs"] == [{"pid": r["pid"], "n": n} for n in range(3)]
        assert r["nodes"] and set(r["nodes"]).isdisjoint(masters_nodes)  # rebuilt
        mine = [c for c in node.connections if any(f"/worker/_doc/{r['pid']}-" in p for p in c.requests)]
        assert len(mine) == 1 and mine[0].port != master  # one keep-alive connection of its own
        assert all(f"/worker/_doc/{r['pid']}-" in p for p in mine[0].requests)
    after = node.connection(master)
    assert (after.requests, after.bytes) == (requests_before, bytes_before)  # nothing from a worker
    assert not after.closed_by_client  # no close, no TLS close_notify reached the server
    es.index(index="master", id="after", document={"n": 1})
    assert port_of(node, "/master/_doc/after") == master  # the same connection, still answering
    es.close()


def test_reset_sends_nothing_until_the_first_request() -> None:
    with Peer(handle=Node()) as peer:
        es = postfork.register(client(peer))
        es.info()
        master = peer.connections[0]
        before = master.bytes

        def worker() -> int:
            return len(peer.connections)

        assert run_in_child(worker) == 1
        assert master.bytes == before and not master.closed_by_client
        es.close()


# -- the guard -------------------------------------------------------------------------------

def test_guard_names_an_unmanaged_client_with_its_line(tmp_path: Path) -> None:
    code = """
        import os, postfork
        from elasticsearch import Elasticsearch
        postfork.guard("warn")
        es = Elasticsearch("http://127.0.0.1:9")
        copy = es.options(request_timeout=3)
        managed = postfork.register(Elasticsearch("http://127.0.0.1:9"))
        managed_copy = managed.options(request_timeout=3)
    """
    done = client_findings(tmp_path, code)
    # one finding: the unmanaged client (its options() copy is part of it), none for the managed
    assert done.stdout.strip() == str([("client", "elasticsearch.Elasticsearch", "app.py:5")]), done.stderr
