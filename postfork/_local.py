"""``postfork.local``: a client built lazily, once per process."""

from __future__ import annotations

import threading

from ._contract import Adapter, close_default
from ._locks import fresh
from ._lookup import find_adapter
from ._registry import REGISTRY
from ._registry import log as REGISTRY_LOG

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs 3 ms at startup
if TYPE_CHECKING:
    from typing import Any, Callable, Generic, Iterable, List, Optional, TypeVar

    T = TypeVar("T")

    class _Generic(Generic[T]):
        __slots__ = ()

else:
    from types import GenericAlias

    T = "T"  # type checkers see the TypeVar above; at run time Local[Redis] is a GenericAlias

    class _Generic:
        __slots__ = ()
        __class_getitem__ = classmethod(GenericAlias)

__all__ = ["Local", "local"]

_UNBUILT: Any = object()

# Instances a child inherited from its parent. They are kept, never dropped: dropping the last
# reference would run their finalizers in the child (a buffered file flushed twice, a client
# saying goodbye on a socket the parent still uses). The parent's process owns them.
_inherited: List[Any] = []


def _retire_inherited(instance: Any) -> None:
    """Keeping an inherited instance is not enough when the interpreter exits: module globals
    are cleared then and finalizers run all the same, and a finalizer may talk on the parent's
    socket (mysqlclient's deallocator sends COM_QUIT: a worker exiting normally ended the
    master's session, measured). So an instance of a family postfork knows is reset here as if
    it had been registered: its inherited connections dropped or retired, silently."""
    found = find_adapter(type(instance))
    if found is None:
        return
    try:
        found.reset(instance)
    except Exception:  # the local itself is invalidated whatever happens to the old instance
        REGISTRY_LOG.error("postfork: resetting the inherited instance of a local failed",
                           exc_info=True)


class Local(_Generic[T]):
    """This process's instance of ``factory()``, built on first use in each process.

    ``local()`` or ``local.get()`` returns it; any other attribute is forwarded to it, so
    ``mongo = postfork.local(lambda: MongoClient(url)); mongo.db.users.find_one()`` works.
    ``get`` with arguments is the instance's own ``get``: ``cache.get("key")`` on a local redis
    client is redis' GET, as it would be on the client itself.
    The hot path is one attribute read and one identity test: no system call. The registry
    invalidates the instance in every child (from the at-fork hook, or the integration's
    ``reset_all()`` under servers that skip at-fork hooks).
    """

    __slots__ = ("_factory", "_name", "_instance", "_lock", "__weakref__")

    def __init__(self, factory: Callable[[], T], *, name: Optional[str] = None) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"postfork.local(factory, name=...) takes a str, got {name!r}")
        if not callable(factory):
            raise TypeError(
                f"postfork.local() takes a factory, a callable with no argument that builds the "
                f"client, got {factory!r}; e.g. postfork.local(lambda: redis.Redis.from_url(url))"
            )
        object.__setattr__(self, "_factory", factory)
        object.__setattr__(self, "_name", name or f"local({getattr(factory, '__qualname__', factory)!s})")
        object.__setattr__(self, "_instance", _UNBUILT)
        object.__setattr__(self, "_lock", threading.Lock())
        REGISTRY.add(self, _ADAPTER, self._name)

    def __call__(self) -> T:
        instance = self._instance
        if instance is _UNBUILT:
            return self._build()
        return instance  # type: ignore[no-any-return]

    def get(self, *args: Any, **kwargs: Any) -> Any:
        """This process's instance; with arguments, the instance's own ``get(*args)``."""
        instance = self._instance
        if instance is _UNBUILT:
            instance = self._build()
        if args or kwargs:
            return instance.get(*args, **kwargs)
        return instance

    def _build(self) -> T:
        with self._lock:  # two threads of one process build one instance
            if self._instance is _UNBUILT:
                object.__setattr__(self, "_instance", self._factory())
            return self._instance  # type: ignore[no-any-return]

    def _invalidate(self) -> None:
        # In the child: a parent thread may hold the build lock at fork; it is never released.
        object.__setattr__(self, "_lock", fresh(self._lock))
        if self._instance is not _UNBUILT:
            inherited = self._instance
            _inherited.append(inherited)
            object.__setattr__(self, "_instance", _UNBUILT)
            _retire_inherited(inherited)

    def _close(self) -> None:
        instance = self._instance
        if instance is not _UNBUILT:
            object.__setattr__(self, "_instance", _UNBUILT)
            close_default(instance)

    def _managed(self) -> Iterable[Any]:
        """What this local's reset covers, for the guard: the instance this process built
        (if any) and every instance inherited from a parent. Never builds one."""
        instance = self._instance
        managed = list(_inherited)
        if instance is not _UNBUILT:
            managed.append(instance)
        return managed

    @property
    def built(self) -> bool:
        """True when this process has built its instance."""
        return self._instance is not _UNBUILT

    def __getattr__(self, name: str) -> Any:
        return getattr(self(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self(), name, value)

    def __repr__(self) -> str:
        state = "built" if self._instance is not _UNBUILT else "not built in this process"
        return f"<postfork.local {self._name}: {state}>"


_ADAPTER = Adapter(Local._invalidate, close=Local._close, manages=Local._managed)


def local(factory: Callable[[], T], *, name: Optional[str] = None) -> Local[T]:
    """A per-process lazy client: see :class:`Local`."""
    return Local(factory, name=name)
