"""Huey: each worker process of ``huey_consumer -k process`` reports its reset in Huey's log.

Where the application builds its Huey instance::

    from postfork.integrations.huey import install

    huey = install(RedisHuey("app"))

``huey_consumer app.huey -k process`` imports the application in the consumer's main process
and then forks the worker processes (``multiprocessing``'s fork context): each inherits every
client the application built at import. postfork's at-fork hook resets the registered ones in
every worker process. ``install(huey)`` adds what the hook cannot do:

- a startup hook, first in Huey's list, that writes the reset summary (``postfork: reset N
  clients in X ms (pid P), 0 failed``) and each guard finding to the consumer's log; thread and
  greenlet workers (``-k thread``, ``-k greenlet``) run in the process that built the clients
  and reset nothing;
- in strict mode (``POSTFORK_STRICT=1``, or the guard in ``raise`` mode) a worker process whose
  reset failed exits before it takes a task (Huey alone logs a failing startup hook and goes on);
  the consumer restarts it at its next health check, and it fails again, naming the client;
- a shutdown hook that closes a worker process's own clients;
- the guard, in ``warn`` mode unless ``POSTFORK_GUARD`` is set (importing this module does
  it), so call ``install`` before the application builds its clients.
"""

from __future__ import annotations

import logging
import os
from typing import Any, TypeVar

from postfork import ForkSafetyError, ResetError

from ._hook import close_and_log, default_guard, forked, log_findings, reset_and_log

__all__ = ["install", "on_startup", "on_shutdown"]

H = TypeVar("H")

log = logging.getLogger("huey.consumer")  # where huey_consumer logs (its handler is on "huey")

_NAME = "postfork"


def on_startup() -> None:
    """Huey startup hook: log this worker process's reset (see the module)."""
    if not forked():
        log.info("postfork: pid %d was not forked from a process that imported postfork "
                 "(thread or greenlet workers): nothing to reset", os.getpid())
        return
    try:
        report = reset_and_log(log.info, log.error)
    except (ResetError, ForkSafetyError):
        # Huey would log this and let the worker take tasks with a client that failed to reset.
        log.critical("postfork: strict mode: worker process %d exits without taking a task",
                     os.getpid())
        raise SystemExit(1) from None  # Huey's hook loop catches Exception only
    log_findings(report, log.warning)


def on_shutdown() -> None:
    """Huey shutdown hook: close a worker process's own clients."""
    if forked():
        close_and_log(log.info, log.warning)


def install(huey: H) -> H:
    """Add postfork's startup hook (first in line) and shutdown hook to ``huey``; return it."""
    default_guard()
    h: Any = huey
    h.on_startup(_NAME)(on_startup)
    h.on_shutdown(_NAME)(on_shutdown)
    hooks = getattr(h, "_startup", None)
    if isinstance(hooks, dict):  # Huey runs its startup hooks in insertion order: be first
        h._startup = {_NAME: hooks.pop(_NAME), **hooks}
    return huey


default_guard()
