"""The soak's Celery app: the soak app's clients built in the worker's main process at import,
one task that runs the soak app's unit of work in a prefork pool process.

Settings: the soak app's (``SOAK_*``), ``CELERY_BROKER_URL`` (also the result backend) and
``SOAK_QUEUE``.
"""

from __future__ import annotations

import os
from typing import Any, Dict

from celery import Celery

import postfork.integrations.celery  # noqa: F401  (reset in every pool process)
import soak_app

app = Celery("postfork_soak", broker=os.environ["CELERY_BROKER_URL"],
             backend=os.environ["CELERY_BROKER_URL"])
app.conf.task_default_queue = os.environ["SOAK_QUEUE"]
app.conf.broker_connection_retry_on_startup = True
app.conf.result_expires = 600


@app.task(name="postfork_soak.work")
def work(ident: str, n: int) -> Dict[str, Any]:
    return {**soak_app.work(ident, n), "main": soak_app.MASTER}
