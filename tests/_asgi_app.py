"""The ASGI app of tests/test_asgi.py, for gunicorn ``--preload`` with uvicorn's worker class.

A ``redis.asyncio`` client built at import, in gunicorn's master, and used there once
(``asyncio.run``: a start-up check, as apps do) before any worker exists: its connection is
bound to an event loop that is closed by the time a worker runs its own. Each request
round-trips its number through redis on the worker's loop and names the ``CLIENT ID`` the
server gives that connection. ``POSTFORK_TEST_UNMANAGED=1`` leaves the client unmanaged.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Callable, Dict, List
from urllib.parse import parse_qs

import redis.asyncio

import postfork

PREFIX = os.environ["POSTFORK_TEST_PREFIX"]

cache = redis.asyncio.Redis.from_url(os.environ["APP_REDIS_URL"], socket_timeout=2)
if os.environ.get("POSTFORK_TEST_UNMANAGED") != "1":
    postfork.register(cache)

MASTER: Dict[str, Any] = {"pid": os.getpid(), "redis": asyncio.run(cache.client_id())}

_resets: List[int] = []


@postfork.after_fork
def _count_reset() -> None:
    _resets.append(os.getpid())


async def _round_trip(n: int) -> Dict[str, Any]:
    key = f"{PREFIX}:{os.getpid()}:{n}"
    await cache.set(key, n, ex=60)
    answer = await cache.get(key)
    return {"answer": int(answer) if answer is not None else None,
            "id": await cache.client_id()}


async def application(scope: Dict[str, Any], receive: Callable[[], Any],
                      send: Callable[[Dict[str, Any]], Any]) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/master":
        status, body = 200, MASTER
    else:
        n = int(parse_qs(scope["query_string"].decode())["n"][0])
        pid = os.getpid()
        try:
            body = {"pid": pid, "n": n, "clients": {"redis": await _round_trip(n)},
                    "resets": _resets.count(pid)}
            status = 200
        except Exception as exc:  # noqa: BLE001 - the hazard, measured and named
            status, body = 500, {"pid": pid, "n": n, "error": f"{type(exc).__name__}: {exc}"}
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
