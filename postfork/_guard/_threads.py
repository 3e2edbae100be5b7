"""Threads: where each was started and by which client, and which were alive at fork.

Only the forking thread exists in a child; every other thread of the parent is gone, and any
lock it held at that instant stays held forever. The guard names them. ``Thread.start`` is
wrapped (while the guard is on) to record the start site and the owning client (a
``MongoClient`` starts its monitors), so that the threads of a managed client are not findings.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Any, List, Optional

from ._tracking import Origin, enabled, format_site, is_server_site, observe_site

__all__ = ["ThreadOrigin", "AliveThread", "install", "alive_threads"]


@dataclass(frozen=True)
class ThreadOrigin:
    """Recorded when a thread started while the guard was on."""

    file: Optional[str]
    line: int
    owner: Optional[Origin]  # the tracked client that started it, if any

    @property
    def site(self) -> Optional[str]:
        if self.file is None and self.owner is not None:
            return self.owner.site
        return format_site(self.file, self.line)

    @property
    def server(self) -> bool:
        """Started by the prefork server for itself (Celery's timers, gunicorn's...), or by a
        client the server built for itself (RQ's PubSub runs the worker's command thread)."""
        if self.owner is None:
            return is_server_site(self.file)
        return is_server_site(self.owner.root().file)


@dataclass(frozen=True)
class AliveThread:
    """A thread other than the caller's, alive at the time of the snapshot."""

    name: str
    ident: Optional[int]
    daemon: bool
    origin: Optional[ThreadOrigin]


_original_start = threading.Thread.start
_installed = False


def _start(self: threading.Thread) -> None:
    if enabled():
        try:
            self._postfork_origin = _origin_here()  # type: ignore[attr-defined]
        except Exception:  # recording must never stop a thread from starting
            pass
    _original_start(self)


def _origin_here() -> ThreadOrigin:
    # PyMongo starts a monitor lazily from MongoClient._get_topology(), long after __init__:
    # any method of a tracked client on the stack makes it the owner.
    owner, file, line = observe_site(sys._getframe(2), leaf=True)
    return ThreadOrigin(file, line, owner)


def install() -> None:
    global _installed
    if not _installed:
        _installed = True
        threading.Thread.start = _start  # type: ignore[method-assign]


def alive_threads() -> List[AliveThread]:
    """Every thread alive now except the calling one."""
    me = threading.current_thread()
    return [
        AliveThread(t.name, t.ident, t.daemon, getattr(t, "_postfork_origin", None))
        for t in threading.enumerate()
        if t is not me
    ]


def origin_of_thread(thread: Any) -> Optional[ThreadOrigin]:
    return getattr(thread, "_postfork_origin", None)
