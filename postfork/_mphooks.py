"""Handlers registered with ``multiprocessing.util.register_after_fork``.

A widely copied recipe (SQLAlchemy's, kombu's) makes a client fork-safe with
``multiprocessing.util.register_after_fork(obj, func)``. Those handlers run only in children
that ``multiprocessing`` itself starts (its ``Process._bootstrap`` calls them): never under
gunicorn, uWSGI, RQ or a plain ``os.fork()``. The guard names them; the opt-in
``postfork.after_fork(postfork.multiprocessing_after_fork)`` runs them in every child postfork
resets (and leaves multiprocessing's own children to multiprocessing, which runs them anyway).
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, List, Tuple

__all__ = ["handlers", "forked_by_multiprocessing", "multiprocessing_after_fork"]

# Where multiprocessing (and Celery's fork of it, billiard) call os.fork() for a Process.
_POPEN_FORK = ("multiprocessing/popen_fork.py", "billiard/popen_fork.py")


def handlers() -> List[Tuple[Any, Callable[[Any], Any]]]:
    """The live ``(obj, func)`` pairs, in the order multiprocessing would call them."""
    util = sys.modules.get("multiprocessing.util")
    registry = getattr(util, "_afterfork_registry", None)
    if not registry:
        return []
    items = sorted(list(registry.items()), key=lambda item: item[0][0])
    return [(obj, func) for (_, _, func), obj in items]


def forked_by_multiprocessing() -> bool:
    """True inside the at-fork hooks of a fork made by multiprocessing for a ``Process``."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename.endswith(_POPEN_FORK):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def multiprocessing_after_fork() -> None:
    """Run the ``multiprocessing.util.register_after_fork`` handlers in this child, as
    multiprocessing does in its own children. Opt in with
    ``postfork.after_fork(postfork.multiprocessing_after_fork)``; in a child that
    multiprocessing starts this does nothing (multiprocessing runs them itself)."""
    util = sys.modules.get("multiprocessing.util")
    if util is None or forked_by_multiprocessing():
        return
    util._run_after_forkers()
