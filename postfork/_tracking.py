"""Where each client came from: the guard's record of every client of a known family.

While the guard is on, constructing a client of a known family (a redis ``Redis``, a
``MongoClient``, an SQLAlchemy ``Engine``, a psycopg connection or pool, a ``socket``...) leaves
an :class:`Origin`: the pid that built it, its creation site (the first frame outside the client
library and postfork) and its owner (the tracked object whose construction built it: a
``Redis`` builds its ``ConnectionPool``). Only construction is wrapped; no client call is.

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
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["Origin", "enable", "enabled", "origin_of", "origins", "site_of_caller", "owner_hint",
           "is_server_site", "format_site"]

# Module -> the attributes to wrap there. A class gets its ``__init__`` wrapped (subclasses
# inherit it); a function (psycopg2's C ``_connect``) is replaced in the module's namespace.
_TARGETS: Dict[str, Tuple[str, ...]] = {
    "redis.client": ("Redis", "PubSub"),
    "redis.connection": ("ConnectionPool",),
    "redis.cluster": ("RedisCluster",),
    "redis.asyncio.client": ("Redis", "PubSub"),
    "redis.asyncio.connection": ("ConnectionPool",),
    "pymongo.synchronous.mongo_client": ("MongoClient",),
    "pymongo.mongo_client": ("MongoClient",),  # PyMongo < 4.9 defines it here
    "sqlalchemy.engine.base": ("Engine",),
    "sqlalchemy.ext.asyncio.engine": ("AsyncEngine",),
    "psycopg.connection": ("Connection",),
    "psycopg_pool.pool": ("ConnectionPool",),
    # psycopg2's connection is a C type whose __init__ cannot be replaced; psycopg2.connect()
    # calls the module global ``_connect``, so wrapping that catches every connection it makes.
    "psycopg2": ("_connect",),
    "psycopg2.pool": ("AbstractConnectionPool",),
    "socket": ("socket",),
}

# Connections that a client builds for itself later, in one of its methods (an Engine's pool
# connecting, a MongoClient's monitor): owned by the tracked object whose method is on the stack.
_LEAVES = {("socket", "socket"), ("psycopg.connection", "Connection"), ("psycopg2", "_connect")}

# Objects that wrap a descriptor someone else opened are not built by the application: a socket
# made with ``fileno=`` comes from ``accept()``, ``fromfd()`` or ``dup()`` (a gunicorn worker
# accepting a request), and an inherited descriptor is found from /proc/self/fd anyway. Tracking
# them would cost a stack walk per accepted connection. Value: the ``fileno`` argument's position.
_WRAPS_A_DESCRIPTOR = {("socket", "socket"): 3}

# Frames inside these top-level packages are "the client library" when looking for the
# creation site. Standard-library files that build sockets and threads count as well.
_LIBRARIES = ("redis", "pymongo", "bson", "gridfs", "sqlalchemy", "psycopg", "psycopg_pool",
              "psycopg_binary", "psycopg2", "postfork")
_STDLIB_MODULES = ("socket", "ssl", "threading", "selectors", "asyncio", "concurrent",
                   "contextlib", "functools")
# A client whose creation site lies in one of these was built by the server for itself (Celery's
# broker connection, kombu's redis client, gunicorn's arbiter): never a finding.
_SERVERS = ("gunicorn", "uwsgidecorators", "celery", "billiard", "kombu", "amqp", "vine")

_POSTFORK_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class Origin(weakref.ref):  # type: ignore[type-arg]
    """A weak reference to a tracked object, carrying where and by whom it was built."""

    __slots__ = ("key", "pid", "file", "line", "owner")

    key: int
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
_records: Dict[int, Origin] = {}
_stack = threading.local()  # .objects: the tracked objects under construction in this thread


def enabled() -> bool:
    return _on


def enable(on: bool) -> None:
    """Start (or pause) recording. The first start patches the known families."""
    global _on
    if on:
        _install()
    _on = on


def origin_of(obj: Any) -> Optional[Origin]:
    origin = _records.get(id(obj))
    return origin if origin is not None and origin() is obj else None


def origins() -> List[Origin]:
    """Every live tracked object's origin, oldest first."""
    return [o for o in list(_records.values()) if o() is not None]


def _forget(ref: Origin) -> None:
    if _records.get(ref.key) is ref:
        del _records[ref.key]


def _record(obj: Any, owner: Any, file: Optional[str], line: int) -> None:
    try:
        origin = Origin(obj, _forget)
    except TypeError:  # not weakly referenceable: never hold a client strongly
        return
    origin.key = id(obj)
    origin.pid = os.getpid()
    origin.file = file
    origin.line = line
    origin.owner = owner
    _records[origin.key] = origin


# -- creation sites ------------------------------------------------------------------------

_library_cache: Dict[str, bool] = {}


def _module_base(name: str) -> Optional[str]:
    """The directory of a package (or the file of a module) when it is imported, else None."""
    path = getattr(sys.modules.get(name), "__file__", None)
    if not path:
        return None
    if os.path.basename(path).startswith("__init__."):
        return os.path.dirname(path) + os.sep
    return path


