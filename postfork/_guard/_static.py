"""Construction of a static C type, observed through its ``tp_new`` slot.

A type defined in C with a static ``PyTypeObject`` (confluent-kafka's ``Producer`` and
``Consumer``) refuses new attributes, so no ``__new__`` can be added to it, and its instances
cannot be weakly referenced. For such a type the guard replaces the pointer in its ``tp_new``
slot with a ctypes callback that calls the original function and then reports the new object:
nothing Python code can see changes (``Producer.__new__`` is still the binding's builtin, the
type's dict, flags and instances are untouched, ``type(p) is cimpl.Producer``).

The slot's offset comes from ``PyTypeObject``'s layout, the same from CPython 3.8 to 3.13 in a
regular build; it is checked against the fields Python exposes (``__basicsize__``,
``__itemsize__``, ``__flags__``, ``__base__``, ``__dictoffset__``) and, on any difference (a
debug or free-threaded build), the type is left alone: the guard does not know it, as before.

Limit: the original ``tp_new`` only allocates; if it fails (``MemoryError``), ctypes reports the
error as unraisable and the caller gets a ``SystemError`` instead.
"""

from __future__ import annotations

import ctypes
import sys
from types import FrameType
from typing import Any, Callable, List

__all__ = ["wrap_tp_new"]

_P = ctypes.sizeof(ctypes.c_void_p)
# Word indexes in PyTypeObject (Include/cpython/object.h): the 3-word object header, then
# tp_name at 3 ... tp_flags at 21, tp_base at 32, tp_dictoffset at 36, tp_new at 39.
_BASICSIZE, _ITEMSIZE, _FLAGS, _BASE, _DICTOFFSET, _NEW = 4, 5, 21, 32, 36, 39

_NewFunc = ctypes.CFUNCTYPE(ctypes.py_object, ctypes.py_object, ctypes.py_object, ctypes.c_void_p)
# The original is called with the GIL held (PYFUNCTYPE), and its error, if any, raised here.
_CallNew = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.py_object, ctypes.py_object, ctypes.c_void_p)

# The callbacks a slot points into: they must live as long as the process.
_kept: List[Any] = []


def _word(cls: type, index: int) -> int:
    return int(ctypes.c_ssize_t.from_address(id(cls) + index * _P).value)


def _layout_is_known(cls: type) -> bool:
    return (_word(cls, _BASICSIZE) == cls.__basicsize__
            and _word(cls, _ITEMSIZE) == cls.__itemsize__
            and ctypes.c_ulong.from_address(id(cls) + _FLAGS * _P).value == cls.__flags__
            and _word(cls, _BASE) == id(cls.__base__)
            and _word(cls, _DICTOFFSET) == cls.__dictoffset__)


def wrap_tp_new(cls: type, observe: Callable[[Any, FrameType], None]) -> bool:
    """Call ``observe(obj, caller's frame)`` for every object the static type ``cls`` (or a
    subclass that inherits its ``tp_new``) builds; the caller has told static from heap types.
    False, and nothing changed, when the layout is not the one known here."""
    if not _layout_is_known(cls):
        return False
    slot = ctypes.c_void_p.from_address(id(cls) + _NEW * _P)
    address = slot.value
    if not address:
        return False
    original = _CallNew(address)

    def tp_new(subtype: Any, args: Any, kwargs: Any) -> Any:
        obj = original(subtype, args, kwargs)
        try:
            observe(obj, sys._getframe(1))  # frame 1 called cls(...): type.__call__ has none
        except Exception:  # noqa: BLE001 - never let the guard break a construction
            pass
        return obj

    callback = _NewFunc(tp_new)
    _kept.append((callback, original))
    new = ctypes.cast(callback, ctypes.c_void_p).value
    # Subclasses made before this copied the original pointer: give them the same one, or
    # ``cls.__new__(subclass)`` would find their tp_new differs from cls's and refuse.
    todo = [cls]
    while todo:
        klass = todo.pop()
        cell = ctypes.c_void_p.from_address(id(klass) + _NEW * _P)
        if cell.value == address:
            cell.value = new
        todo.extend(klass.__subclasses__())
    return True
