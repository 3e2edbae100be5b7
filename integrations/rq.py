"""RQ: every work horse starts with its own clients, and says so in RQ's log.

Use::

    rq worker --worker-class postfork.integrations.rq.Worker ...
    rq worker-pool --worker-class postfork.integrations.rq.Worker ...

or subclass it (``class AppWorker(postfork.integrations.rq.Worker)``) where you have a worker
class of your own.

An RQ worker forks a work horse (``Worker.fork_work_horse``, ``os.fork``) for every job. The
horse inherits every client the worker process holds: those the application built at import,
and their connections as the worker left them after the last job, if the worker used them
between jobs. postfork's at-fork hook runs ``postfork.reset_all()`` in each horse, since each
horse is a new process; registering the clients is all that takes. This class adds what the hook
cannot do:

- it writes the hook's summary line (``postfork: reset N clients in X ms (pid P), 0 failed``)
  and each guard finding to RQ's log, from the horse, before the job runs;
- in strict mode (``POSTFORK_STRICT=1``, or the guard in ``raise`` mode) a horse whose reset
  failed exits before running the job, which RQ then fails as "Work-horse terminated
  unexpectedly" (RQ alone would run it with the client that failed to reset);
- importing it switches the guard on in ``warn`` mode unless ``POSTFORK_GUARD`` is set. RQ's
  command line imports the worker class before ``--config`` and before any job, so the guard
  sees what the application builds in the worker process.

Under ``rq worker-pool`` the pool's processes are forked from the pool's main process: each
logs its own reset when it starts working. RQ's own connection (``--url``) needs nothing: its
redis-py pool reconnects by itself in a process of another pid, and the guard counts clients
built in RQ's code as the server's own.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from rq.worker import Worker as _Worker

from ._hook import default_guard, forked, log_findings, reset_and_log

__all__ = ["Worker"]


class Worker(_Worker):
    """``rq.Worker`` that logs postfork's reset in every work horse (see the module)."""

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)  # sets up RQ's log handlers
        if forked():  # a process of ``rq worker-pool``: forked from the pool's main process
            _reset_or_exit(self.log)

    def main_work_horse(self, job: Any, queue: Any) -> None:
        # In the horse, right after os.fork(): postfork's at-fork hook has run the resets;
        # this logs them (a second reset_all() is a no-op) before the job runs.
        _reset_or_exit(self.log)
        super().main_work_horse(job, queue)


def _reset_or_exit(log: Any) -> None:
    try:
        report = reset_and_log(log.info, log.error)
        log_findings(report, log.warning)
    except BaseException:  # noqa: BLE001 - nothing may escape into RQ's fork_work_horse:
        # there, the child would carry on as a second worker. Strict mode asked to stop.
        log.critical("postfork: pid %d exits without running a job", os.getpid(), exc_info=True)
        logging.shutdown()
        os._exit(1)


default_guard()
