# gunicorn config for the soak (soak/run.py passes workers, max_requests and the bind address):
# postfork's hooks, and pre_fork using the master's own clients before every fork, so that the
# soak sees whether the master's connections keep working while workers come and go.
from typing import Any

from postfork.integrations.gunicorn import post_fork, worker_exit  # noqa: F401

wsgi_app = "soak_app:application"
preload_app = True


def pre_fork(server: Any, worker: Any) -> None:
    import soak_app  # already imported: the preloaded app

    soak_app.master_check()
