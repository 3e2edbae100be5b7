"""gunicorn: reset every registered client in each worker, right after the fork.

In ``gunicorn.conf.py``::

    from postfork.integrations.gunicorn import post_fork, worker_exit

or, with no config file of your own::

    gunicorn --preload -c python:postfork.integrations.gunicorn app:application

To keep a ``post_fork`` (or ``worker_exit``) of your own, decorate it; postfork's part runs
first, so your hook already sees fresh clients::

    from postfork.integrations.gunicorn import with_reset, with_close

    @with_reset
    def post_fork(server, worker):
        ...

This module is also a gunicorn config module (``-c python:...``): gunicorn applies every
module-level name that matches a setting, so ``post_fork`` and ``worker_exit`` are the only
setting names defined here. Importing it switches the guard on in ``warn`` mode unless
``POSTFORK_GUARD`` is set; gunicorn imports the config before it preloads the app, so the guard
sees every client the app builds.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Callable

from ._hook import close_and_log, default_guard, reset_and_log

__all__ = ["post_fork", "worker_exit", "with_reset", "with_close"]

Hook = Callable[[Any, Any], Any]


def post_fork(server: Any, worker: Any) -> None:
    """gunicorn ``post_fork``: run the resets in the new worker and log the summary to
    ``server.log``. A failing reset is logged as an error and the worker serves on; in strict
    mode (``POSTFORK_STRICT=1``) or with the guard in ``raise`` mode the exception propagates,
    so gunicorn reports "Worker failed to boot" with the failing client named in its log.
    The guard's findings are logged as warnings too: its ForkSafetyWarnings go to stderr,
    which is not gunicorn's log when ``errorlog`` names a file."""
    preloaded = getattr(getattr(server, "cfg", None), "preload_app", True)
    if preloaded:
        report = reset_and_log(server.log.info, server.log.error)
    else:
        # Without --preload each worker imports the app itself, after the fork: nothing of the
        # app was inherited, so "reset 0 clients" would read like a failure. Say what happened.
        report = reset_and_log(lambda _: None, server.log.error)
        server.log.info(f"postfork: pid {os.getpid()}: gunicorn runs without --preload, so this "
                        f"worker builds its own app after the fork: nothing was inherited, "
                        f"nothing needed resetting")
    for finding in report.findings:
        server.log.warning("postfork guard: %s", finding)


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn ``worker_exit``: close the exiting worker's own clients gracefully.

    gunicorn also calls this hook in the master, for a worker that is already gone
    (``Arbiter.kill_worker`` on ``ESRCH``): closing there would close the master's clients,
    so it runs only in the worker itself.
    """
    if getattr(worker, "pid", None) != os.getpid():
        return
    close_and_log(server.log.info, server.log.warning)


def with_reset(hook: Hook) -> Hook:
    """Decorator for your own ``post_fork(server, worker)``: postfork resets first, then your
    hook runs (with fresh clients)."""
    _check_hook(hook, "post_fork", "with_reset")
    return _chain(post_fork, hook, hook)


def with_close(hook: Hook) -> Hook:
    """Decorator for your own ``worker_exit(server, worker)``: your hook runs first (it may
    still use the clients), then postfork closes them."""
    _check_hook(hook, "worker_exit", "with_close")
    return _chain(hook, worker_exit, hook)


def _chain(first: Hook, second: Hook, user: Hook) -> Hook:
    @functools.wraps(user)
    def hook(server: Any, worker: Any) -> None:
        first(server, worker)
        second(server, worker)

    del hook.__wrapped__  # gunicorn checks the arity of this wrapper, (server, worker)
    return hook


def _check_hook(func: Any, setting: str, decorator: str) -> None:
    """gunicorn rejects a hook whose arity is wrong only when it loads the config; say so at
    decoration time, naming the hook."""
    if not callable(func):
        raise TypeError(
            f"postfork.integrations.gunicorn.{decorator} decorates your "
            f"{setting}(server, worker) function; got {func!r}"
        )
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # no signature to read: let gunicorn judge it
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) != 2:
        raise TypeError(
            f"postfork.integrations.gunicorn.{decorator}: gunicorn calls {setting}(server, "
            f"worker) with two arguments, but {getattr(func, '__qualname__', func)!r} takes "
            f"{len(positional)}. Define it as 'def {setting}(server, worker): ...'"
        )


default_guard()
