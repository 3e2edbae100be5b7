"""The example Celery app, plus a full garbage collection in the worker's main process right
before the pool forks: a receiver Celery held only by weak reference would be gone by then."""

from __future__ import annotations

import gc
from typing import Any

from celery import signals
from celery_app import app  # noqa: F401  (examples/ is on the path)


@signals.worker_init.connect(weak=False)
def _collect(**_: Any) -> None:
    gc.collect()


if __import__("os").environ.get("POSTFORK_TEST_WEAK_RECEIVER") == "1":
    @signals.worker_process_init.connect  # weak=True, Celery's default
    def reconnect_cache(**_: Any) -> None:
        """A user's receiver connected the usual way: postfork warns that Celery holds it weakly."""
