"""A Celery app whose redis client is built in the worker's main process, at import time.

Run a worker (from examples/)::

    celery -A celery_app worker --pool prefork --concurrency 2 -l info

``import postfork.integrations.celery`` is the one line that matters: each pool process then
resets the registered client (worker_process_init) and closes it on exit
(worker_process_shutdown). The ``whoami`` task answers with the pool process's pid and the
``CLIENT ID`` of its own redis connection, and with what the main process recorded at import.

Settings from the environment: ``REDIS_URL`` (the client, and broker and result backend unless
``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND`` say otherwise) and ``POSTFORK_EXAMPLE_QUEUE``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List

import redis
from celery import Celery

import postfork
import postfork.integrations.celery  # noqa: F401  (the receivers: reset in every pool process)

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery(
    "postfork_example",
    broker=os.environ.get("CELERY_BROKER_URL", REDIS_URL),
    backend=os.environ.get("CELERY_RESULT_BACKEND", REDIS_URL),
)
app.conf.task_default_queue = os.environ.get("POSTFORK_EXAMPLE_QUEUE", "postfork-example")
app.conf.broker_connection_retry_on_startup = True

# One connection per process, held open: redis-py does no pid check for a
# single_connection_client, so without postfork every pool process would talk over (and read
# the replies of) the main process's connection.
client = postfork.register(redis.Redis.from_url(REDIS_URL, socket_timeout=5, single_connection_client=True))
# Used here, in the main process: every pool process inherits this live connection.
MAIN: Dict[str, Any] = {"pid": os.getpid(), "client_id": client.client_id()}

_resets: List[int] = []


@postfork.after_fork
def _count_reset() -> None:
    _resets.append(os.getpid())


@app.task(name="postfork_example.whoami")
def whoami(delay: float = 0.0) -> Dict[str, Any]:
    """This pool process's pid and redis CLIENT ID (after ``delay`` seconds, so that
    concurrent calls land on different processes)."""
    time.sleep(delay)
    pid = os.getpid()
    return {"pid": pid, "client_id": client.client_id(), "resets": _resets.count(pid), "main": MAIN}
