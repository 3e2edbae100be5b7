"""Celery: reset every registered client in each prefork pool process.

Use: ``import postfork.integrations.celery`` in the module that builds your Celery app.

Importing connects two receivers and does nothing else (besides switching the guard on in
``warn`` mode unless ``POSTFORK_GUARD`` is set): ``worker_process_init`` runs
``postfork.reset_all()`` in each new pool process (the at-fork hook has usually run it already;
this call then only logs the summary to the worker's log), and ``worker_process_shutdown``
closes that process's own clients gracefully. Both are connected with ``weak=False``: Celery's
signals hold receivers by weak reference by default. The resets do no network I/O, so they
finish far inside Celery's ``worker_proc_alive_timeout`` (4 s).

In strict mode (``POSTFORK_STRICT=1``, or the guard in ``raise`` mode) a pool process whose
reset failed exits before it takes a task, after logging which client failed (Celery alone
would log the exception and run tasks): at start-up Celery then stops with "Unrecoverable
error: WorkerLostError('Could not start worker processes')".
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any

from celery import signals

from postfork import ForkSafetyError, ResetError

from ._hook import close_and_log, default_guard, reset_and_log

__all__ = ["on_worker_process_init", "on_worker_process_shutdown", "on_worker_init"]

log = logging.getLogger("postfork")


def on_worker_process_init(**_: Any) -> None:
    """``worker_process_init`` receiver: reset this pool process's clients."""
    try:
        reset_and_log(log.info, log.error)
    except (ResetError, ForkSafetyError):
        # Celery would log this and let the process run tasks with a client that failed to
        # reset. Strict mode asked for the opposite: leave before taking any task.
        log.critical("postfork: strict mode: pool process %d exits without running a task",
                     os.getpid())
        logging.shutdown()
        os._exit(1)


def on_worker_process_shutdown(pid: Any = None, **_: Any) -> None:
    """``worker_process_shutdown`` receiver: close this pool process's own clients."""
    if pid is not None and pid != os.getpid():  # only ever the exiting process's own clients
        return
    close_and_log(log.info, log.warning)


def on_worker_init(**_: Any) -> None:
    """``worker_init`` receiver (the main process, before the pool forks): warn once about
    receivers of the pool-process signals that Celery holds weakly (its default): one whose
    last other reference goes is silently dropped and stops resetting anything."""
    for signal in (signals.worker_process_init, signals.worker_process_shutdown):
        for _, receiver in list(signal.receivers):
            if isinstance(receiver, weakref.ReferenceType):
                func = receiver()
                name = getattr(func, "__qualname__", repr(func))
                module = getattr(func, "__module__", "?")
                log.warning("postfork: the %s receiver %s.%s is connected weakly (Celery's "
                            "default): once nothing else references it, Celery drops it and it "
                            "stops running. Connect it with weak=False.",
                            signal.name, module, name)


signals.worker_process_init.connect(
    on_worker_process_init, weak=False, dispatch_uid="postfork.reset_all"
)
signals.worker_init.connect(on_worker_init, weak=False, dispatch_uid="postfork.weak_receivers")
signals.worker_process_shutdown.connect(
    on_worker_process_shutdown, weak=False, dispatch_uid="postfork.close_all"
)
default_guard()
