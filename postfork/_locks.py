"""Renewing synchronization objects in a forked child.

A lock that another thread held at the instant of fork is held forever in the child: that
thread does not exist there, so nobody will release it. Acquiring it blocks (or times out);
the only way out is a new one. :func:`renew` replaces the locks, conditions and events an
object holds under the given attribute names with new, released ones of the same kind. It
never acquires the old one (that is the hang it exists to avoid), and an event keeps its flag.
Used by the registry, ``local`` and every adapter.
"""

from __future__ import annotations

import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Optional

__all__ = ["renew", "fresh"]

_LOCK = type(threading.Lock())
_RLOCK = type(threading.RLock())
_FACTORIES: Dict[type, Callable[[], Any]] = {_LOCK: threading.Lock, _RLOCK: threading.RLock}


def fresh(old: Any) -> Optional[Any]:
    """A new, released object like ``old`` (a lock, an RLock, a Condition, an Event, or an
    asyncio lock, condition or event), or None when ``old`` is none of those."""
    factory = _FACTORIES.get(type(old))
    if factory is not None:
        return factory()
    if isinstance(old, threading.Condition):
        inner = fresh(getattr(old, "_lock", None))
        return threading.Condition(inner)
    if isinstance(old, threading.Event):
        event = threading.Event()
        if old.is_set():  # reads the flag only, takes no lock
            event.set()
        return event
    if type(old).__name__ == "_RLock":  # threading's pure-Python RLock
        return threading.RLock()
    module = type(old).__module__
    if module.startswith("asyncio"):
        # An asyncio primitive belongs to the parent's loop and may be held by one of its
        # tasks, which never runs here. Built loop-less: it binds to the loop that uses it.
        import asyncio

        for kind in (asyncio.Condition, asyncio.Lock, asyncio.Event):
            if isinstance(old, kind):
                new = kind()
                if isinstance(old, asyncio.Event) and old.is_set():
                    new.set()  # type: ignore[union-attr]
                return new
    return None


def renew(obj: Any, *names: str, factory: Optional[Callable[[], Any]] = None) -> None:
    """Replace each of ``obj``'s attributes ``names`` that holds a lock, condition or event
    with a new, released one (attributes that are missing, None or anything else are left).

    ``factory``: build plain locks with it instead (PyMongo's ``_create_lock`` registers each
    lock it makes with PyMongo's own at-fork reset, which a grandchild then relies on)."""
    for name in names:
        old = getattr(obj, name, None)
        if old is None:
            continue
        make = _FACTORIES.get(type(old))  # the common case, inline: a worker resets thousands
        if make is not None:
            setattr(obj, name, factory() if factory is not None and make is threading.Lock else make())
            continue
        new = fresh(old)
        if new is not None:
            setattr(obj, name, new)
