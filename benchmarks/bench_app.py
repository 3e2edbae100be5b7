"""The benchmark app: each request is one redis ``GET`` and one PostgreSQL ``SELECT``.

Built at import time, as a preloaded app builds its clients in the gunicorn master: a
``redis.Redis(single_connection_client=True)`` and a ``psycopg_pool.ConnectionPool``, each
used once in the master, so every worker inherits live connections. How the workers get their
own is the variant under test (``POSTFORK_BENCH_VARIANT``):

- ``postfork``: both clients registered; ``postfork.integrations.gunicorn.post_fork`` resets them.
- ``handwritten``: no postfork at all; the config's own ``post_fork`` calls :func:`build_clients`.
- ``unmanaged``: nothing; the workers share the master's connections (the hazard).

``GET /`` reads a random key ``postfork:bench:k<i>`` whose value the app knows (``str(i)``)
and runs ``SELECT %s::int`` with ``i``: 200 when both answers are right, 409 when redis' reply
is wrong (another process's reply), 422 when PostgreSQL's is, 500 when a client raised. The body is the worker's pid. ``?sleep=S`` sleeps S seconds after the work,
so that concurrent probes land on distinct workers (used to see every worker answer at boot).
"""

from __future__ import annotations

import os
import random
import time
from typing import Any, Callable, Dict, Iterable
from urllib.parse import parse_qs

import psycopg_pool
import redis

__all__ = ["application", "build_clients", "work", "VARIANT"]

VARIANT = os.environ.get("POSTFORK_BENCH_VARIANT", "postfork")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get("POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
NKEYS = 1000
PREFIX = "postfork:bench:k"

r: Any = None
pool: Any = None


def build_clients() -> None:
    """Build this process's clients. The hand-written ``post_fork`` calls it again in each
    worker; the inherited clients are dropped (redis-py and psycopg send no goodbye from a
    process other than the one that connected)."""
    global r, pool
    r = redis.Redis.from_url(REDIS_URL, single_connection_client=True, socket_timeout=5)
    pool = psycopg_pool.ConnectionPool(POSTGRES_DSN, min_size=1, max_size=1, open=True, timeout=10,
                                       kwargs={"autocommit": True})


build_clients()
r.mset({f"{PREFIX}{i}": str(i) for i in range(NKEYS)})
pool.wait(timeout=10)
with pool.connection() as _conn:
    _conn.execute("SELECT 1")

if VARIANT == "postfork":
    import postfork

    postfork.register(r)
    postfork.register(pool)

if os.environ.get("POSTFORK_BENCH_SEED"):
    # The boot benchmark gives both variants of a pair the same seed: gunicorn's master sleeps
    # 0-100 ms (random.random()) after spawning each worker, and those pauses, the same on both
    # sides, then cancel out of the comparison. Workers reseed at fork (the random module's
    # own at-fork hook), so their keys stay random.
    random.seed(int(os.environ["POSTFORK_BENCH_SEED"]))


def work() -> int:
    """One request's work; the HTTP status code that says whether the answers were right."""
    i = random.randrange(NKEYS)
    try:
        value = r.get(f"{PREFIX}{i}")
        with pool.connection() as conn:
            # SELECT 1, with the number the reply must carry as its parameter: a reply that
            # belongs to another process (a shared socket) is then seen as wrong.
            got = conn.execute("SELECT %s::int", (i,)).fetchone()[0]
    except Exception:  # noqa: BLE001 - counted by the load generator as a 500
        return 500
    if value != str(i).encode():
        return 409  # redis answered another process's GET
    return 200 if got == i else 422  # 422: PostgreSQL answered another process's SELECT


_REASONS = {200: "200 OK", 409: "409 Conflict", 422: "422 Unprocessable Entity",
            500: "500 Internal Server Error"}


def application(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    status = work()
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if "sleep" in query:
        time.sleep(float(query["sleep"][0]))
    body = str(os.getpid()).encode()
    start_response(_REASONS[status], [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

