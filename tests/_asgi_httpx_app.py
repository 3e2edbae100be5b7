"""The Starlette app of tests/test_asgi_httpx.py, for gunicorn ``--preload`` with uvicorn's
worker class.

Built at import, in gunicorn's master: an ``httpx.AsyncClient`` talking to the test's HTTP peer
and a ``redis.asyncio`` client, both used there once under ``asyncio.run`` (a start-up check,
as apps do) before any worker exists. Each request round-trips its number through both, on the
worker's own event loop: the peer echoes the path (``/echo?n=N``) and names the client's port
(the connection it came on), redis stores and returns the number and names the connection's
``CLIENT ID``. ``POSTFORK_TEST_UNMANAGED=1`` leaves both clients unmanaged.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Dict, List
from urllib.parse import parse_qs, urlparse

import httpx
import redis.asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import postfork

PREFIX = os.environ["POSTFORK_TEST_PREFIX"]

http = httpx.AsyncClient(base_url=os.environ["APP_PEER_URL"], timeout=5, trust_env=False)
cache = redis.asyncio.Redis.from_url(os.environ["APP_REDIS_URL"], socket_timeout=2)
if os.environ.get("POSTFORK_TEST_UNMANAGED") != "1":
    postfork.register(http)
    postfork.register(cache)


async def _startup_check() -> Dict[str, Any]:
    peer = (await http.get("/startup")).json()
    return {"pid": os.getpid(), "http": peer["port"], "redis": await cache.client_id()}


MASTER = asyncio.run(_startup_check())

_resets: List[int] = []


@postfork.after_fork
def _count_reset() -> None:
    _resets.append(os.getpid())


async def _through_http(n: int) -> Dict[str, Any]:
    answer = (await http.get("/echo", params={"n": n})).json()
    echoed = parse_qs(urlparse(answer["path"]).query)["n"][0]
    return {"answer": int(echoed), "id": answer["port"]}


async def _through_redis(n: int) -> Dict[str, Any]:
    key = f"{PREFIX}:{os.getpid()}:{n}"
    await cache.set(key, n, ex=60)
    answer = await cache.get(key)
    return {"answer": int(answer) if answer is not None else None, "id": await cache.client_id()}


async def master(request: Request) -> JSONResponse:
    return JSONResponse(MASTER)


async def index(request: Request) -> JSONResponse:
    n = int(request.query_params["n"])
    pid = os.getpid()
    try:
        clients = {"http": await _through_http(n), "redis": await _through_redis(n)}
    except Exception as exc:  # noqa: BLE001 - the hazard, measured and named
        return JSONResponse({"pid": pid, "n": n, "error": f"{type(exc).__name__}: {exc}"},
                            status_code=500)
    return JSONResponse({"pid": pid, "n": n, "clients": clients, "resets": _resets.count(pid)})


app = Starlette(routes=[Route("/master", master), Route("/", index)])
