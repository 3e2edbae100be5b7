"""gunicorn ``--preload`` with an ASGI worker (``uvicorn_worker.UvicornWorker``), end to end.

The app (``tests/_asgi_app.py``) builds a ``redis.asyncio`` client at import, in the master,
and uses it there once with ``asyncio.run``. gunicorn's ``post_fork`` runs before the worker
has an event loop; the client must then work on the loop the worker creates afterwards. Each
request round-trips its number through redis and names the ``CLIENT ID`` the server gave its
connection.
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

import pytest

from _servers import BIN, Server, free_port, identities, wrong_answers, with_db

pytest.importorskip("uvicorn_worker")
redis = pytest.importorskip("redis")

TESTS = Path(__file__).resolve().parent
DB = 12  # a Redis database of its own: nothing another test flushes
WORKERS = 4


def _gunicorn(servers: List[Server], tmp_path: Path, redis_url: str, *, unmanaged: bool) -> Server:
    port = free_port()
    argv = [str(BIN / "gunicorn"), "-k", "uvicorn_worker.UvicornWorker", "--preload",
            "-w", str(WORKERS), "-c", "python:postfork.integrations.gunicorn",
            "-b", f"127.0.0.1:{port}", "--no-control-socket", "--graceful-timeout", "5",
            "_asgi_app:application"]
    env = {"APP_REDIS_URL": with_db(redis_url, DB), "PYTHONPATH": str(TESTS),
           "POSTFORK_TEST_PREFIX": f"postfork-test:{uuid.uuid4().hex[:12]}",
           "POSTFORK_TEST_UNMANAGED": "1" if unmanaged else "0"}
    server = Server(argv, tmp_path / f"gunicorn-{port}.log", env=env, port=port, cwd=TESTS)
    servers.append(server)
    server.wait_http()
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
    """Whether the Redis server still lists connection ``client_id``."""
    with redis.Redis.from_url(redis_url) as r:
        return any(int(c["id"]) == client_id for c in r.client_list())


def test_unmanaged_async_client_fails_on_the_workers_loop(servers, tmp_path, redis_url) -> None:
    """The hazard: the worker's first request takes the master's pooled connection, bound to
    the master's closed event loop, and fails."""
    server = _gunicorn(servers, tmp_path, redis_url, unmanaged=True)
    master = server.get("/master")
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda n: _fetch(server, f"/?n={n}"), range(200)))
    failed = [body for status, body in replies if status != 200]
    assert failed, server.describe()
    assert all("Event loop is closed" in f["error"] or "different loop" in f["error"]
               for f in failed), failed
    workers = {body["pid"] for _, body in replies}
    assert len(failed) <= len(workers)  # once per worker: redis-py then drops that connection
    line = next(i for i, text in enumerate((TESTS / "_asgi_app.py").read_text().splitlines(), 1)
                if text.startswith("cache = redis.asyncio.Redis.from_url("))
    assert re.search(rf"\[WARNING\] postfork guard: redis\S* built at _asgi_app\.py:{line} in pid "
                     rf"{master['pid']} \(the master\)", server.log), server.describe()
    print(f"ASGI, unmanaged: {len(failed)} of 200 requests failed ({Counter(f['error'] for f in failed)})")
    assert _listed(redis_url, master["redis"])


def test_four_workers_each_on_their_own_loop_and_connections(servers, tmp_path, redis_url) -> None:
    server = _gunicorn(servers, tmp_path, redis_url, unmanaged=False)
    master = server.get("/master")

    responses = server.hammer(WORKERS * 500, threads=8)  # raises on any non-200 answer

    workers = Counter(r["pid"] for r in responses)
    assert len(workers) == WORKERS and master["pid"] not in workers, workers
    assert wrong_answers(responses) == []
    seen = identities(responses, "redis")
    every = [i for ids in seen.values() for i in ids]
    assert len(every) == len(set(every)), f"workers share a connection: {seen}"
    assert master["redis"] not in every
    assert all(r["resets"] == 1 for r in responses)
    log = server.log
    summaries = re.findall(r"\[(\d+)\] \[INFO\] postfork: reset 2 clients in [\d.]+ ms "
                           r"\(pid (\d+)\), 0 failed$", log, re.M)
    assert sorted(int(pid) for _, pid in summaries) == sorted(workers), server.describe()
    assert "ForkSafetyWarning" not in log and "postfork guard:" not in log
    # the master's connection, which its closed loop can no longer use, was left alone
    assert _listed(redis_url, master["redis"])
