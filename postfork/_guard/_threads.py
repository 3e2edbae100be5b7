"""Threads: where each was started and by which client, and which were alive at fork.

Only the forking thread exists in a child; every other thread of the parent is gone, and any
lock it held at that instant stays held forever. The guard names them. ``Thread.start`` is
wrapped (while the guard is on) to record the start site and the owning client (a
``MongoClient`` starts its monitors), so that the threads of a managed client are not findings.
"""

from __future__ import annotations

import os
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
    """A thread other than the caller's, alive at the time of the snapshot. ``native``: a
    thread the kernel lists (``/proc/self/task``) that Python did not start (a C library's:
    librdkafka, grpc, OpenBLAS); its ``name`` is the kernel's and ``owner`` the library's when
    known."""

    name: str
    ident: Optional[int]
    daemon: bool
    origin: Optional[ThreadOrigin]
    native: bool = False
    owner: Optional[str] = None


# Thread names (``comm``, at most 15 characters) of C libraries that start threads of their own.
_NATIVE_OWNERS = (
    ("rdk:", "librdkafka (confluent-kafka)"),
    # grpc >= 1.5x (EventEngine): event_engine (its thread pool), lifeguard (the pool's
    # watchdog), grpc_global_timer (cut to 15); older grpc: default-executor,
    # resolver-executor, timer_manager
    ("grpc", "grpc"), ("event_engine", "grpc"), ("lifeguard", "grpc"),
    ("default-executo", "grpc"), ("resolver-execut", "grpc"), ("timer_manager", "grpc"),
    ("openblas", "OpenBLAS"), ("omp_", "OpenMP"), ("jemalloc_bg_thd", "jemalloc"),
)


_original_start = threading.Thread.start
_installed = False


# Kernel thread ids of threads Python started. A Python thread that has just finished is gone
# from threading.enumerate() before the kernel lets go of it (gunicorn's control-socket thread,
# stopped by gunicorn's own before-fork hook): it must not pass for a native thread.
_python_tids: "set[int]" = set()


def _start(self: threading.Thread) -> None:
    if enabled():
        try:
            self._postfork_origin = _origin_here()  # type: ignore[attr-defined]
        except Exception:  # recording must never stop a thread from starting
            pass
    _original_start(self)
    native = getattr(self, "native_id", None)
    if native is not None:
        _python_tids.add(native)


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
    """Every thread alive now except the calling one: Python's, then the native ones."""
    me = threading.current_thread()
    found = [
        AliveThread(t.name, t.ident, t.daemon, getattr(t, "_postfork_origin", None))
        for t in threading.enumerate()
        if t is not me
    ]
    _python_tids.update(t.native_id for t in threading.enumerate() if t.native_id is not None)
    return found + native_threads(_python_tids)


def native_threads(known: "set[int]") -> List[AliveThread]:
    """Threads the kernel lists for this process that no Python thread object stands for."""
    try:
        tids = sorted(int(t) for t in os.listdir("/proc/self/task"))
    except OSError:  # not Linux
        return []
    main_comm = _comm(os.getpid())
    found = []
    for tid in tids:
        if tid in known or tid == os.getpid():
            continue
        name = _comm(tid)
        if name is None:
            continue  # ended meanwhile
        owner = next((lib for prefix, lib in _NATIVE_OWNERS if name.startswith(prefix)), None)
        if owner is None and name == main_comm and "numpy" in sys.modules:
            owner = "probably OpenBLAS (numpy is imported; its threads keep the process name)"
        found.append(AliveThread(name, None, True, None, native=True, owner=owner))
    return found


def _comm(tid: int) -> Optional[str]:
    try:
        with open(f"/proc/self/task/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def origin_of_thread(thread: Any) -> Optional[ThreadOrigin]:
    return getattr(thread, "_postfork_origin", None)
