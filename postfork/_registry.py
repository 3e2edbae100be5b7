"""The registry: what to reset in a forked child, in the order it was registered.

Modelled on ``multiprocessing.util.register_after_fork``: objects are held by weak reference
where their type allows (a collected object simply leaves), else strongly; a failing reset is
logged and recorded, never propagated, so it cannot stop the others (strict mode raises only
after every reset ran). ``reset_all`` runs once per process; ``os.register_at_fork`` calls it
in every child, and the server integrations call it again, which is then a no-op.

The registry knows nothing of the guard: observers (the guard, once switched on) are told
after the resets ran and may then fill in and judge the report.

Locks, as ``logging`` does them: one ``RLock`` guards the table, is held only for dictionary
work (never while a reset, a finalizer or user code runs, and never while a reference is
dropped: that can run a weakref callback), and is re-created in the child, where a parent
thread may have held it at fork. A weakref callback takes no lock at all: it only notes the
dead key, and the next change removes the entry.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import weakref

from . import _settings
from ._contract import Adapter, as_adapter, no_close
from ._errors import ResetError
from ._imports import repair as repair_imports
from ._locks import renew
from ._lookup import calls_for, find_adapter, qualname, type_name
from ._report import Entry, Report

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs 3 ms at startup
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Set, Tuple, TypeVar

    T = TypeVar("T")
    F = TypeVar("F", bound=Callable[[], Any])

    class Observer(Protocol):
        def after_resets(self, report: Report) -> None: ...

        def verdict(self, report: Report) -> None: ...

__all__ = ["register", "unregister", "after_fork", "reset_all", "close_all", "registered",
           "REGISTRY", "Registry", "log", "install_hook"]

class _Log:
    """The ``postfork`` logger; ``logging`` is imported by :func:`install_hook`, not by
    ``import postfork`` (it is most of what importing postfork would cost)."""

    def __getattr__(self, name: str) -> Any:
        import logging

        return getattr(logging.getLogger("postfork"), name)


log = _Log()


class _Registration:
    """One managed object (or callback) and its adapter."""

    __slots__ = ("ref", "adapter", "name")

    def __init__(self, ref: Callable[[], Any], adapter: Adapter, name: str) -> None:
        self.ref = ref  # a weakref.ref, or a callable holding the object strongly
        self.adapter = adapter
        self.name = name


class _Strong:
    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __call__(self) -> Any:
        return self.obj


class Registry:
    def __init__(self) -> None:
        self._entries: Dict[int, _Registration] = {}  # id(obj) -> registration; dicts keep order
        self._dead: List[int] = []  # keys whose object was collected: removed at the next change
        self._lock = threading.RLock()
        self._report: Optional[Report] = None  # the last run, for this process only
        self.observers: List[Observer] = []

    # -- registering ------------------------------------------------------------------------

    def add(self, obj: Any, adapter: Adapter, name: str, strong: bool = False) -> None:
        _settings.check()  # a bad POSTFORK_GUARD/POSTFORK_STRICT fails here, not silently later
        install_hook()
        key = id(obj)
        ref: Callable[[], Any]
        try:
            if strong:
                raise TypeError
            ref = weakref.ref(obj, self._note_dead(key))
        except TypeError:  # e.g. a psycopg2 connection, or asked for: hold it strongly
            ref = _Strong(obj)
        with self._lock:
            self._flush()
            old = self._entries.get(key)
            if old is not None and old.ref() is obj:  # registering twice keeps one entry
                dropped: Any = old.adapter
                old.adapter, old.name = adapter, name
            else:
                dropped = old
                self._entries[key] = _Registration(ref, adapter, name)
        # Released outside the lock: the old adapter (a user's reset closing over another
        # registered object) may hold the last reference to something with a finalizer.
        del dropped

    def _note_dead(self, key: int) -> Callable[[Any], None]:
        dead = self._dead

        def died(_: Any) -> None:
            dead.append(key)  # no lock: a collection can run inside any method of ours

        return died

    def _flush(self) -> None:
        """Drop the entries of collected objects (called with the lock held)."""
        while self._dead:
            key = self._dead.pop()
            entry = self._entries.get(key)
            if entry is not None and entry.ref() is None:
                del self._entries[key]

    def remove(self, obj: Any) -> bool:
        with self._lock:
            self._flush()
            entry = self._entries.get(id(obj))
            if entry is None or entry.ref() is not obj:
                return False
            removed = self._entries.pop(id(obj))
        del removed  # outside the lock, as in add()
        return True

    def __contains__(self, obj: Any) -> bool:
        entry = self._entries.get(id(obj))
        return entry is not None and entry.ref() is obj

    def live(self) -> List[Tuple[Any, _Registration]]:
        """(object, registration) for every live entry, in registration order."""
        out = []
        for entry in list(self._entries.values()):
            obj = entry.ref()
            if obj is not None:
                out.append((obj, entry))
        return out

    def objects(self) -> List[Any]:
        """The live managed objects, in order (callbacks and ``local`` objects included)."""
        return [obj for obj, _ in self.live()]

    def managed(self) -> Iterator[Any]:
        """Every object a registered reset covers: the registered ones and what their adapters
        declare they manage (a ``local``'s instances). Touches nothing else of any object."""
        for obj, entry in self.live():
            yield obj
            manages = entry.adapter.manages
            if manages is not None:
                yield from manages(obj)

    def names(self) -> List[str]:
        return [entry.name for _, entry in self.live()]

    def last(self) -> Optional[Report]:
        """This process's report, if the resets ran here."""
        report = self._report
        return report if report is not None and report.pid == os.getpid() else None

    def state(self) -> Tuple[Dict[int, _Registration], Optional[Report]]:
        """For tests: everything :meth:`restore` puts back."""
        return dict(self._entries), self._report

    def restore(self, state: Tuple[Dict[int, _Registration], Optional[Report]]) -> None:
        with self._lock:
            self._entries.clear()
            self._entries.update(state[0])
            self._dead.clear()
            self._report = state[1]

    # -- running ----------------------------------------------------------------------------

    def run(self, force: bool = False, forked_here: bool = False) -> Report:
        pid = os.getpid()
        report = self._report
        if report is None or report.pid != pid or force:
            first = report is None or report.pid != pid
            report = self._report = Report(pid=pid)
            started = time.perf_counter()
            if first:
                # Before any reset (resets may import): imports a vanished thread had in flight.
                report.imports = repair_imports(forked_here)
            entries = report.entries
            # The cyclic collector waits while the resets run in a new child: their new locks
            # and lists would trigger collections, and each walks (and writes to) every object
            # the master built: copy-on-write faults across the inherited heap, half of the
            # reset time with 10,000 clients. gc.disable() only clears a flag (no lock).
            paused = first and gc.isenabled()
            if paused:
                gc.disable()
            try:
                for obj, entry in self.live():
                    entries.append(run_one(entry.name, entry.adapter, obj))
            finally:
                if paused:
                    gc.enable()
            try:
                for observer in list(self.observers):
                    observer.after_resets(report)  # may raise: warnings turned into errors
            finally:
                report.seconds = time.perf_counter() - started
            if report.failed:
                log.warning("%s", report)
            else:
                log.debug("%s", report)
        if report.failed and _settings.strict():
            raise ResetError(report)
        for observer in list(self.observers):
            observer.verdict(report)
        return report

    def close(self) -> Report:
        """Close this process's own clients gracefully, last registered first (a worker that
        exits says goodbye on its own connections; the master's are never touched here because
        the integrations call this only in the worker)."""
        report = Report(pid=os.getpid())
        started = time.perf_counter()
        for obj, entry in reversed(self.live()):
            if entry.adapter.close is not no_close:
                report.entries.append(_run(entry.name, entry.adapter.close, obj, False))
        report.seconds = time.perf_counter() - started
        return report

    def before_fork(self) -> None:
        # Adapters with a ``before_fork`` (files: flush the buffer so that the child cannot
        # write the parent's pending bytes a second time) run here, in the parent.
        for obj, entry in self.live():
            hook = entry.adapter.before_fork
            if hook is not None:
                try:
                    hook(obj)
                except Exception:
                    log.exception("postfork: before-fork hook of %s failed", entry.name)

    def after_fork_in_child(self) -> None:
        # A thread of the parent may have held the registry lock at fork; it never releases it.
        renew(self, "_lock")
        try:
            self.run(forked_here=True)
        except Exception:  # noqa: BLE001 - Python would print it and go on; the integration's
            pass  # own reset_all() call raises it again (strict mode), where a server logs it


def _run(name: str, func: Callable[[Any], Any], obj: Any, retires: bool) -> Entry:
    started = time.perf_counter()
    try:
        func(obj)
    except Exception as exc:
        log.error("postfork: reset of %s failed in pid %d", name, os.getpid(), exc_info=True)
        return Entry(name, False, exc, time.perf_counter() - started)
    return Entry(name, True, None, time.perf_counter() - started, retires)


def run_one(name: str, adapter: Adapter, obj: Any) -> Entry:
    """Run ``adapter``'s reset of ``obj``, recording (never raising) its failure."""
    return _run(name, adapter.reset, obj, adapter.retires)


REGISTRY = Registry()

_told_retired: Set[str] = set()


def _tell_retired(obj: Any) -> None:
    """Once per type and process: registering an object its adapter can only retire."""
    name = type_name(obj)
    if name in _told_retired:
        return
    _told_retired.add(name)
    log.warning(
        "postfork: a registered %s cannot be reused in a forked worker (it cannot reconnect "
        "without network I/O): postfork retires it in each worker, where using it raises "
        "postfork.RetiredError. For one per process use postfork.local(lambda: %s).",
        name, calls_for(obj))


def _no_adapter(obj: Any) -> TypeError:
    cls = type(obj)
    calls = calls_for(obj)
    return TypeError(
        f"postfork has no adapter for {qualname(cls)}. Build one per process instead: "
        f"postfork.local(lambda: {calls}), so that each worker opens its own. (Only if you "
        f"know how to make an inherited one safe, pass postfork.register(obj, reset=...): the "
        f"reset runs in the child on the inherited object and may only drop what it inherited "
        f"and re-create its locks; calling close() or sending anything on its socket ends the "
        f"master's connection too. A library can add an adapter with "
        f"@postfork.adapter('{qualname(cls)}').)"
    )


def register(obj: T, reset: Any = None, *, name: Optional[str] = None) -> T:
    """Manage ``obj``: in every process forked from now on, ``reset(obj)`` runs before the
    application uses it again. Without ``reset`` the adapter for ``type(obj)`` is used.
    Returns ``obj``."""
    if obj is None or isinstance(obj, type):
        what = "None" if obj is None else f"the class {qualname(obj)}"
        raise TypeError(
            f"postfork.register() takes a client instance, got {what}. Register the object "
            f"you built, e.g. postfork.register(redis.Redis(...)), or use "
            f"postfork.local(factory) to build one per process."
        )
    if name is not None and not isinstance(name, str):
        raise TypeError(f"postfork.register(obj, name=...) takes a str, got {name!r}")
    if reset is None:
        found = find_adapter(type(obj))
        if found is None:
            raise _no_adapter(obj)
    else:
        found = as_adapter(reset, "postfork.register(obj, reset=...)")
    if found.retires:
        _tell_retired(obj)
    REGISTRY.add(obj, found, name or type_name(obj))
    return obj


def unregister(obj: Any) -> bool:
    """Stop managing ``obj`` (an object, or an ``after_fork`` function). True when it was."""
    return REGISTRY.remove(obj)


def _call(func: Callable[[], Any]) -> None:
    func()


_CALLBACK = Adapter(_call, close=no_close)


def after_fork(func: F) -> F:
    """Decorator: ``func()`` runs in every child forked from now on, in registration order.

    The function is held strongly (like ``atexit``), so a lambda or a closure stays registered;
    registering it again keeps one entry, and ``unregister(func)`` removes it.
    """
    if not callable(func):
        raise TypeError(f"postfork.after_fork() decorates a function taking no argument; got {func!r}")
    name = getattr(func, "__qualname__", None) or repr(func)
    REGISTRY.add(func, _CALLBACK, name, strong=True)
    return func


def close_all() -> Report:
    """Close every managed client of this process gracefully (``obj.close()`` or the
    adapter's ``close``), last registered first; for a worker that exits. Errors are recorded
    and logged, never raised."""
    return REGISTRY.close()


def registered(obj: Any) -> bool:
    """True when ``obj`` is managed (by :func:`register`, :func:`after_fork` or as a ``local``)."""
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
    if not isinstance(force, bool):
        raise TypeError(f"postfork.reset_all(force=...) takes True or False, got {force!r}")
    _settings.check()
    return REGISTRY.run(force=force)


_hooked = False


def install_hook() -> None:
    """Install the at-fork hook that runs the resets in every child: at the first registration
    (or when the guard is switched on), not at import, and always after ``logging``'s.

    At-fork child hooks run in the order they were registered, and logging's re-creates its
    handlers' locks. A failing reset logs from our hook; had ours run first, a handler lock a
    parent thread held at fork would hang the child. So ``logging`` is imported first, here:
    an application that registers nothing pays for neither."""
    global _hooked
    if _hooked or not hasattr(os, "register_at_fork"):  # Windows has no fork
        return
    _hooked = True
    import logging  # noqa: F401 - for its at-fork hook, registered before ours

    os.register_at_fork(before=REGISTRY.before_fork, after_in_child=REGISTRY.after_fork_in_child)
