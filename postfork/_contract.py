"""The adapter contract: what postfork needs to know to manage one client family.

An :class:`Adapter` holds

- ``reset(obj)`` (required): runs in every forked child before the application uses ``obj``
  again. It must do no network I/O and send nothing on an inherited socket (no protocol
  goodbye, no ``shutdown()``, no TLS ``close_notify``, no flush to a broker); it re-creates
  locks instead of acquiring them (:func:`postfork._locks.renew`), drops or retires what was
  inherited, and lets the client reconnect lazily on first use.
- ``close(obj)`` (optional): closes this process's own client gracefully when a worker exits
  (``close_all``); default: ``obj.close()``.
- ``before_fork(obj)`` (optional): runs in the parent just before each fork (a file flushes
  its buffer, so the child cannot write the parent's pending bytes a second time).
- ``retires`` (default False): True when an inherited object cannot be made usable again
  without network I/O. Its reset *retires* it: using it in the child raises an error naming
  ``postfork.local``, the ``Report`` marks it retired, and ``register()`` says so once.
- ``manages(obj)`` (optional): the objects that ``obj``'s reset covers besides ``obj``
  itself, for the guard (a ``local`` manages the instance it built).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Optional

__all__ = ["Adapter", "as_adapter", "close_default", "no_close"]


def close_default(obj: Any) -> None:
    """``obj.close()``; an async client's coroutine is closed unawaited (the worker exits)."""
    close = getattr(obj, "close", None)
    if callable(close):
        result = close()
        if hasattr(result, "close") and hasattr(result, "send"):  # a coroutine: async client
            result.close()  # nothing to await in a worker that is exiting; do not warn


def no_close(obj: Any) -> None:
    """For adapters whose objects have nothing to close (callbacks)."""


class Adapter:
    """How to reset (and close) the objects of one client family: see the module docstring."""

    __slots__ = ("reset", "close", "before_fork", "retires", "manages")

    def __init__(self, reset: Callable[[Any], Any], *, close: Optional[Callable[[Any], Any]] = None,
                 before_fork: Optional[Callable[[Any], Any]] = None, retires: bool = False,
                 manages: Optional[Callable[[Any], Iterable[Any]]] = None) -> None:
        for what, func in (("reset", reset), ("close", close), ("before_fork", before_fork),
                           ("manages", manages)):
            if func is not None and not callable(func):
                raise TypeError(f"postfork.Adapter({what}=...) takes a callable taking the "
                                f"object; got {func!r}")
        if reset is None:
            raise TypeError("postfork.Adapter needs reset=, a callable taking the object")
        self.reset = reset
        self.close: Callable[[Any], Any] = close if close is not None else close_default
        self.before_fork = before_fork
        self.retires = bool(retires)
        self.manages = manages

    def __repr__(self) -> str:
        name = getattr(self.reset, "__qualname__", repr(self.reset))
        return f"<postfork.Adapter {name}{' (retires)' if self.retires else ''}>"


def as_adapter(value: Any, what: str) -> Adapter:
    """``value`` if it is an :class:`Adapter`, else a reset callable wrapped in one."""
    if isinstance(value, Adapter):
        return value
    if not callable(value):
        raise TypeError(f"{what} takes a reset function (a callable taking the object) or a "
                        f"postfork.Adapter; got {value!r}")
    return Adapter(value)
