"""The clients of the Dramatiq and Huey test apps (``_dramatiq_app.py``, ``_huey_app.py``), and
the body of their one task.

Built at import: a redis ``single_connection_client`` (redis-py makes no pid check there; its
lock serializes the threads of one process) and a PostgreSQL connection in autocommit mode,
both used at once by the worker threads of a process. ``POSTFORK_TEST_UNMANAGED=1`` leaves
them unmanaged; otherwise the redis client is registered and the connection is a
``postfork.local``. Import the runner's integration first: it turns the guard on.

Each use is one JSON line in ``POSTFORK_TEST_RECORDS`` (the pid, the thread, the connection ids
the servers reported, wrong answers, errors).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Dict

import psycopg
import redis

from _app_clients import manage, record

PREFIX = os.environ["POSTFORK_TEST_PREFIX"]
QUEUE = os.environ["POSTFORK_TEST_QUEUE"]


def _connect() -> Any:
    return psycopg.connect(os.environ["POSTGRES_DSN"], autocommit=True, connect_timeout=5)


cache = redis.Redis.from_url(os.environ["APP_REDIS_URL"], socket_timeout=2,
                             single_connection_client=True)
db: Any = manage(cache, _connect)


def use(role: str, n: int = 0, rounds: int = 1, delay: float = 0.0) -> Dict[str, Any]:
    """Round-trip ``rounds`` values through redis and ask both servers who this is; record it."""
    time.sleep(delay)
    pid = os.getpid()
    row: Dict[str, Any] = {"role": role, "pid": pid, "thread": threading.get_ident(), "n": n,
                           "wrong": 0, "errors": []}
    try:
        row["redis"] = cache.client_id()
        for i in range(rounds):
            key, value = f"{PREFIX}:{pid}:{n}:{i}", f"{n}:{i}".encode()
            cache.set(key, value, ex=60)
            if cache.get(key) != value:
                row["wrong"] += 1
    except Exception as exc:  # noqa: BLE001 - the hazard, measured
        row["errors"].append(f"{type(exc).__name__}: {exc}")
    try:
        row["postgres"] = db.execute("SELECT pg_backend_pid()").fetchone()[0]
    except Exception as exc:  # noqa: BLE001
        row["errors"].append(f"{type(exc).__name__}: {exc}")
    record(row)
    return row


use("import")
