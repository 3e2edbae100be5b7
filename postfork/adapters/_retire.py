"""Retiring an inherited descriptor without touching the parent's connection."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from .._errors import retired_error

__all__ = ["retire_fd", "retire_methods", "retire_by_class", "public_methods"]


def retire_fd(fd: int) -> None:
    """Make descriptor ``fd`` a dead socket in this process.

    The file description stays the parent's and open there; here ``fd`` now refers to one end
    of a socketpair whose other end is closed, so a read sees EOF and a write fails with EPIPE.
    The number stays taken, so the next socket this process opens cannot get it and a library
    still holding ``fd`` cannot write into an unrelated connection. No ``shutdown()``, no
    protocol goodbye: those would reach the parent's peer.
    """
    dead, other = socket.socketpair()
    other.close()
    try:
        dead.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        os.dup2(dead.fileno(), fd)
    finally:
        dead.close()


def retire_methods(obj: Any, names: Iterable[str], calls: str, *library_errors: type) -> None:
    """Make each method ``names`` of ``obj`` raise :class:`postfork.RetiredError` (also an
    instance of each of ``library_errors``) in this process, by instance attributes that shadow
    the class's methods. The class and every other instance are untouched; ``calls`` is what
    the user writes to build one (``psycopg.connect(dsn)``), for the message."""
    retired = _raiser(obj, calls, library_errors)
    for name in names:
        setattr(obj, name, retired)


def _raiser(obj: Any, calls: str, library_errors: Tuple[type, ...],
            fix: Optional[str] = None, kind: Optional[str] = None) -> Callable[..., Any]:
    kind = kind or f"{type(obj).__module__.split('.')[0]}.{type(obj).__qualname__}"
    message = (
        f"postfork retired this {kind} in pid {os.getpid()}: it was inherited from the parent "
        f"process and cannot be reconnected without network I/O, and using the parent's "
        f"connection from here would corrupt it. "
        + (fix or f"Build one per process instead: postfork.local(lambda: {calls})")
    )

    def retired(*args: Any, **kwargs: Any) -> Any:
        raise retired_error(message, *library_errors)

    return retired


_methods: Dict[type, Tuple[str, ...]] = {}


def public_methods(cls: type) -> Tuple[str, ...]:
    """The public methods of ``cls`` along its MRO, ``close`` excepted: what an application
    calls on an object to use it (for :func:`retire_methods`). Properties are not methods:
    they stay the library's own."""
    names = _methods.get(cls)
    if names is None:
        found: List[str] = []
        for klass in cls.__mro__:
            if klass is object:
                continue
            for name, value in vars(klass).items():
                if (name.startswith("_") or name == "close" or name in found
                        or isinstance(value, (property, type, classmethod, staticmethod))
                        or not callable(value)):
                    continue
                found.append(name)
        names = _methods[cls] = tuple(found)
    return names


_retired_classes: Dict[Tuple[type, Tuple[str, ...]], type] = {}


def retire_by_class(obj: Any, names: Iterable[str], calls: str, *library_errors: type,
                    fix: Optional[str] = None, kind: Optional[str] = None) -> bool:
    """:func:`retire_methods` for an object with no ``__dict__`` (asyncpg's ``Connection``
    has ``__slots__``; confluent-kafka's ``Producer`` is a static C type), where an instance
    attribute cannot shadow a method: ``obj`` becomes an instance of a subclass of its class,
    made once per class, whose methods ``names`` raise :class:`postfork.RetiredError` (also
    each of ``library_errors``). ``isinstance`` checks still hold; the class and every other
    instance are untouched. The subclass adds no slot, so the layout is the same and Python
    allows the ``__class__`` assignment. A static type refuses it (immutable types do) though
    the layout is the same: then the object's type pointer is set as ``__class__`` assignment
    would set it, on CPython with the GIL only, after the same layout checks.

    ``fix``: the message's last sentence, where ``postfork.local(lambda: calls)`` is not the
    way out (an async client, whose factory would have to await); ``kind``: the type's name
    in the message. Returns False when the type could not be changed (nothing was)."""
    cls = type(obj)
    names = tuple(names)
    if cls.__dict__.get("__postfork_retired__"):  # retired already (a forced second reset)
        cls = cls.__mro__[1]
    retired_cls = _retired_classes.get((cls, names))
    if retired_cls is None:
        namespace: Dict[str, Any] = {"__slots__": (), "__module__": cls.__module__,
                                     "__qualname__": cls.__qualname__,
                                     "__postfork_retired__": True}
        for name in names:
            namespace[name] = _retired_method(name)
        meta: Any = type(cls)  # the class's own metaclass (asyncpg's ConnectionMeta)
        retired_cls = meta(cls.__name__, (cls,), namespace)
        _retired_classes[(cls, names)] = retired_cls
    try:
        obj.__class__ = retired_cls
    except TypeError:
        if not _set_type(obj, cls, retired_cls):
            return False
    # Each instance's message names its own kind and this pid.
    _messages[id(obj)] = _raiser(obj, calls, library_errors, fix, kind)
    return True


def _set_type(obj: Any, old: type, new: type) -> bool:
    """``Py_SET_TYPE(obj, new)`` with the reference ``__class__`` assignment takes on a heap
    type, where ``new`` is a subclass of ``old`` of the same layout. CPython with the GIL only
    (the type pointer is the last field of ``PyObject_HEAD`` there)."""
    import ctypes
    import sysconfig

    if (sys.implementation.name != "cpython" or sysconfig.get_config_var("Py_GIL_DISABLED")
            or new.__mro__[1] is not old
            or (new.__basicsize__, new.__itemsize__, new.__dictoffset__, new.__weakrefoffset__)
            != (old.__basicsize__, old.__itemsize__, old.__dictoffset__, old.__weakrefoffset__)):
        return False
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(new))  # the instance's reference to its type
    cell = ctypes.c_void_p.from_address(id(obj) + object.__basicsize__ - ctypes.sizeof(ctypes.c_void_p))
    if cell.value != id(old):  # not where CPython keeps it: leave the object alone
        ctypes.pythonapi.Py_DecRef(ctypes.py_object(new))
        return False
    cell.value = id(new)
    return True


_messages: Dict[int, Callable[..., Any]] = {}  # id(retired object) -> its raiser; kept forever


def _retired_method(name: str) -> Callable[..., Any]:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return _messages[id(self)](*args, **kwargs)

    method.__name__ = name
    return method
