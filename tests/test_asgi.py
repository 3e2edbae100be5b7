"""gunicorn ``--preload`` with an ASGI worker (``uvicorn_worker.UvicornWorker``), end to end.

The app (``tests/_asgi_app.py``) builds a ``redis.asyncio`` client at import, in the master,
and uses it there once with ``asyncio.run``. gunicorn's ``post_fork`` runs before the worker
has an event loop; the client must then work on the loop the worker creates afterwards. Each
request round-trips its number through redis and names the ``CLIENT ID`` the server gave its
connection.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import List

import pytest

from _asgi import WORKERS, fetch_200, line_of, redis_lists, uvicorn_gunicorn
from _servers import Server, identities, wrong_answers, with_db

pytest.importorskip("uvicorn_worker")
pytest.importorskip("redis")

DB = 12  # a Redis database of its own: nothing another test flushes


def _gunicorn(servers: List[Server], tmp_path: Path, redis_url: str, *, unmanaged: bool) -> Server:
    return uvicorn_gunicorn(servers, tmp_path, "_asgi_app:application",
                            {"APP_REDIS_URL": with_db(redis_url, DB)}, unmanaged=unmanaged)


def test_unmanaged_async_client_fails_on_the_workers_loop(servers, tmp_path, redis_url) -> None:
    """The hazard: the worker's first request takes the master's pooled connection, bound to
    the master's closed event loop, and fails."""
    server = _gunicorn(servers, tmp_path, redis_url, unmanaged=True)
    master = server.get("/master")
    replies, failed = fetch_200(server)
    assert failed, server.describe()
    assert all("Event loop is closed" in f["error"] or "different loop" in f["error"]
               for f in failed), failed
    workers = {body["pid"] for _, body in replies}
    assert len(failed) <= len(workers)  # once per worker: redis-py then drops that connection
    line = line_of("_asgi_app.py", "cache = redis.asyncio.Redis.from_url(")
    assert re.search(rf"\[WARNING\] postfork guard: redis\S* built at _asgi_app\.py:{line} in pid "
                     rf"{master['pid']} \(the master\)", server.log), server.describe()
    print(f"ASGI, unmanaged: {len(failed)} of 200 requests failed ({Counter(f['error'] for f in failed)})")
    assert redis_lists(redis_url, master["redis"])


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
    assert redis_lists(redis_url, master["redis"])