def _is_library(filename: str) -> bool:
    known = _library_cache.get(filename)
    if known is None:
        # A file is first seen in a frame only once its package is imported, so computing the
        # prefixes on a miss (a new file: rare) is enough.
        prefixes = [_POSTFORK_DIR]
        for name in _LIBRARIES + _STDLIB_MODULES:
            base = _module_base(name)
            if base is not None:
                prefixes.append(base)
        known = filename.startswith("<") or filename.startswith(tuple(prefixes))
        _library_cache[filename] = known
    return known


def site_of_caller(depth: int = 1, skip: Any = None) -> Tuple[Optional[str], int]:
    """The first frame outside the client libraries, postfork and the standard-library modules
    that build sockets and threads. ``skip``: an object whose own ``__init__`` frames (a user's
    subclass) are not the site either."""
    frame: Optional[FrameType] = sys._getframe(depth + 1)
    while frame is not None:
        code = frame.f_code
        if not _is_library(code.co_filename):
            if skip is None or code.co_name != "__init__" or frame.f_locals.get("self") is not skip:
                return code.co_filename, frame.f_lineno
        frame = frame.f_back
    return None, 0


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
        base = _module_base(name)
        if base is not None and file.startswith(base):
            return True
    return False


def owner_hint(walk: bool = False) -> Optional[Origin]:
    """Who owns what this thread builds now: the object under construction, else the owner of
    the current thread (a pool's worker thread builds connections for its pool), else with
    ``walk`` a tracked object whose method is on the stack."""
    objects = getattr(_stack, "objects", None)
    if objects:
        return _pending.get(id(objects[-1]))
    thread_origin = getattr(threading.current_thread(), "_postfork_origin", None)
    owner = getattr(thread_origin, "owner", None)
    if owner is None and walk:
        owner = _owner_on_stack()
    return owner


def _owner_on_stack(limit: int = 40) -> Optional[Origin]:
    """A tracked object whose method is on the stack: PyMongo connects and starts monitors
    lazily from ``MongoClient`` methods, an Engine's pool connects in ``Engine.connect()``."""
    frame: Optional[FrameType] = sys._getframe(2)
    while frame is not None and limit:
        if frame.f_code.co_varnames[:1] == ("self",) and _is_library(frame.f_code.co_filename):
            origin = origin_of(frame.f_locals.get("self"))
            if origin is not None:
                return origin
        frame = frame.f_back
        limit -= 1
    return None


# Objects under construction get their Origin before their __init__ runs, so what they build
# can name them as owner; it is published in _records once __init__ returned.
_pending: Dict[int, Origin] = {}


# -- patching ------------------------------------------------------------------------------

def _wrap_init(cls: type, leaf: bool, fileno_at: Optional[int] = None) -> None:
    original = cls.__dict__.get("__init__")
    if original is None or getattr(original, "__postfork_wrapped__", False):
        return

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if (not _on or id(self) in _records or id(self) in _pending
                or (fileno_at is not None and (len(args) > fileno_at
                                               or kwargs.get("fileno") is not None))):
            # off; a subclass's super().__init__() call; or a wrapped existing descriptor
            original(self, *args, **kwargs)
            return
        owner = owner_hint(leaf)
        file, line = (None, 0) if owner is not None else site_of_caller(1, skip=self)
        try:
            origin = Origin(self, _forget)
        except TypeError:
            original(self, *args, **kwargs)
            return
        origin.key, origin.pid, origin.file, origin.line = id(self), os.getpid(), file, line
        origin.owner = owner
        objects = getattr(_stack, "objects", None)
        if objects is None:
            objects = _stack.objects = []
        objects.append(self)
        _pending[origin.key] = origin
        try:
            original(self, *args, **kwargs)
        finally:
            objects.pop()
            del _pending[origin.key]
        _records[origin.key] = origin

    __init__.__postfork_wrapped__ = True  # type: ignore[attr-defined]
    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
        try:
            setattr(__init__, attr, getattr(original, attr))
        except AttributeError:
            pass
    cls.__init__ = __init__  # type: ignore[misc]


def _wrap_function(module: ModuleType, name: str) -> None:
    original = getattr(module, name)
    if getattr(original, "__postfork_wrapped__", False):
        return

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        obj = original(*args, **kwargs)
        if _on and id(obj) not in _records:
            owner = owner_hint(True)
            file, line = (None, 0) if owner is not None else site_of_caller(1)
            _record(obj, owner, file, line)
        return obj

    wrapper.__postfork_wrapped__ = True  # type: ignore[attr-defined]
    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    wrapper.__name__ = getattr(original, "__name__", name)
    wrapper.__doc__ = getattr(original, "__doc__", None)
    setattr(module, name, wrapper)


def _patch(module: ModuleType) -> None:
    for name in _TARGETS.get(module.__name__, ()):
        target = getattr(module, name, None)
        if isinstance(target, type):
            key = (module.__name__, name)
            _wrap_init(target, key in _LEAVES, _WRAPS_A_DESCRIPTOR.get(key))
        elif callable(target):
            _wrap_function(module, name)


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
            for finder in sys.meta_path:
                if finder is self:
                    continue
                find = getattr(finder, "find_spec", None)
                spec = find(fullname, path, target) if find is not None else None
                if spec is not None:
                    break
            else:
                return None
        finally:
            _finding.discard(fullname)
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PatchingLoader(spec.loader)
        return spec


_finding: set = set()
_installed = False


def _install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    sys.meta_path.insert(0, _Finder())
    for name in _TARGETS:
        module = sys.modules.get(name)
        if module is not None:
            _patch(module)
