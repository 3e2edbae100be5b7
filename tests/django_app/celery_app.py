"""The Django project's Celery app: ``celery -A django_app.celery_app worker --pool prefork``.

Nothing postfork-specific here: ``INSTALLED_APPS`` holds the one line. The worker's main process
sets Django up and uses every backend at import and again just before it forks each pool
process (which inherits those live connections); the ``whoami`` task answers with the pool process's own, and with what the main
process got (``MAIN``); the ``django_probe`` remote control command makes the main process use
its own connections again."""

from __future__ import annotations

import os
from typing import Any, Dict

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_app.settings")

import django  # noqa: E402

django.setup()

from celery import Celery  # noqa: E402
from celery.signals import worker_before_create_process  # noqa: E402
from celery.worker.control import control_command  # noqa: E402

from .views import probe  # noqa: E402

app = Celery("django_app")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_default_queue = os.environ.get("POSTFORK_EXAMPLE_QUEUE", "postfork-django")
app.conf.broker_connection_retry_on_startup = True

MAIN: Dict[str, Any] = probe(-1)


@worker_before_create_process.connect(weak=False)
def _use_them_before_each_fork(**_: Any) -> None:
    """Celery's Django fixup closes the main process's connections at worker_init; the main
    process then uses them again just before forking each pool process (as an app whose main
    process does any database work would), so every pool process inherits live sessions."""
    global MAIN
    MAIN = probe(-2)


@app.task(name="django_app.whoami")
def whoami(n: int, delay: float = 0.0) -> Dict[str, Any]:
    import time

    time.sleep(delay)
    return {**probe(n), "main": MAIN}


@control_command(args=[("n", int)], signature="<n>")
def django_probe(state: Any, n: int) -> Dict[str, Any]:
    """Remote control, answered by the worker's main process: its own connections again (the
    test checks they are the ones it had at import, and still answer)."""
    return probe(n)
