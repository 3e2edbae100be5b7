"""uWSGI: reset every registered client in each worker, mule and spooler after fork.

Use either::

    uwsgi --master --import postfork.integrations.uwsgi --module app:application ...

or ``import postfork.integrations.uwsgi`` in the application itself. Outside uWSGI the import
does nothing at all, so the application can import it unconditionally.

uWSGI does not run ``os.register_at_fork`` hooks in its workers unless started with
``--py-call-osafterfork``, so postfork's own at-fork hook cannot be relied on; uWSGI calls
``uwsgi.post_fork_hook`` instead. With ``--master`` the reset joins ``uwsgidecorators``'
``@postfork`` chain, first in line, so that a later ``import uwsgidecorators`` (which
overwrites ``uwsgi.post_fork_hook``) cannot drop it. Without a master ``uwsgidecorators``
refuses to import, and the reset is chained onto ``uwsgi.post_fork_hook`` directly. A hook
that was there before is kept and runs after the reset. With ``--py-call-osafterfork`` the
at-fork hook resets first and this hook's ``reset_all()`` is the idempotent no-op: one reset
per process either way (and likewise with ``--py-call-uwsgi-fork-hooks``). Under
``--lazy-apps`` the app is built after the fork and there is nothing inherited to reset.

If the master runs Python threads when uWSGI forks (psycopg_pool's workers, PyMongo's
monitors), start uWSGI with ``--py-call-uwsgi-fork-hooks``: without it uWSGI may fork while
one of those threads holds the GIL, and the worker hangs before any Python code runs, this
hook included (unbit/uwsgi#1149). That is uWSGI's to fix; postfork cannot run earlier.

In strict mode (``POSTFORK_STRICT=1``, or the guard in ``raise`` mode) a worker whose reset
failed exits before serving anything, with uWSGI's "failed loading app" code (22): the master
logs "OOPS ! failed loading app" and respawns it (uWSGI has no "halt on boot failure" like
gunicorn's). uWSGI alone would print the exception and let the worker serve.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Optional

from postfork import ForkSafetyError, ResetError

from ._hook import default_guard, reset_and_log

__all__ = ["installed"]

_FAILED_APP_CODE = 22  # uWSGI's UWSGI_FAILED_APP_CODE: the master logs "failed loading app"
installed = False  # True once the reset is wired into this uWSGI process
_loader_pid = os.getpid()  # the process that imported this module (and built the app)


def _log(message: str) -> None:
    _uwsgi().log(message)


def _uwsgi() -> Any:
    import uwsgi  # exists only inside a uWSGI process

    return uwsgi


def _after_fork() -> None:
    if os.getpid() == _loader_pid:
        # Without --master, uWSGI calls the hook in worker 1 too, which is the very process
        # that loaded the app: nothing was forked, its clients are its own.
        return
    _warn_if_the_master_ran_threads()
    try:
        reset_and_log(_log, _log)
    except (ResetError, ForkSafetyError):
        # uWSGI would print this and let the worker serve with a client that failed to reset.
        # Strict mode asked for the opposite: exit as a worker whose app failed to load.
        _log(f"postfork: strict mode: worker {os.getpid()} exits without serving "
             f"(code {_FAILED_APP_CODE}); uWSGI respawns it")
        os._exit(_FAILED_APP_CODE)


_FORK_HOOK_OPTIONS = ("py-call-uwsgi-fork-hooks", "py-call-osafterfork")


def _fork_hook_options(uwsgi: Any) -> bool:
    options = getattr(uwsgi, "opt", None) or {}
    names = {k.decode() if isinstance(k, bytes) else str(k) for k in options}
    return any(name in names for name in _FORK_HOOK_OPTIONS)


def _warn_if_the_master_ran_threads() -> None:
    """uWSGI without --py-call-uwsgi-fork-hooks (or --py-call-osafterfork) forks without
    telling Python: if a master thread held the GIL at that instant the worker hangs before
    any Python runs, this hook included (unbit/uwsgi#1149). This worker got here, but the next
    may not: say so while the master's threads are still listed (threading's own after-fork
    cleanup did not run either, so they are)."""
    import threading

    if _fork_hook_options(_uwsgi()):
        return
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    if others:
        _log(f"postfork: WARNING: the uWSGI master ran {len(others)} Python thread"
             f"{'' if len(others) == 1 else 's'} ({', '.join(others[:5])}) when it forked worker "
             f"{os.getpid()}, and uWSGI was started without --py-call-uwsgi-fork-hooks: a worker "
             f"forked while one of them holds the GIL hangs before any Python runs "
             f"(unbit/uwsgi#1149). Start uWSGI with --py-call-uwsgi-fork-hooks.")


def _chained(first: Callable[[], Any], then: Callable[[], Any]) -> Callable[[], None]:
    def post_fork_hook() -> None:
        first()
        then()

    return post_fork_hook


def _install(uwsgi: Any) -> None:
    global installed
    previous: Optional[Callable[[], Any]] = getattr(uwsgi, "post_fork_hook", None)
    decorators_loaded = "uwsgidecorators" in sys.modules
    if uwsgi.masterpid():
        import uwsgidecorators  # with a fresh import, this replaces uwsgi.post_fork_hook

        chain_hook = uwsgidecorators.postfork_chain_hook
        if previous is None or previous is chain_hook or not decorators_loaded:
            chain = uwsgidecorators.postfork_chain
            chain.insert(0, _after_fork)
            if previous is not None and previous is not chain_hook:
                chain.insert(1, previous)  # the hook the import just overwrote
            uwsgi.post_fork_hook = chain_hook
            installed = True
            return
        # uwsgidecorators was imported earlier and its hook replaced since; that replacement
        # may call the chain itself, so wrap it rather than put it in the chain (no recursion).
    uwsgi.post_fork_hook = _after_fork if previous is None else _chained(_after_fork, previous)
    installed = True


try:
    _uwsgi_module = _uwsgi()
except ImportError:  # not inside uWSGI: a silent no-op
    pass
else:
    default_guard()
    _install(_uwsgi_module)
    del _uwsgi_module
