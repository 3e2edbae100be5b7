"""The application RQ runs in tests/test_rq.py.

It builds its clients at import, in the worker process (RQ imports it as the worker class's
module, or as ``--config``): a redis ``single_connection_client`` (redis-py does no pid check
there) and a PostgreSQL connection. ``AppWorker`` uses both in the worker process before and
after every job, as a worker that records metrics would: each horse inherits them as the last
job left them. Every job uses them in its horse.

``POSTFORK_TEST_UNMANAGED=1`` leaves them unmanaged (what most apps do); otherwise the redis
client is registered and the database connection is a ``postfork.local``.

What the worker process saw goes, one JSON object a line, to ``POSTFORK_TEST_RECORDS``; what a
horse saw is its job's return value.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

import psycopg
import redis

from _app_clients import manage, record
from _rq_worker import Worker  # postfork.integrations.rq.Worker, RQ's shutdown made prompt

_PREFIX = os.environ["POSTFORK_TEST_PREFIX"]


def _connect() -> Any:
    return psycopg.connect(os.environ["POSTGRES_DSN"], connect_timeout=5)


cache = redis.Redis.from_url(os.environ["APP_REDIS_URL"], socket_timeout=2,
                             single_connection_client=True)
db: Any = manage(cache, _connect)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def use_clients(role: str) -> Dict[str, Any]:
    """Use both clients here, record what the servers said (their connection ids, whether a
    value round-tripped) and return it."""
    pid = os.getpid()
    row: Dict[str, Any] = {"role": role, "pid": pid, "ppid": os.getppid()}
    try:
        row["redis"] = cache.client_id()
        cache.set(f"{_PREFIX}:{pid}", role)
        row["redis_ok"] = cache.get(f"{_PREFIX}:{pid}") == role.encode()
    except Exception as exc:  # noqa: BLE001 - the hazard, measured
        row["redis_error"] = _error(exc)
    try:
        row["postgres"] = db.execute("SELECT pg_backend_pid()").fetchone()[0]
        db.commit()
    except Exception as exc:  # noqa: BLE001
        row["postgres_error"] = _error(exc)
        db.rollback()
    record(row)
    return row


use_clients("import")

# The worker process's connection ids as it last saw them: each horse inherits this copy.
WORKER_SAW: Dict[str, Any] = {}


class AppWorker(Worker):
    """A worker that uses the application's clients itself, between jobs."""

    def execute_job(self, job: Any, queue: Any) -> Any:
        WORKER_SAW.clear()
        WORKER_SAW.update(use_clients("before job"))
        try:
            return super().execute_job(job, queue)
        finally:
            use_clients("after job")


def whoami(n: int, rounds: int = 20, fail: bool = False) -> Dict[str, Any]:
    """The job: ``rounds`` values round-tripped through redis, this horse's redis CLIENT ID and
    PostgreSQL backend pid, and whether the worker's own connections are still listed by the
    servers while the horse runs. ``fail``: leave the transaction failed and raise."""
    pid = os.getpid()
    out: Dict[str, Any] = {"pid": pid, "worker": os.getppid(), "n": n, "wrong": 0,
                           "errors": []}
    errors: List[str] = out["errors"]
    try:
        out["redis"] = cache.client_id()
        for i in range(rounds):
            key, value = f"{_PREFIX}:{n}:{i}", f"{n}:{i}".encode()
            cache.set(key, value)
            if cache.get(key) != value:
                out["wrong"] += 1
        listed = cache.client_list()
        out["worker_redis_listed"] = any(c["id"] == str(WORKER_SAW.get("redis")) for c in listed)
        out["rq_connection"] = sorted(int(c["id"]) for c in listed
                                      if c["name"] == os.environ.get("RQ_WORKER_ID"))
    except Exception as exc:  # noqa: BLE001
        errors.append(_error(exc))
    try:
        out["postgres"] = db.execute("SELECT pg_backend_pid()").fetchone()[0]
        if fail:
            db.execute("SELECT 1/0")  # raises: the job fails mid-transaction
        seen = db.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                          (WORKER_SAW.get("postgres"),)).fetchone()[0]
        out["worker_postgres_listed"] = seen == 1
        db.commit()
    except psycopg.errors.DivisionByZero:
        raise
    except Exception as exc:  # noqa: BLE001
        errors.append(_error(exc))
    return out
