"""asyncpg: a bare ``Connection`` is retired in the child; a ``Pool`` starts again, lazily, on
the child's own event loop.

What the child inherits (asyncpg 0.32, read from ``asyncpg/connection.py``, ``pool.py`` and the
protocol's ``close``/``abort``):

- A ``Connection`` holds an asyncio transport of the parent's event loop and a protocol whose
  futures belong to that loop. Used from the child's own loop, a query is written on the
  parent's socket before asyncpg notices the foreign loop (the reply then lands in the
  parent's connection); ``close()`` sends Terminate on it (the parent's backend ends);
  ``terminate()`` and the finalizer (``Connection.__del__`` calls ``terminate()``) abort the
  transport, which unregisters the socket from the parent's epoll instance, shared with the
  child. None of that may happen here, and nothing can be awaited in a reset anyway.
- So the socket under the transport is retired (:func:`retire_fd`: a dead socket ``dup2``-ed
  onto its number; an epoll registration is keyed by the open file, so even an ``abort()``
  here could no longer touch the parent's), the connection is marked aborted (``_aborted``:
  ``is_closed()`` is then true, so ``close()``, ``terminate()`` and ``__del__`` send nothing
  and touch no transport) and its termination listeners, which would be scheduled on the
  parent's loop, are dropped. The inherited objects are kept referenced for the life of the
  process, so no finalizer of theirs ever runs here.
- A bare ``Connection`` cannot be reconnected in place (its protocol and transport are fixed
  at ``connect()``): it is retired. It has ``__slots__`` and no ``__dict__``, so it becomes an
  instance of a subclass of its class whose query methods raise ``postfork.RetiredError``
  (also an ``asyncpg.InterfaceError``) naming ``postfork.local``.
- A ``Pool`` keeps its settings and drops the rest: every holder's connection is retired as
  above, and the holders, the queue (an asyncio queue bound to the parent's loop), the
  maintenance task and ``_loop`` are the parent's. The pool is put back in its state before
  ``await pool`` (``_initialized`` false, no holders, no queue), and, until its first use,
  it is an instance of a subclass whose ``acquire`` path, ``await pool`` and ``close()``
  first bind the pool to the loop running at that moment (``asyncio.get_running_loop()``)
  and give it back its own class: asyncpg's own ``_async__init__`` then builds the queue and
  holders and opens ``min_size`` connections on the child's loop, exactly as for a pool
  created there. ``close()``/``terminate()`` before any use close nothing (the child has no
  connection of its own yet) and leave the pool closed.
"""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List

from .._contract import Adapter
from ._retire import retire_by_class, retire_fd

__all__ = ["reset_connection", "reset_pool", "retire_connection"]

# Inherited asyncpg objects, referenced for the life of this process: their finalizers (a
# Connection's terminate(), a transport's close) must never run here.
_kept: List[Any] = []

# A connection per process is a pool per process: postfork.local builds the pool, and the
# worker awaits it (Pool.__await__ opens it once, then returns it at once).
FIX = ("Build one per process instead: db = postfork.local(lambda: asyncpg.create_pool(dsn)), "
       "then pool = await db() in the worker; or register a pool, which postfork reopens in "
       "each process on its first use there: postfork.register(await asyncpg.create_pool(dsn))")
# id(pool) -> the connections its reset retired: the guard counts them as the pool's.
_retired_by_pool: Dict[int, List[Any]] = {}

# What an application calls on a connection; each raises postfork.RetiredError (also an
# asyncpg.InterfaceError) on a retired one. close(), terminate() and is_closed() stay asyncpg's
# own (harmless once the connection is marked aborted). _check_open guards everything else.
_ENTRY_POINTS = ("_check_open", "execute", "executemany", "fetch", "fetchval", "fetchrow",
                 "fetchmany", "prepare", "cursor", "transaction", "add_listener",
                 "copy_from_table", "copy_from_query", "copy_to_table", "copy_records_to_table",
                 "set_type_codec", "reset_type_codec", "set_builtin_type_codec", "reset",
                 "reload_schema_state")


