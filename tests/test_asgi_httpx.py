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

import re
from collections import Counter
from pathlib import Path
from typing import List

import pytest

from _asgi import WORKERS, fetch_200, line_of, redis_lists, uvicorn_gunicorn
from _http_peer import Peer
from _servers import Server, identities, wrong_answers, with_db

pytest.importorskip("uvicorn_worker")
pytest.importorskip("starlette")
pytest.importorskip("httpx")
pytest.importorskip("redis")

DB = 13  # a Redis database of this test's own: nothing another test flushes


def _gunicorn(servers: List[Server], tmp_path: Path, redis_url: str, peer: Peer, *,
              unmanaged: bool) -> Server:
    return uvicorn_gunicorn(servers, tmp_path, "_asgi_httpx_app:app",
                            {"APP_REDIS_URL": with_db(redis_url, DB), "APP_PEER_URL": peer.url},
                            unmanaged=unmanaged, timeout=30)


def test_unmanaged_clients_fail_on_the_workers_loop(servers, tmp_path, redis_url) -> None:
    """The hazard: each worker's first requests take the master's pooled connections, bound
    to the master's closed event loop, and fail; the HTTP one after writing on the master's
    connection."""
    with Peer() as peer:
        server = _gunicorn(servers, tmp_path, redis_url, peer, unmanaged=True)
        master = server.get("/master")
        _, failed = fetch_200(server)
        assert failed, server.describe()
        assert all("Event loop is closed" in f["error"] or "different" in f["error"]
                   for f in failed), failed
        # the master's HTTP connection carried a worker's request before the worker failed
        assert len(peer.connection(master["http"]).requests) > 1
        for client, text in (("httpx", "http = httpx.AsyncClient("),
                             ("redis", "cache = redis.asyncio.Redis.from_url(")):
            line = line_of("_asgi_httpx_app.py", text)
            assert re.search(rf"\[WARNING\] postfork guard: {client}\S* built at "
                             rf"_asgi_httpx_app\.py:{line} in pid {master['pid']} "
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
        assert redis_lists(redis_url, master["redis"])
        print(f"ASGI + httpx: 1000 requests over {dict(workers)}, 0 errors, 0 wrong answers")
