"""Adapters: how to reset one client family, looked up by the object's type.

Keys are qualified class names (``"redis.client.Redis"``), matched along the MRO, so postfork
never imports a client library to find out whether an object belongs to it. Three sources, most
specific class first and, for one class, in this order: :func:`adapter` calls, the entry point
group ``postfork.adapters`` (name = qualified class name, value = the reset callable), and the
built-in table below, whose modules are imported only when an object of theirs is registered.
"""

from __future__ import annotations

import importlib
TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs 3 ms at startup

if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Optional, TypeVar, Union

    Reset = Callable[[Any], Any]
    R = TypeVar("R", bound=Reset)

__all__ = ["adapter", "find_adapter", "qualname"]

# qualified class name -> "module:function" in postfork.adapters
_BUILTIN: Dict[str, str] = {
    # redis-py (sync, asyncio, cluster)
    "redis.client.Redis": "redis:reset_redis",
    "redis.client.PubSub": "redis:reset_pubsub",
    "redis.connection.ConnectionPool": "redis:reset_pool",
    "redis.cluster.RedisCluster": "redis:reset_cluster",
    "redis.asyncio.client.Redis": "redis:reset_async_redis",
    "redis.asyncio.client.PubSub": "redis:reset_async_pubsub",
    "redis.asyncio.connection.ConnectionPool": "redis:reset_async_pool",
    # PyMongo
    "pymongo.synchronous.mongo_client.MongoClient": "pymongo:reset_mongo_client",
    "pymongo.mongo_client.MongoClient": "pymongo:reset_mongo_client",
    # SQLAlchemy
    "sqlalchemy.engine.base.Engine": "sqlalchemy:reset_engine",
    "sqlalchemy.ext.asyncio.engine.AsyncEngine": "sqlalchemy:reset_async_engine",
    # psycopg 3 and its pool
    "psycopg.Connection": "psycopg:reset_connection",
    "psycopg_pool.pool.ConnectionPool": "psycopg:reset_pool",
    # psycopg2 and its pools
    "psycopg2.extensions.connection": "psycopg2:reset_connection",
    "psycopg2.pool.AbstractConnectionPool": "psycopg2:reset_pool",
    # the standard library
    "socket.socket": "socket:reset_socket",
    "_io.FileIO": "files:reset_file",
    "_io.BufferedWriter": "files:reset_file",
    "_io.BufferedReader": "files:reset_file",
    "_io.BufferedRandom": "files:reset_file",
    "_io.TextIOWrapper": "files:reset_file",
}

_user: Dict[str, Reset] = {}
_entry_points: Optional[Dict[str, Any]] = None  # loaded once, on the first miss


def qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def adapter(target: Union[str, type]) -> Callable[[R], R]:
    """Decorator: ``@postfork.adapter("package.module.Class")`` makes ``func(obj)`` the reset
    of every instance of that class (and its subclasses) registered without ``reset=``."""
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
        _user[key] = func
        return func

    return register_adapter


def _load_entry_points() -> Dict[str, Any]:
    global _entry_points
    if _entry_points is None:
        from importlib.metadata import entry_points

        try:
            eps = entry_points(group="postfork.adapters")  # type: ignore[call-arg]
        except TypeError:  # Python 3.9: entry_points() takes no arguments
            eps = entry_points().get("postfork.adapters", [])  # type: ignore[attr-defined, arg-type]
        _entry_points = {ep.name: ep for ep in eps}
    return _entry_points


def _builtin(spec: str) -> Reset:
    module, func = spec.split(":")
    return getattr(importlib.import_module(f"postfork.adapters.{module}"), func)  # type: ignore[no-any-return]


def find_adapter(cls: type) -> Optional[Reset]:
    """The reset for instances of ``cls``, or None when no adapter knows the type."""
    eps = None
    for klass in cls.__mro__:
        key = qualname(klass)
        func = _user.get(key)
        if func is not None:
            return func
        if eps is None:
            eps = _load_entry_points()
        if key in eps:
            func = eps[key].load()
            _user[key] = func  # load once
            return func
        if key in _BUILTIN:
            return _builtin(_BUILTIN[key])
    return None
