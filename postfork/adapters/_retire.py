"""Retiring an inherited descriptor without touching the parent's connection."""

from __future__ import annotations

import os
import socket
from typing import Any, Dict, Iterable, List, Tuple

from .._errors import retired_error

__all__ = ["retire_fd", "retire_methods", "public_methods"]


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
    kind = f"{type(obj).__module__.split('.')[0]}.{type(obj).__qualname__}"
    message = (
        f"postfork retired this {kind} in pid {os.getpid()}: it was inherited from the parent "
        f"process and cannot be reconnected without network I/O, and using the parent's "
        f"connection from here would corrupt it. Build one per process instead: "
        f"postfork.local(lambda: {calls})"
    )

    def retired(*args: Any, **kwargs: Any) -> Any:
        raise retired_error(message, *library_errors)

    for name in names:
        setattr(obj, name, retired)


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
