"""Where each client came from: the guard's record of every client of a known family.

While the guard is on, constructing a client of a known family (see
:mod:`postfork._families`) leaves an :class:`Origin`: the pid that built it, its creation site
(the first frame outside the client library and postfork) and its owner (the tracked object
whose method built it: a ``Redis`` builds its ``ConnectionPool``, an ``Engine``'s pool opens
psycopg connections). Only construction is observed; no client call is.

Construction is observed through ``__new__``, never ``__init__``: libraries read their own
``__init__`` (SQLAlchemy routes ``create_engine`` keywords by ``Engine.__init__.__code__``),
so a tracked class keeps its ``__init__`` exactly as the library defined it. The ``__new__``
we add calls the inherited one with what it expects, and carries ``__wrapped__`` pointing at
the class's ``__init__`` so that ``inspect.signature(cls)`` reads as before. A C type whose
construction cannot be observed is tracked at the module-level function that returns it
(psycopg2's ``_connect``).

postfork never imports a client library to track it: classes are patched when their module has
executed (a ``sys.meta_path`` hook) or at once when it is already imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import threading
import weakref
from types import FrameType, ModuleType
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, cast

from .._families import packages, tracked

__all__ = ["Origin", "enable", "enabled", "origin_of", "origins", "observe_site", "is_server_site",
           "format_site", "records"]

# module -> [(attr, leaf)]: classes (or functions) whose construction is recorded. A leaf is
# built by a client for itself later, in one of its methods (a pool connecting, a monitor): it
# belongs to the tracked object whose method is on the stack.
_TARGETS: Dict[str, List[Tuple[str, bool]]] = tracked()

# Objects that wrap a descriptor someone else opened are not built by the application: a socket
# made with ``fileno=`` comes from ``accept()``, ``fromfd()`` or ``dup()`` (a gunicorn worker
# accepting a request), and an inherited descriptor is found from /proc/self/fd anyway. Tracking
# them would cost a stack walk per accepted connection. Value: the ``fileno`` argument's position.
_WRAPS_A_DESCRIPTOR = {("socket", "socket"): 3}

# Frames inside these top-level packages are "the client library" when looking for the
# creation site. Standard-library files that build sockets and threads count as well.
_LIBRARIES = packages()
_STDLIB_MODULES = ("socket", "ssl", "threading", "selectors", "asyncio", "concurrent", "importlib",
                   "contextlib", "functools")
# A client whose creation site lies in one of these was built by the server for itself (Celery's
# broker connection, kombu's redis client, gunicorn's arbiter): never a finding.
_SERVERS = ("gunicorn", "uwsgidecorators", "celery", "billiard", "kombu", "amqp", "vine", "rq",
            "dramatiq", "huey")

_USER_PSEUDO_FILES = ("<string>", "<stdin>", "<console>", "<input>")

_POSTFORK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


class Origin(weakref.ref):  # type: ignore[type-arg]
    """A weak reference to a tracked object, carrying where and by whom it was built."""

    __slots__ = ("pid", "file", "line", "owner")

    pid: int
    file: Optional[str]
    line: int
    owner: Optional["Origin"]

    @property
    def site(self) -> Optional[str]:
        """``path/file.py:LINE`` (relative to the working directory when under it)."""
        origin: Optional[Origin] = self
        while origin is not None and origin.file is None:
            origin = origin.owner  # an owned object was built where its owner was
        return None if origin is None else format_site(origin.file, origin.line)

    def root(self) -> "Origin":
        origin = self
        while origin.owner is not None and origin.owner() is not None:
            origin = origin.owner
        return origin


_on = False
# id(obj) -> Origin. An Origin has no weakref callback (that would cost a Python call each time
# a tracked socket dies, once per accepted request in a worker): dead records are swept when
# the table has doubled since the last sweep, so it stays within twice the live objects.
_records: Dict[int, Origin] = {}
_sweep_at = 1024
# This process's pid, kept here because os.getpid() is a system call: refreshed in the child by
# an at-fork hook and, where a server forks without them (uWSGI), by the guard's observer when
# the resets run, before any application code.
_pid = os.getpid()


def refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


def enabled() -> bool:
    return _on


def enable(on: bool) -> None:
    """Start (or pause) recording. The first start patches the known families."""
    global _on
    if on:
        _install()
    _on = on


def records() -> Dict[int, Origin]:
    return _records


def origin_of(obj: Any) -> Optional[Origin]:
    origin = _records.get(id(obj))
    if origin is not None and origin() is obj:
        return origin
    return next((o for o in _held_origins() if o() is obj), None)


def origins() -> List[Origin]:
    """Every live tracked object's origin: the weakly referenced ones oldest first, then the
    ones that cannot be (they hold their object until the list is dropped)."""
    return [o for o in list(_records.values()) if o() is not None] + _held_origins()


def _sweep() -> None:
    global _sweep_at
    for key, origin in list(_records.items()):
        if origin() is None:
            del _records[key]
    _sweep_at = max(1024, 2 * len(_records))


# -- creation sites ------------------------------------------------------------------------

_library_cache: Dict[str, bool] = {}


def _module_bases(name: str) -> List[str]:
    """The directory of a package (or the file of a module) when it is imported, else nothing.
    A namespace package (``opentelemetry``: no ``__init__``, no ``__file__``) has one directory
    per distribution that contributes to it."""
    module = sys.modules.get(name)
    path: Optional[str] = getattr(module, "__file__", None)
    if not path:
        return [str(p).rstrip(os.sep) + os.sep for p in getattr(module, "__path__", ())]
    if os.path.basename(path).startswith("__init__."):
        return [os.path.dirname(path) + os.sep]
    return [path]


def _is_library(filename: str) -> bool:
    known = _library_cache.get(filename)
    if known is None:
        # A file is first seen in a frame only once its package is imported, so computing the
        # prefixes on a miss (a new file: rare) is enough. Code with no file ("<frozen
        # importlib._bootstrap>", "<sqlalchemy generated ... wrapper>") is a library's, but for
        # the application's own: python -c, the interactive prompt.
        prefixes = [_POSTFORK_DIR]
        for name in _LIBRARIES + _STDLIB_MODULES:
            prefixes += _module_bases(name)
        known = filename.startswith(tuple(prefixes)) or filename.startswith("<")
        _library_cache[filename] = known
    return known


def _is_library_frame(frame: FrameType) -> bool:
    filename = frame.f_code.co_filename
    if filename not in _USER_PSEUDO_FILES:
        return _is_library(filename)
    # "<string>" is python -c's code, and also code a library generated with exec() (SQLAlchemy
    # 2 on CPython 3.10 names its create_engine() wrapper so): the module it runs in decides.
    module = str(frame.f_globals.get("__name__", "")).split(".")[0]
    return module in _LIBRARIES or module in _STDLIB_MODULES or module == "postfork"


def observe_site(frame: Optional[FrameType], leaf: bool
                 ) -> Tuple[Optional[Origin], Optional[str], int]:
    """(owner, file, line) for an object being built with ``frame`` as its builder's frame.

    Walks out of the client libraries to the first frame of the application: that is the
    creation site. On the way, a library method of a tracked object makes that object the
    owner (then no site of its own is needed): ``__init__`` always (a ``Redis`` building its
    pool), any method for a leaf (an ``Engine`` connecting). A thread that never leaves the
    libraries belongs to whoever started it (a pool's worker thread connecting for its pool).
    """
    while frame is not None:
        code = frame.f_code
        if not _is_library_frame(frame):
            return None, code.co_filename, frame.f_lineno
        if code.co_argcount and code.co_varnames[0] == "self" and (leaf or code.co_name == "__init__"):
            me = frame.f_locals.get("self")
            origin = _records.get(id(me))
            if origin is not None and origin() is me:
                return origin, None, 0
        frame = frame.f_back
    thread_origin = getattr(threading.current_thread(), "_postfork_origin", None)
    return getattr(thread_origin, "owner", None), None, 0


def format_site(file: Optional[str], line: int) -> Optional[str]:
    if file is None:
        return None
    try:
        rel = os.path.relpath(file)
        if not rel.startswith(".." + os.sep):
            file = rel
    except ValueError:
        pass
    return f"{file}:{line}"


def is_server_site(file: Optional[str]) -> bool:
    """True when ``file`` belongs to a prefork server's own packages (gunicorn, Celery...)."""
    if file is None:
        return False
    for name in _SERVERS:
        if any(file.startswith(base) for base in _module_bases(name)):
            return True
    return False


def _site(frame: FrameType, leaf: bool) -> Tuple[Optional[Origin], Optional[str], int]:
    code = frame.f_code
    if _library_cache.get(code.co_filename) is False:  # built by the application itself
        return None, code.co_filename, frame.f_lineno
    return observe_site(frame, leaf)


def _record(obj: Any, frame: FrameType, leaf: bool) -> None:
    try:
        origin = Origin(obj)
    except TypeError:  # not weakly referenceable: never hold a client strongly
        return
    origin.pid = _pid
    origin.owner, origin.file, origin.line = _site(frame, leaf)
    _records[id(obj)] = origin
    if len(_records) > _sweep_at:
        _sweep()


# -- objects that cannot be weakly referenced ------------------------------------------------
#
# A static C type's instances (confluent-kafka's Producer) have no weak references, and holding
# one strongly would keep a client (its threads, its connections) alive. Their construction is
# noted by id: id -> (pid, owner, file, line). Whether such an object still lives is learned
# when the inventory is read, from the collector's list of live objects (these types are
# tracked by it), and a record whose object is gone is dropped then: a new object at the same
# address went through tp_new and replaced the record.

_handles: Dict[int, Tuple[int, Optional[Origin], Optional[str], int]] = {}
_handle_types: Tuple[type, ...] = ()


class _Anchor:
    """What every HeldOrigin weakly refers to (a weakref needs a referent): lives forever."""

    __slots__ = ("__weakref__",)


_ANCHOR = _Anchor()


class HeldOrigin(Origin):
    """The origin of a live object that cannot be weakly referenced, made for one reading of
    the inventory and dropped with it: it holds the object strongly."""

    __slots__ = ("_obj",)

    _obj: Any

    def __call__(self) -> Any:
        return self._obj


def _record_handle(obj: Any, frame: FrameType, leaf: bool) -> None:
    if not _on:
        # A record left by an object that died at this address would name this one.
        _handles.pop(id(obj), None)
        return
    if type(obj).__weakrefoffset__:  # a Python subclass: tracked like any other object
        if id(obj) not in _records:
            _record(obj, frame, leaf)
        return
    owner, file, line = _site(frame, leaf)
    _handles[id(obj)] = (_pid, owner, file, line)


class one_look:
    """While the guard reads the inventory (several passes over the origins), the collector's
    list is scanned once: ``with one_look(): ...``."""

    depth = 0
    held: Optional[List[Origin]] = None

    def __enter__(self) -> None:
        one_look.depth += 1

    def __exit__(self, *_: Any) -> None:
        one_look.depth -= 1
        if not one_look.depth:
            one_look.held = None  # the objects are held strongly: only for this look


def _held_origins() -> List[Origin]:
    if not _handles:
        return []
    if one_look.held is not None:
        return one_look.held
    import gc

    held: List[Origin] = []
    for obj in gc.get_objects():
        if issubclass(type(obj), _handle_types):
            record = _handles.get(id(obj))
            if record is None:
                continue
            origin = HeldOrigin(_ANCHOR)
            origin._obj = obj
            origin.pid, origin.owner, origin.file, origin.line = record
            held.append(origin)
    for key in set(_handles) - {id(o()) for o in held}:
        del _handles[key]  # its object is gone
    if one_look.depth:
        one_look.held = held
    return held


# -- patching ------------------------------------------------------------------------------

def _wrap_new(cls: type, leaf: bool, fileno_at: Optional[int] = None) -> None:
    own = cls.__dict__.get("__new__")
    if getattr(getattr(own, "__func__", own), "__postfork_wrapped__", False):
        return
    inherited: Any = cls.__new__  # the function type.__call__ would call (object.__new__: takes cls only)
    plain = inherited is object.__new__

    def __new__(klass: Any, *args: Any, **kwargs: Any) -> Any:
        obj = inherited(klass) if plain else inherited(klass, *args, **kwargs)
        if _on and (fileno_at is None or (len(args) <= fileno_at and kwargs.get("fileno") is None)):
            # frame 1 is the code that called cls(...): type.__call__ has no Python frame
            _record(obj, sys._getframe(1), leaf)
        return obj

    __new__.__postfork_wrapped__ = True  # type: ignore[attr-defined]
    # inspect.signature(cls) unwraps a class's own __new__: let it find __init__, as before.
    __new__.__wrapped__ = getattr(cls, "__init__")  # type: ignore[attr-defined]
    __new__.__qualname__ = f"{cls.__qualname__}.__new__"
    __new__.__module__ = cls.__module__
    cls.__new__ = staticmethod(__new__)  # type: ignore[assignment]


_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement, not by C


def _wrap_static(cls: type, leaf: bool) -> None:
    """A type defined in C (see :mod:`._static`): observed at its ``tp_new`` slot."""
    global _handle_types
    if cls in _handle_types:
        return
    from ._static import wrap_tp_new

    if wrap_tp_new(cls, lambda obj, frame: _record_handle(obj, frame, leaf)):
        _handle_types += (cls,)


def _wrap_function(module: ModuleType, name: str, leaf: bool) -> None:
    original = getattr(module, name)
    if getattr(original, "__postfork_wrapped__", False):
        return

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        obj = original(*args, **kwargs)
        if _on and id(obj) not in _records:
            _record(obj, sys._getframe(1), leaf)
        return obj

    wrapper.__postfork_wrapped__ = True  # type: ignore[attr-defined]
    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    wrapper.__name__ = getattr(original, "__name__", name)
    wrapper.__doc__ = getattr(original, "__doc__", None)
    setattr(module, name, wrapper)


def _patch(module: ModuleType) -> None:
    for name, leaf in _TARGETS.get(module.__name__, ()):
        target = getattr(module, name, None)
        if isinstance(target, type) and not target.__flags__ & _HEAPTYPE:
            _wrap_static(target, leaf)
        elif isinstance(target, type):
            _wrap_new(target, leaf, _WRAPS_A_DESCRIPTOR.get((module.__name__, name)))
        elif callable(target):
            _wrap_function(module, name, leaf)


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then patches the module it executed."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[ModuleType]:
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _patch(module)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of the modules in _TARGETS."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Optional[ModuleType] = None
                  ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname not in _TARGETS or fullname in _finding:
            return None
        _finding.add(fullname)
        try:
            spec: Optional[importlib.machinery.ModuleSpec] = None
            for finder in sys.meta_path:
                if finder is self:
                    continue
                find = getattr(finder, "find_spec", None)
                spec = cast("Optional[importlib.machinery.ModuleSpec]",
                            find(fullname, path, target) if find is not None else None)
                if spec is not None:
                    break
            else:
                return None
        finally:
            _finding.discard(fullname)
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PatchingLoader(spec.loader)
        return spec


_finding: Set[str] = set()
_installed = False


def _install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=refresh_pid)
    sys.meta_path.insert(0, _Finder())
    for name in _TARGETS:
        module = sys.modules.get(name)
        if module is not None:
            _patch(module)
