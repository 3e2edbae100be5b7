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
would log the exception and run tasks), and stops the worker: it sends the main process
SIGQUIT, Celery's cold shutdown, and the worker exits with code 1 (``worker_shutting_down``
sets it; Celery's cold shutdown alone exits 0). Celery's own check ("Could not start worker
processes") is not enough: it looks at the pool once, when the consumer is ready, so a pool
process that fails after that moment (a slow start under load, or any replacement:
``--max-tasks-per-child``, a killed process) is only replaced, and its replacement fails again,
hundreds of times a minute.
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import weakref
from typing import Any, Optional

from celery import signals

from postfork import ForkSafetyError, ResetError

from ._hook import close_and_log, default_guard, reset_and_log

__all__ = ["on_worker_process_init", "on_worker_process_shutdown", "on_worker_init",
           "on_worker_shutting_down"]

log = logging.getLogger("postfork")

# The main process's worker and one byte shared with its pool processes (an anonymous shared
# mapping made before the pool forks): a pool process whose reset failed in strict mode sets it,
# and the main process's shutdown turns it into exit code 1. Celery's cold shutdown keeps its
# exit code in a flag the worker never reads, so it would exit 0. One byte written once: no lock.
_worker: Any = None
_failed: Optional[mmap.mmap] = None


def on_worker_process_init(**_: Any) -> None:
    """``worker_process_init`` receiver: reset this pool process's clients."""
    try:
        reset_and_log(log.info, log.error)
    except (ResetError, ForkSafetyError):
        # Celery would log this and let the process run tasks with a client that failed to
        # reset. Strict mode asked for the opposite: leave before taking any task.
        parent = os.getppid()
        # billiard forks pool processes from the main process, which installed Celery's SIGQUIT
        # handler (cold shutdown) before it built the pool; pool processes reset SIGTERM,
        # SIGHUP and SIGUSR1 but keep SIGQUIT's, so a Python handler here is the main
        # process's. Without one (a WorkController built by hand) the signal would kill the
        # main process outright: then only Celery's start-up check can stop it.
        stops = parent != 1 and callable(signal.getsignal(signal.SIGQUIT))
        if _failed is not None:
            _failed[0] = 1
        log.critical("postfork: strict mode: pool process %d exits without running a task%s",
                     os.getpid(), f" and stops the worker (SIGQUIT to {parent})" if stops else "")
        logging.shutdown()
        if stops:
            os.kill(parent, signal.SIGQUIT)
        os._exit(1)


def on_worker_process_shutdown(pid: Any = None, **_: Any) -> None:
    """``worker_process_shutdown`` receiver: close this pool process's own clients."""
    if pid is not None and pid != os.getpid():  # only ever the exiting process's own clients
        return
    close_and_log(log.info, log.warning)


def on_worker_init(sender: Any = None, **_: Any) -> None:
    """``worker_init`` receiver (the main process, before the pool forks): share the strict-mode
    failure byte with the pool, and warn once about receivers of the pool-process signals that
    Celery holds weakly (its default): one whose last other reference goes is silently dropped
    and stops resetting anything."""
    global _worker, _failed
    _worker, _failed = sender, mmap.mmap(-1, 1)
    for sig in (signals.worker_process_init, signals.worker_process_shutdown):
        for _, receiver in list(sig.receivers):
            if isinstance(receiver, weakref.ReferenceType):
                func = receiver()
                name = getattr(func, "__qualname__", repr(func))
                module = getattr(func, "__module__", "?")
                log.warning("postfork: the %s receiver %s.%s is connected weakly (Celery's "
                            "default): once nothing else references it, Celery drops it and it "
                            "stops running. Connect it with weak=False.",
                            sig.name, module, name)


def on_worker_shutting_down(**_: Any) -> None:
    """``worker_shutting_down`` receiver (the main process, in its signal handler): a worker
    stopped by a pool process's strict-mode failure exits with code 1, whatever the shutdown."""
    if _failed is not None and _failed[0] and _worker is not None:
        _worker.exitcode = 1  # celery.platforms.EX_FAILURE


signals.worker_process_init.connect(
    on_worker_process_init, weak=False, dispatch_uid="postfork.reset_all"
)
signals.worker_init.connect(on_worker_init, weak=False, dispatch_uid="postfork.weak_receivers")
signals.worker_process_shutdown.connect(
    on_worker_process_shutdown, weak=False, dispatch_uid="postfork.close_all"
)
signals.worker_shutting_down.connect(
    on_worker_shutting_down, weak=False, dispatch_uid="postfork.strict_exit_code"
)
default_guard()
