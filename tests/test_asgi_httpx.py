"""gunicorn ``--preload`` with uvicorn's worker class, a Starlette app, an ``httpx.AsyncClient``
and a ``redis.asyncio`` client built at import, end to end.

The app (``tests/_asgi_httpx_app.py``) builds both clients in the master and uses them there
once under ``asyncio.run``. gunicorn's ``post_fork`` (``-c python:postfork.integrations.gunicorn``)
runs before the uvicorn worker creates its event loop; both clients must then work on the loop
each worker makes. Every answer names the connection it used, as the peers see it (the HTTP
peer: the client's port; Redis: the ``CLIENT ID``), and round-trips the request's number
through both, so a crossed reply is a wrong answer.
"""

from __future__ import annotations

import http.client
import json
import re
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Tuple
from urllib.parse import urlparse, urlunparse

import pytest

from _http_peer import Peer
from _servers import BIN, Server, free_port, identities, wrong_answers

pytest.importorskip("uvicorn_worker")
pytest.importorskip("starlette")
pytest.importorskip("httpx")
redis = pytest.importorskip("redis")

TESTS = Path(__file__).resolve().parent
DB = 13  # a Redis database of this test's own: nothing another test flushes
WORKERS = 4


def _gunicorn(servers: List[Server], tmp_path: Path, redis_url: str, peer: Peer, *,
              unmanaged: bool) -> Server:
    port = free_port()
    argv = [str(BIN / "gunicorn"), "-k", "uvicorn_worker.UvicornWorker", "--preload",
            "-w", str(WORKERS), "-c", "python:postfork.integrations.gunicorn",
            "-b", f"127.0.0.1:{port}", "--no-control-socket", "--graceful-timeout", "5",
            "_asgi_httpx_app:app"]
    env = {"APP_REDIS_URL": urlunparse(urlparse(redis_url)._replace(path=f"/{DB}")),
           "APP_PEER_URL": peer.url, "PYTHONPATH": str(TESTS),
           "POSTFORK_TEST_PREFIX": f"postfork-test:{uuid.uuid4().hex[:12]}",
           "POSTFORK_TEST_UNMANAGED": "1" if unmanaged else "0"}
    server = Server(argv, tmp_path / f"gunicorn-{port}.log", env=env, port=port, cwd=TESTS)
    servers.append(server)
    server.wait_http(timeout=30)
    return server


def _fetch(server: Server, path: str) -> Tuple[int, Dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _listed(redis_url: str, client_id: int) -> bool:
    with redis.Redis.from_url(redis_url) as r:
        return any(int(c["id"]) == client_id for c in r.client_list())


def _line(text: str) -> int:
    return next(i for i, line in enumerate((TESTS / "_asgi_httpx_app.py").read_text().splitlines(), 1)
                if line.startswith(text))


def test_unmanaged_clients_fail_on_the_workers_loop(servers, tmp_path, redis_url) -> None:
    """The hazard: each worker's first requests take the master's pooled connections, bound
    to the master's closed event loop, and fail; the HTTP one after writing on the master's
    connection."""
    with Peer() as peer:
        server = _gunicorn(servers, tmp_path, redis_url, peer, unmanaged=True)
        master = server.get("/master")
        with ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda n: _fetch(server, f"/?n={n}"), range(200)))
        failed = [body for status, body in replies if status != 200]
        assert failed, server.describe()
        assert all("Event loop is closed" in f["error"] or "different" in f["error"]
                   for f in failed), failed
        # the master's HTTP connection carried a worker's request before the worker failed
        assert len(peer.connection(master["http"]).requests) > 1
        for client, text in (("httpx", "http = httpx.AsyncClient("),
                             ("redis", "cache = redis.asyncio.Redis.from_url(")):
            assert re.search(rf"\[WARNING\] postfork guard: {client}\S* built at "
                             rf"_asgi_httpx_app\.py:{_line(text)} in pid {master['pid']} "
                             rf"\(the master\)", server.log), server.describe()
        print(f"ASGI + httpx, unmanaged: {len(failed)} of 200 requests failed "
              f"({Counter(f['error'] for f in failed)})")


def test_four_workers_1000_requests_each_on_their_own_loop_and_connections(
        servers, tmp_path, redis_url) -> None:
    with Peer() as peer:
        server = _gunicorn(servers, tmp_path, redis_url, peer, unmanaged=False)
        master = server.get("/master")

        responses = server.hammer(1000, threads=8)  # raises on any non-200 answer

        workers = Counter(r["pid"] for r in responses)
        assert len(workers) == WORKERS and master["pid"] not in workers, workers
        assert wrong_answers(responses) == []
        for client in ("http", "redis"):
            seen = identities(responses, client)
            every = [i for ids in seen.values() for i in ids]
            assert len(every) == len(set(every)), f"{client}: workers share a connection: {seen}"
            assert master[client] not in every, f"{client}: a worker used the master's"
        assert all(r["resets"] == 1 for r in responses)
        # two clients and the app's after_fork callback
        summaries = re.findall(r"\[INFO\] postfork: reset 3 clients in [\d.]+ ms \(pid (\d+)\), "
                               r"0 failed$", server.log, re.M)
        assert sorted(int(pid) for pid in summaries) == sorted(workers), server.describe()
        assert "ForkSafetyWarning" not in server.log and "postfork guard:" not in server.log
        # the master's connections were left alone: no worker's byte, no close, still listed
        parent = peer.connection(master["http"])
        assert parent.requests == ["/startup"] and not parent.closed_by_client
        assert parent.error is None
        assert _listed(redis_url, master["redis"])
        print(f"ASGI + httpx: 1000 requests over {dict(workers)}, 0 errors, 0 wrong answers")
