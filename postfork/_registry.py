"""The registry: what to reset in a forked child, in the order it was registered.

Modelled on ``multiprocessing.util.register_after_fork``: objects are held by weak reference
where their type allows (a collected object simply leaves), else strongly; a failing reset is
logged and recorded, never propagated, so it cannot stop the others (strict mode raises only
after every reset ran). ``reset_all`` runs once per process; ``os.register_at_fork`` calls it
in every child, and the server integrations call it again, which is then a no-op.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
import weakref

from ._adapters import find_adapter
from ._errors import ForkSafetyError, ResetError
from ._report import Entry, Report

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs 3 ms at startup
if TYPE_CHECKING:
    from logging import Logger
    from typing import Any, Callable, Dict, List, Optional, TypeVar

    T = TypeVar("T")
    F = TypeVar("F", bound=Callable[[], Any])

__all__ = ["register", "unregister", "after_fork", "reset_all", "close_all", "registered", "log"]


def log() -> Logger:
    """The ``postfork`` logger. ``logging`` is imported on first use, not with postfork: a
    failure always logs, but a clean run logs its summary only where the application has
    imported logging (elsewhere no handler could have been configured to show it)."""
    import logging

    return logging.getLogger("postfork")


class _Registration:
    """One managed object (or callback) and how to reset it."""

    __slots__ = ("ref", "reset", "name", "__weakref__")

    def __init__(self, ref: Callable[[], Any], reset: Callable[[Any], Any], name: str) -> None:
        self.ref = ref  # a weakref.ref, or a lambda holding the object strongly
        self.reset = reset
        self.name = name


class Registry:
    def __init__(self) -> None:
        self._entries: Dict[int, _Registration] = {}  # id(obj) -> registration; dicts keep order
        self._lock = threading.Lock()
        self._report: Optional[Report] = None  # the last run, for this process only

    # -- registering ------------------------------------------------------------------------

    def add(self, obj: Any, reset: Callable[[Any], Any], name: str) -> None:
        key = id(obj)
        try:
            ref: Callable[[], Any] = weakref.ref(obj, functools.partial(self._forget, key))
        except TypeError:  # e.g. a psycopg2 connection: hold it strongly
            ref = functools.partial(_same, obj)
        with self._lock:
            old = self._entries.get(key)
            if old is not None and old.ref() is obj:
                old.reset, old.name = reset, name  # registering twice keeps one entry, in place
            else:
                self._entries[key] = _Registration(ref, reset, name)

    def _forget(self, key: int, dead: Any) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.ref is dead:
                del self._entries[key]

    def remove(self, obj: Any) -> bool:
        with self._lock:
            entry = self._entries.get(id(obj))
            if entry is None or entry.ref() is not obj:
                return False
            del self._entries[id(obj)]
            return True

    def __contains__(self, obj: Any) -> bool:
        entry = self._entries.get(id(obj))
        return entry is not None and entry.ref() is obj

    def objects(self) -> List[Any]:
        """The live managed objects, in order (callbacks and ``local`` objects included)."""
        return [o for o in (e.ref() for e in list(self._entries.values())) if o is not None]

    # -- running ----------------------------------------------------------------------------

    def run(self, force: bool = False) -> Report:
        from . import _guard  # the guard reads the registry, so it is imported late

        pid = os.getpid()
        report = self._report
        if report is None or report.pid != pid or force:
            report = self._report = Report(pid=pid)
            started = time.perf_counter()
            for entry in list(self._entries.values()):
                obj = entry.ref()
                if obj is not None:
                    report.entries.append(_run_one(entry.name, entry.reset, obj))
            _guard.after_resets(report)
            report.seconds = time.perf_counter() - started
            if report.failed:
                log().warning("%s", report)
            elif "logging" in sys.modules:
                log().debug("%s", report)
        if report.failed and _strict():
            raise ResetError(report)
        if report.findings and _guard.mode() == "raise":
            raise ForkSafetyError(report, report.findings)
        return report

    def close(self) -> Report:
        """Close this process's own clients gracefully, last registered first (a worker that
        exits says goodbye on its own connections; the master's are never touched here because
        the integrations call this only in the worker)."""
        report = Report(pid=os.getpid())
        started = time.perf_counter()
        for entry in reversed(list(self._entries.values())):
            obj = entry.ref()
            closer = getattr(entry.reset, "close", None) or _close_default
            if obj is not None and closer is not _no_close:
                report.entries.append(_run_one(entry.name, closer, obj))
        report.seconds = time.perf_counter() - started
        return report

    def before_fork(self) -> None:
        # Adapters with a ``before_fork`` (files: flush the buffer so that the child cannot
        # write the parent's pending bytes a second time) run here, in the parent.
        for entry in list(self._entries.values()):
            hook = getattr(entry.reset, "before_fork", None)
            obj = entry.ref()
            if hook is not None and obj is not None:
                try:
                    hook(obj)
                except Exception:
                    log().exception("postfork: before-fork hook of %s failed", entry.name)

    def after_fork_in_child(self) -> None:
        # A thread of the parent may have held the registry lock at fork; it never releases it.
        self._lock = threading.Lock()
        try:
            self.run()
        except (ResetError, ForkSafetyError):
            pass  # logged already; the integration's own reset_all() call raises it again


def _same(obj: Any) -> Any:
    return obj


def _run_one(name: str, reset: Callable[[Any], Any], obj: Any) -> Entry:
    started = time.perf_counter()
    try:
        reset(obj)
    except Exception as exc:
        log().error("postfork: reset of %s failed in pid %d", name, os.getpid(), exc_info=True)
        return Entry(name, False, exc, time.perf_counter() - started)
    return Entry(name, True, None, time.perf_counter() - started)


def _close_default(obj: Any) -> None:
    close = getattr(obj, "close", None)
    if callable(close):
        result = close()
        if hasattr(result, "close") and hasattr(result, "send"):  # a coroutine: async client
            result.close()  # nothing to await in a worker that is exiting; do not warn


def _no_close(obj: Any) -> None:
    """Marker: this entry has nothing to close (callbacks)."""


def _strict() -> bool:
    return os.environ.get("POSTFORK_STRICT", "").strip().lower() in ("1", "true", "yes", "on")


def _default_name(obj: Any) -> str:
    cls = type(obj)
    module = cls.__module__.lstrip("_").split(".")[0]
    return f"{module}.{cls.__qualname__}" if module != "builtins" else cls.__qualname__


REGISTRY = Registry()


def register(obj: T, reset: Optional[Callable[[T], Any]] = None, *, name: Optional[str] = None) -> T:
    """Manage ``obj``: in every process forked from now on, ``reset(obj)`` runs before the
    application uses it again. Without ``reset`` the adapter for ``type(obj)`` is used.
    Returns ``obj``."""
    if obj is None or isinstance(obj, type):
        what = "None" if obj is None else f"the class {obj.__module__}.{obj.__qualname__}"
        raise TypeError(
            f"postfork.register() takes a client instance, got {what}. Register the object "
            f"you built, e.g. postfork.register(redis.Redis(...)), or use "
            f"postfork.local(factory) to build one per process."
        )
    if reset is None:
        reset = find_adapter(type(obj))
        if reset is None:
            cls = type(obj)
            raise TypeError(
                f"postfork has no adapter for {cls.__module__}.{cls.__qualname__}. Either pass "
                f"the reset yourself: postfork.register(obj, reset=lambda o: ...), or build one "
                f"per process instead: postfork.local(lambda: {cls.__qualname__}(...)). "
                f"(A library can add an adapter with @postfork.adapter("
                f"'{cls.__module__}.{cls.__qualname__}').)"
            )
    elif not callable(reset):
        raise TypeError(
            f"postfork.register(obj, reset=...) needs a callable taking the object, got "
            f"{reset!r}; e.g. reset=lambda client: client.close()"
        )
    REGISTRY.add(obj, reset, name or _default_name(obj))
    return obj


def unregister(obj: Any) -> bool:
    """Stop managing ``obj``. True when it was registered."""
    return REGISTRY.remove(obj)


def after_fork(func: F) -> F:
    """Decorator: ``func()`` runs in every child forked from now on, in registration order.

    The function is held strongly (like ``atexit``), so a lambda or a closure stays registered.
    """
    if not callable(func):
        raise TypeError(f"postfork.after_fork() decorates a function taking no argument; got {func!r}")
    name = getattr(func, "__qualname__", None) or repr(func)
    REGISTRY.add(_Callback(func), _Callback.call, name)
    return func


class _Callback:
    """Holds an ``after_fork`` function strongly, under a registry entry of its own."""

    __slots__ = ("func",)  # no __weakref__: the registry holds it strongly

    def __init__(self, func: Callable[[], Any]) -> None:
        self.func = func

    def call(self) -> None:
        self.func()

    call.close = _no_close  # type: ignore[attr-defined]


def close_all() -> Report:
    """Close every managed client of this process gracefully (``obj.close()`` or the
    adapter's ``close``), last registered first; for a worker that exits. Errors are recorded
    and logged, never raised."""
    return REGISTRY.close()


def registered(obj: Any) -> bool:
    """True when ``obj`` is managed (by :func:`register` or as a ``local``)."""
    return obj in REGISTRY


def reset_all(*, force: bool = False) -> Report:
    """Run every registered reset, ``after_fork`` callback and ``local`` invalidation once in
    this process, in registration order, and return the :class:`Report`.

    A second call in the same process runs nothing and returns the same report, unless
    ``force``. Failures are logged on the ``postfork`` logger and recorded; with
    ``POSTFORK_STRICT=1`` :class:`ResetError` is raised after every reset ran (and on every
    later call in this process), and the guard in ``raise`` mode raises
    :class:`ForkSafetyError` for its findings.
    """
    return REGISTRY.run(force=force)


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(before=REGISTRY.before_fork, after_in_child=REGISTRY.after_fork_in_child)
