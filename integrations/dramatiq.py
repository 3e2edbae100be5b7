"""Dramatiq: a middleware that reports each worker process's reset in Dramatiq's log.

Add it to the broker where the application builds it::

    from postfork.integrations.dramatiq import Postfork

    broker.add_middleware(Postfork())

The ``dramatiq`` command forks its worker processes (``multiprocessing``'s fork start method,
the default on Linux before Python 3.14) and each imports the broker module itself, after the
fork: whatever that module builds at import belongs to that process alone. Clients are
inherited when the application was imported *before* the fork: a launcher that imports the app
and then calls ``dramatiq.cli.main()`` (as Flask-Dramatiq's ``flask worker`` does), or a module
already imported in the parent. Then postfork's at-fork hook resets every registered client in
each worker process, before any of its worker threads starts.

The middleware, on ``after_process_boot`` (in each worker process, before its threads start):

- writes the reset summary (``postfork: reset N clients in X ms (pid P), 0 failed``) and each
  guard finding to Dramatiq's log; a process that was not forked from one that had imported
  postfork (it imported the app itself, or was spawned) resets nothing and says so;
- in strict mode (``POSTFORK_STRICT=1``, or the guard in ``raise`` mode) a process whose reset
  failed exits before it consumes a message, and Dramatiq then shuts down ("Worker with PID
  ... exited unexpectedly"), where alone it would log the error and consume.

On ``after_worker_shutdown`` it closes the process's own clients. Importing this module
switches the guard on in ``warn`` mode unless ``POSTFORK_GUARD`` is set.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import dramatiq

from postfork import ForkSafetyError, ResetError

from ._hook import close_and_log, default_guard, forked, log_findings, reset_and_log

__all__ = ["Postfork"]


class Postfork(dramatiq.Middleware):
    """Dramatiq middleware: postfork's reset summary in each worker process (see the module)."""

    def __init__(self) -> None:
        super().__init__()
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")

    def after_process_boot(self, broker: Any) -> None:
        if not forked():
            self.logger.info("postfork: pid %d was not forked from a process that imported "
                             "postfork: its clients are its own, nothing to reset", os.getpid())
            return
        try:
            report = reset_and_log(self.logger.info, self.logger.error)
        except (ResetError, ForkSafetyError):
            # Dramatiq would log an exception here and start consuming with a client that failed
            # to reset. Strict mode asked to stop: SystemExit passes through Dramatiq's
            # middleware call, the process exits 1 and Dramatiq shuts down the others.
            self.logger.critical("postfork: strict mode: worker process %d exits before "
                                 "consuming a message", os.getpid())
            raise SystemExit(1) from None
        log_findings(report, self.logger.warning)

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        if forked():  # only a worker process's own clients, never those of the process that
            close_and_log(self.logger.info, self.logger.warning)  # built the app


default_guard()
