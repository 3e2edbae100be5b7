"""One request = one round trip on every backend, each reporting who answered.

``probe(n)`` asks each backend for the identity of the connection it came in on (PostgreSQL
``pg_backend_pid()``, MariaDB ``CONNECTION_ID()``, Redis ``CLIENT ID``) together with ``n``, so
that an answer meant for another process (a crossed reply) shows as a wrong number.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict

from django.core.cache import caches
from django.db import connections
from django.http import HttpRequest, HttpResponse


def _sql(alias: str, identity: str, n: int) -> Dict[str, Any]:
    with connections[alias].cursor() as cursor:
        cursor.execute(f"SELECT {identity}, %s", [n])
        who, answer = cursor.fetchone()
    return {"id": int(who), "answer": int(answer)}


def _cache(alias: str, n: int) -> Dict[str, Any]:
    cache = caches[alias]
    key = f"n:{os.getpid()}:{n}"
    cache.set(key, n, 60)
    answer = cache.get(key)
    if alias == "djredis":
        from django_redis import get_redis_connection

        who = get_redis_connection(alias).client_id()
    else:
        who = cache._cache.get_client(write=True).client_id()
    return {"id": int(who), "answer": answer}


BACKENDS = {
    "postgres": lambda n: _sql("default", "pg_backend_pid()", n),
    "pooled": lambda n: _sql("pooled", "pg_backend_pid()", n),
    "mariadb": lambda n: _sql("mariadb", "CONNECTION_ID()", n),
    "redis": lambda n: _cache("default", n),
    "django_redis": lambda n: _cache("djredis", n),
}


def probe(n: int) -> Dict[str, Any]:
    """Every backend's answer; a backend that failed reports its error instead (the hazard
    runs count them)."""
    clients: Dict[str, Any] = {}
    for name, ask in BACKENDS.items():
        try:
            clients[name] = ask(n)
        except Exception as exc:  # noqa: BLE001 - reported, counted by the test
            clients[name] = {"id": None, "answer": None, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"pid": os.getpid(), "n": n, "clients": clients}


def whoami(request: HttpRequest) -> HttpResponse:
    return HttpResponse(json.dumps(probe(int(request.GET["n"]))), content_type="application/json")
