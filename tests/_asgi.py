"""What tests/test_asgi.py and tests/test_asgi_httpx.py share: gunicorn ``--preload`` with
uvicorn's worker class serving a test app, and the questions they ask of it and of Redis."""

from __future__ import annotations

import http.client
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

from _servers import BIN, Server, free_port

TESTS = Path(__file__).resolve().parent
WORKERS = 4


def uvicorn_gunicorn(servers: List[Server], tmp_path: Path, app: str, env: Mapping[str, str], *,
                     unmanaged: bool, timeout: float = 20.0) -> Server:
    """``WORKERS`` uvicorn workers of ``app`` (``module:attribute`` in tests/) under gunicorn
    with postfork's config, started, listening and added to ``servers``; ``unmanaged``: the app
    registers nothing with postfork."""
    port = free_port()
    argv = [str(BIN / "gunicorn"), "-k", "uvicorn_worker.UvicornWorker", "--preload",
            "-w", str(WORKERS), "-c", "python:postfork.integrations.gunicorn",
            "-b", f"127.0.0.1:{port}", "--no-control-socket", "--graceful-timeout", "5", app]
    full_env = dict(env, PYTHONPATH=str(TESTS),
                    POSTFORK_TEST_PREFIX=f"postfork-test:{uuid.uuid4().hex[:12]}",
                    POSTFORK_TEST_UNMANAGED="1" if unmanaged else "0")
    server = Server(argv, tmp_path / f"gunicorn-{port}.log", env=full_env, port=port, cwd=TESTS)
    servers.append(server)
    server.wait_http(timeout=timeout)
    return server


def fetch(server: Server, path: str) -> Tuple[int, Dict[str, Any]]:
    """``GET path``: (status, JSON body), whatever the status."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def fetch_200(server: Server) -> Tuple[List[Tuple[int, Dict[str, Any]]], List[Dict[str, Any]]]:
    """``GET /?n=0`` to ``/?n=199`` from 6 threads: (every reply, the bodies of the failed)."""
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda n: fetch(server, f"/?n={n}"), range(200)))
    return replies, [body for status, body in replies if status != 200]


def redis_lists(redis_url: str, client_id: int) -> bool:
    """Whether the Redis server still lists connection ``client_id``."""
    import redis

    with redis.Redis.from_url(redis_url) as r:
        return any(int(c["id"]) == client_id for c in r.client_list())


def line_of(app_file: str, text: str) -> int:
    """The number of the first line of tests/``app_file`` that starts with ``text``."""
    return next(i for i, line in enumerate((TESTS / app_file).read_text().splitlines(), 1)
                if line.startswith(text))
