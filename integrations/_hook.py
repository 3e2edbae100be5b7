"""The body every server hook shares: switch the guard on, run the resets, log the outcome.

Each integration calls :func:`reset_and_log` with its server's own logging functions, so the
summary line and every failure land in the server's log (gunicorn's error log, uWSGI's log,
Celery's worker log) rather than only on the ``postfork`` logger.
"""

from __future__ import annotations

import os
from typing import Callable

import postfork
from postfork import ForkSafetyError, Report, ResetError

__all__ = ["default_guard", "reset_and_log", "close_and_log", "forked", "log_findings"]

Log = Callable[[str], object]


def default_guard() -> None:
    """Switch the guard on in ``warn`` mode unless the user chose a mode already, with
    ``POSTFORK_GUARD`` (``off`` included) or an earlier ``postfork.guard(...)`` call."""
    from postfork._guard import guard_default

    guard_default("warn")


def forked() -> bool:
    """True in a process that postfork's at-fork hook ran in: one forked (``os.fork``,
    ``multiprocessing``'s fork context) from a process that had imported postfork, so it may
    hold clients built by an ancestor.

    False in the process that built the application and in a spawned process: their clients
    are their own, and a reset would only drop good connections (and retire a bare database
    connection). The job runners call their hooks in both kinds of process (Dramatiq's
    ``after_process_boot`` under ``--use-spawn``, Huey's startup hooks for ``-k thread``
    workers, RQ's ``work()`` under ``rq worker`` and in the processes of ``rq worker-pool``),
    so they reset only where this is True.
    """
    from postfork._registry import REGISTRY

    report = REGISTRY.state()[1]
    return report is not None and report.pid == os.getpid()


def log_findings(report: Report, warning: Log) -> None:
    """Each guard finding of ``report`` as a warning in the runner's log: the guard's own
    ``ForkSafetyWarning`` goes to stderr, which is not always where the runner logs."""
    for finding in report.findings:
        warning(f"postfork guard: {finding}")


def reset_and_log(info: Log, error: Log) -> Report:
    """Run ``postfork.reset_all()`` (a no-op repeat if the at-fork hook ran it already) and log
    the one-line summary with ``info`` and each failed reset with ``error``.

    Raises only what ``reset_all`` raises, i.e. only in strict mode (``POSTFORK_STRICT=1``) or
    with the guard in ``raise`` mode; the failures are logged first, so the server's log names
    the failing client even when the server swallows the exception.
    """
    try:
        report = postfork.reset_all()
    except (ResetError, ForkSafetyError) as exc:
        _log(exc.report, info, error)
        if isinstance(exc, ForkSafetyError):
            error(str(exc))  # lists every finding; failed resets are logged above
        raise
    _log(report, info, error)
    return report


def _log(report: Report, info: Log, error: Log) -> None:
    info(str(report))
    for entry in report.failed:
        error(
            f"postfork: reset of {entry.name} failed in pid {report.pid}: "
            f"{type(entry.error).__name__}: {entry.error}"
        )


def close_and_log(info: Log, warning: Log) -> Report:
    """Run ``postfork.close_all()`` in a worker that exits: one summary line with ``info``,
    each client that failed to close with ``warning``. Never raises."""
    report = postfork.close_all()
    n = len(report.entries)
    info(f"postfork: closed {n} client{'' if n == 1 else 's'} in {report.seconds * 1e3:.1f} ms "
         f"(pid {report.pid}), {len(report.failed)} failed")
    for entry in report.failed:
        warning(f"postfork: closing {entry.name} failed in pid {report.pid}: "
                f"{type(entry.error).__name__}: {entry.error}")
    return report
