"""Finding the adapter for an object's type.

Keys are qualified class names (``"redis.client.Redis"``), matched along the MRO, so postfork
never imports a client library to find out whether an object belongs to it. Three sources, most
specific class first and, for one class, in this order: :func:`adapter` calls, the entry point
group ``postfork.adapters`` (name = qualified class name, value = a reset callable or an
``Adapter``), and the family table (:mod:`postfork._families`), whose adapter modules are
imported only when an object of theirs is registered.
"""

from __future__ import annotations

import importlib
import sys

from ._contract import Adapter, as_adapter
from ._families import kind_of_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Optional, TypeVar, Union

    R = TypeVar("R", bound=Callable[[Any], Any])

__all__ = ["adapter", "find_adapter", "qualname", "type_name", "calls_for", "fix_for"]

_user: Dict[str, Adapter] = {}
_entry_points: Optional[Dict[str, Any]] = None  # loaded once, on the first miss
_builtin: Dict[str, Adapter] = {}


def qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def type_name(obj: Any) -> str:
    """The name users know a client's type by: ``redis.Redis``-style, ``__main__``'s as is."""
    cls = type(obj)
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    if module not in sys.modules:
        # A C type named for its extension's bare name ("cimpl.Producer"): the package that
        # holds that extension is what users import (confluent_kafka.Producer).
        module = next((name for name, mod in list(sys.modules.items())
                       if name.endswith("." + module) and getattr(mod, cls.__name__, None) is cls),
                      module)
    if module != "__main__":
        module = module.lstrip("_").split(".")[0] or module
    return f"{module}.{cls.__qualname__}"


def calls_for(obj: Any) -> str:
    """What the user writes to build one like ``obj`` (``create_engine(url)``), for hints."""
    for klass in type(obj).__mro__:
        kind = kind_of_name(qualname(klass))
        if kind is not None:
            return kind.calls
    return f"{type(obj).__name__}(...)"


def fix_for(obj: Any) -> str:
    """The family table's own advice for an unmanaged one like ``obj``, or "" (the generic)."""
    for klass in type(obj).__mro__:
        kind = kind_of_name(qualname(klass))
        if kind is not None:
            return kind.fix
    return ""


def adapter(target: Union[str, type], *, close: Optional[Callable[[Any], Any]] = None,
            before_fork: Optional[Callable[[Any], Any]] = None,
            retires: bool = False) -> Callable[[R], R]:
    """Decorator: ``@postfork.adapter("package.module.Class")`` makes ``func(obj)`` the reset
    of every instance of that class (and its subclasses) registered without ``reset=``.
    ``close``, ``before_fork`` and ``retires`` complete the adapter (see ``postfork.Adapter``)."""
    if isinstance(target, type):
        target = qualname(target)
    if not isinstance(target, str) or "." not in target:
        raise TypeError(
            f"postfork.adapter() takes the qualified name of a class, such as "
            f"'package.module.Class', or the class itself; got {target!r}"
        )
    key = target

    def register_adapter(func: R) -> R:
        if not callable(func):
            raise TypeError(
                f"postfork.adapter({key!r}) decorates the reset function, a callable "
                f"taking the object; got {func!r}. Use it as @postfork.adapter({key!r}) "
                f"above 'def reset(obj): ...'"
            )
        _user[key] = Adapter(func, close=close, before_fork=before_fork, retires=retires)
        return func

    return register_adapter


def _load_entry_points() -> Dict[str, Any]:
    global _entry_points
    if _entry_points is None:
        from importlib.metadata import entry_points

        try:
            eps = entry_points(group="postfork.adapters")  # type: ignore[call-arg, unused-ignore]
        except TypeError:  # Python 3.9: entry_points() takes no arguments
            eps = entry_points().get("postfork.adapters", [])  # type: ignore[attr-defined, arg-type, unused-ignore]
        _entry_points = {ep.name: ep for ep in eps}
    return _entry_points


def _table(spec: str) -> Adapter:
    found = _builtin.get(spec)
    if found is None:
        module, attr = spec.split(":")
        found = getattr(importlib.import_module(f"postfork.adapters.{module}"), attr)
        assert isinstance(found, Adapter), spec
        _builtin[spec] = found
    return found


def find_adapter(cls: type) -> Optional[Adapter]:
    """The adapter for instances of ``cls``, or None when no adapter knows the type."""
    eps = None
    for klass in cls.__mro__:
        key = qualname(klass)
        found = _user.get(key)
        if found is not None:
            return found
        if eps is None:
            eps = _load_entry_points()
        if key in eps:
            found = as_adapter(eps[key].load(), f"the entry point {key!r} of group postfork.adapters")
            _user[key] = found  # load once
            return found
        kind = kind_of_name(key)
        if kind is not None:
            return _table(kind.adapter)
    return None
