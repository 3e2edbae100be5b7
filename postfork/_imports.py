"""Imports in flight at fork: the module locks a vanished thread still holds in the child.

A thread of the master that is importing a module when the master forks holds that module's
import lock (``importlib._bootstrap._module_locks``) in the child forever: the thread does not
exist there, and CPython re-creates only the global import lock at fork (gh-126688). The
child's first import of the same module then waits for ever; a module the thread was still
executing sits half-initialised in ``sys.modules``. It happens in real apps: redis-py imports
``email.parser`` lazily (through ``importlib.metadata``) when a process makes its first
connection, so a master thread connecting at the moment of fork hangs every child that then
connects.

:func:`repair` runs in the child before anything else of postfork's (and so before the
application's code): every module lock owned by a thread that did not survive the fork is
dropped from the table (the next import makes a new one), and a half-initialised module of
that thread is dropped from ``sys.modules``, so the child imports it afresh. It takes no lock
that a vanished thread can hold: the global import lock is taken only when free.
"""

from __future__ import annotations

import os
import sys
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Optional, Set, Tuple

__all__ = ["repair"]


def _live_native_ids() -> Optional[Set[int]]:
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except OSError:
        return None


def _vanished(owner: int, me: int, forked_here: bool, live: Optional[Set[int]]) -> bool:
    if owner == me:
        return False
    if forked_here:
        return True  # in the at-fork hook: the calling thread is the only one the child has
    # Called by an integration in a process whose fork ran no at-fork hook (uWSGI): threading
    # still lists the master's threads there, so ask the kernel which threads exist.
    thread = threading._active.get(owner)  # type: ignore[attr-defined]
    native = getattr(thread, "native_id", None)
    return live is not None and native is not None and native not in live


def repair(forked_here: bool) -> List[Tuple[str, int, bool]]:
    """Release the import locks of vanished threads; returns ``(module, owner thread ident,
    half-initialised module dropped)`` for each."""
    from importlib import _bootstrap

    import _imp

    locks = getattr(_bootstrap, "_module_locks", None)
    if not locks:
        return []
    me = threading.get_ident()
    live = None if forked_here else _live_native_ids()
    repaired: List[Tuple[str, int, bool]] = []
    # The global import lock is re-created by CPython in a child forked with its hooks; after a
    # hookless fork a vanished thread may hold it: then we are the only thread and go without.
    take = not _imp.lock_held()
    if take:
        _imp.acquire_lock()
    try:
        for name, ref in list(locks.items()):
            lock = ref()
            owner = getattr(lock, "owner", None)
            if owner is None or not _vanished(owner, me, forked_here, live):
                continue
            del locks[name]
            module = sys.modules.get(name)
            half = bool(getattr(getattr(module, "__spec__", None), "_initializing", False))
            if half:
                del sys.modules[name]
            repaired.append((name, owner, half))
    finally:
        if take:
            _imp.release_lock()
    return repaired