def retire_connection(conn: Any) -> None:
    """Make an inherited asyncpg ``Connection`` inert here: its socket retired, the connection
    marked aborted, kept referenced. Nothing is sent; the parent's loop is not touched."""
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    fd = sock.fileno() if sock is not None else -1
    if fd >= 0:
        retire_fd(fd)
    conn._aborted = True  # is_closed(): close()/terminate()/__del__ send and abort nothing
    listeners = getattr(conn, "_termination_listeners", None)
    if listeners:
        listeners.clear()  # would be scheduled on the parent's loop by close()
    _kept.append(conn)


def reset_connection(conn: Any) -> None:
    """Retire an inherited bare ``asyncpg.Connection``: its use raises ``postfork.RetiredError``
    (an ``asyncpg.InterfaceError`` too) naming ``postfork.local``; closing it is harmless."""
    retire_connection(conn)
    retire_by_class(conn, _ENTRY_POINTS, "asyncpg.create_pool(dsn)", _interface_error(),
                    fix=FIX)


_interface_error_class: List[type] = []


def _interface_error() -> type:
    """``asyncpg.InterfaceError`` as a base for postfork's error: its ``__str__`` reads the
    ``detail`` and ``hint`` its own ``__init__`` sets, which a mixed-in error never runs."""
    if not _interface_error_class:
        import asyncpg

        _interface_error_class.append(type("InterfaceError", (asyncpg.InterfaceError,),
                                           {"detail": None, "hint": None,
                                            "__module__": "asyncpg.exceptions"}))
    return _interface_error_class[0]


class _Unbound:
    """Methods of a pool reset in a child, until its first use there (see the module doc)."""

    __slots__ = ()

    async def _async__init__(self: Any) -> Any:
        _bind(self)
        return await self._async__init__()

    async def _acquire(self: Any, timeout: Any) -> Any:
        _bind(self)
        await self._async__init__()
        return await self._acquire(timeout)

    async def close(self: Any) -> None:
        _close_unused(self)

    def terminate(self: Any) -> None:
        _close_unused(self)


def _bind(pool: Any) -> None:
    """The pool's first use in this process: from now on it is an ordinary pool of this loop."""
    pool.__class__ = pool.__class__.__mro__[1]
    pool._loop = asyncio.get_running_loop()


def _close_unused(pool: Any) -> None:
    pool.__class__ = pool.__class__.__mro__[1]
    # nothing of this process's own to close; from now on asyncpg says "pool is closed"
    pool._initialized = pool._closed = True


_unbound_classes: Dict[type, type] = {}


def _unbound_class(cls: type) -> type:
    sub = _unbound_classes.get(cls)
    if sub is None:
        namespace = {k: v for k, v in vars(_Unbound).items()
                     if k not in ("__slots__", "__dict__", "__weakref__", "__module__",
                                  "__qualname__", "__doc__")}
        namespace.update(__slots__=(), __module__=cls.__module__, __qualname__=cls.__qualname__,
                         __doc__=cls.__doc__, __postfork_unbound__=True)
        meta: Any = type(cls)
        sub = meta(cls.__name__, (cls,), namespace)
        _unbound_classes[cls] = sub
    return sub


def reset_pool(pool: Any) -> None:
    """Give an inherited ``asyncpg.Pool`` a fresh start on the child's own loop, lazily: its
    connections are retired here (nothing sent), and its first use opens new ones."""
    cls = type(pool)
    if cls.__dict__.get("__postfork_unbound__"):  # reset already in this process, still unused
        return
    retired = []
    for holder in list(pool._holders):
        conn = holder._con
        if conn is not None:
            retire_connection(conn)
            retired.append(conn)
    _kept.append((pool._holders, pool._queue, pool._maintenance_task))
    _retired_by_pool.setdefault(id(pool), []).extend(retired)
    if pool._closed:
        return  # closed in the parent: its use keeps raising "pool is closed"
    pool._holders = []
    pool._queue = None
    pool._maintenance_task = None
    pool._initialized = False
    pool._initializing = False
    pool._closing = False
    pool.__class__ = _unbound_class(cls)


def _pool_manages(pool: Any) -> List[Any]:
    """The connections a registered pool's reset covers (the guard tracks them)."""
    own = [h._con for h in getattr(pool, "_holders", ()) if h._con is not None]
    return own + _retired_by_pool.get(id(pool), [])


connection = Adapter(reset_connection, retires=True)
pool = Adapter(reset_pool, manages=_pool_manages)
