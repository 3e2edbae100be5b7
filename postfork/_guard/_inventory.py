"""What the guard knows about this process: the managed objects, the tracked clients and who
owns them, the sockets they hold, and the snapshot taken just before the last fork.

The guard's findings are built from this, and so are ``postfork doctor``'s tables and
``postfork.testing``'s checks: they read it through these functions, never through the
registry's or the tracking's private state. Nothing here calls into a client: objects are read
with ``object.__getattribute__`` (a proxy such as ``postfork.local`` forwards attribute access
and would build its client), and a ``local`` declares what it manages.
"""

from __future__ import annotations

import io
import os
import socket
import stat
import sys
import sysconfig
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from .._families import family_of_name
from .._lookup import type_name
from .._registry import REGISTRY
from ._fds import socket_inodes
from ._threads import AliveThread, alive_threads
from ._tracking import Origin, is_server_site, origins, records

__all__ = ["Snapshot", "take_snapshot", "snapshot", "managed_ids", "references", "is_managed",
           "client_roots", "socket_origins", "type_name", "alive_threads"]

def _is(value: Any, types: Any) -> bool:
    """``isinstance`` by the real type only: ``isinstance`` also asks ``value.__class__``, which
    a proxy forwards and so evaluates (Django's ``SimpleLazyObject``, werkzeug's ``LocalProxy``,
    Celery's ``current_app``, whose test trap raises)."""
    return issubclass(type(value), types)


class Snapshot:
    """Taken in the parent just before fork, read in the child."""

    __slots__ = ("pid", "threads", "sockets")

    def __init__(self, pid: int, threads: List[AliveThread], sockets: Optional[Dict[int, int]]) -> None:
        self.pid = pid
        self.threads = threads
        self.sockets = sockets  # fd -> inode; None without /proc


_snapshot: Optional[Snapshot] = None


def take_snapshot() -> None:
    """The guard's before-fork hook (and ``postfork.testing``'s ``check=True``)."""
    global _snapshot
    try:
        _snapshot = Snapshot(os.getpid(), alive_threads(), socket_inodes())
    except Exception:  # never let the guard stop a fork
        _snapshot = None


def snapshot() -> Optional[Snapshot]:
    """The snapshot of the parent this process was forked from (None in the master, or when
    the server forked without at-fork hooks)."""
    here = os.getpid()
    return _snapshot if _snapshot is not None and _snapshot.pid != here else None


def managed_ids() -> Set[int]:
    """ids of every managed object: registered ones, what their adapters declare they manage
    (a ``local``'s instances, inherited ones too), and the tracked objects a managed one refers
    to directly (a ``Redis`` registered with a pool built apart; an ``AsyncEngine``'s sync
    engine): its reset covers them."""
    managed = list(REGISTRY.managed())
    ids = {id(o) for o in managed}
    tracked = records()
    for obj in managed:
        for ref in references(obj):
            if id(ref) in tracked:
                ids.add(id(ref))
    return ids


def _attribute_values(obj: Any) -> List[Any]:
    try:
        values: List[Any] = list(object.__getattribute__(obj, "__dict__").values())
    except (AttributeError, TypeError):
        values = []
    for klass in type(obj).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot in ("__dict__", "__weakref__"):
                continue
            try:
                values.append(object.__getattribute__(obj, slot))
            except (AttributeError, TypeError):
                pass
    return values


def references(obj: Any) -> Iterable[Any]:
    """The attribute values of ``obj``, and the items of its container attributes."""
    out: List[Any] = []
    for value in _attribute_values(obj):
        out.append(value)
        if _is(value, dict):
            out.extend(list(value.values())[:1000])
        elif _is(value, (list, tuple, set, frozenset)) or type(value).__name__ == "deque":
            out.extend(list(value)[:1000])
    return out


def _reachable(obj: Any, tracked: Set[int], depth: int = 5, budget: int = 2000) -> Set[int]:
    """ids of the tracked objects ``obj`` holds within ``depth`` attribute hops: a client built
    inside another (botocore's client holds its endpoint's session's urllib3 ``PoolManager``;
    OpenTelemetry's exporter a requests ``Session``) is covered by the outer one."""
    found: Set[int] = set()
    seen: Set[int] = {id(obj)}
    layer = [obj]
    family = _family(obj)
    for hop in range(depth):
        following: List[Any] = []
        for item in layer:
            for ref in references(item):
                key = id(ref)
                if key in seen or _is(ref, (str, bytes, int, float, type(None), type)):
                    continue
                seen.add(key)
                if key in tracked:
                    # Held directly: covered. Further in, only a client of another family is
                    # (an implementation detail of this one: botocore's urllib3 pool); one of
                    # the same family is the application's own (a kombu Producer's Connection).
                    if hop == 0 or _family(ref) != family:
                        found.add(key)
                    continue  # what it holds is its own business, not walked
                following.append(ref)
                if len(seen) > budget:
                    return found
        layer = following
    return found


def _family(obj: Any) -> Optional[str]:
    for klass in type(obj).__mro__:
        family = family_of_name(f"{klass.__module__}.{klass.__qualname__}")
        if family is not None:
            return family.name
    return None


def is_managed(origin: Optional[Origin], ids: Set[int]) -> bool:
    while origin is not None:
        obj = origin()
        if obj is not None and id(obj) in ids:
            return True
        origin = origin.owner
    return False


def client_roots(ids: Set[int]) -> List[Tuple[Any, Origin, bool]]:
    """Every tracked client (not sockets) that stands for itself, with whether it is managed.

    An object owned by another (built during its construction) or referred to by another
    tracked client (the pool that ``Redis.from_url`` builds first) is covered by that one;
    clients a prefork server built for itself (Celery's broker connection) are left out."""
    live = [(o(), o) for o in origins()]
    live = [(obj, o) for obj, o in live if obj is not None and not _is(obj, socket.socket)]
    tracked = {id(obj) for obj, _ in live}
    covered: Set[int] = set()
    for obj, origin in live:
        covered |= _reachable(obj, tracked) - {id(obj)}
    roots = []
    for obj, origin in live:
        if (origin.owner is not None and origin.owner() is not None) or id(obj) in covered:
            continue
        if is_server_site(origin.file):
            continue
        roots.append((obj, origin, is_managed(origin, ids)))
    return roots


def socket_origins(here: int) -> Dict[int, Origin]:
    """fd -> origin of the tracked object built in another process that holds it (a socket,
    or a psycopg/psycopg2 connection's libpq socket)."""
    by_fd: Dict[int, Origin] = {}
    for origin in origins():
        obj = origin()
        if obj is None or origin.pid == here:
            continue
        # Sockets a client holds directly but did not build through a tracked call (paho's
        # wake-up socketpair: one end comes from accept()) are that client's too.
        for ref in references(obj):
            if _is(ref, socket.socket) and not _is(obj, socket.socket):
                fd = ref.fileno()
                if fd >= 0 and fd not in by_fd:
                    by_fd[fd] = origin
        try:
            fileno = object.__getattribute__(obj, "fileno")
        except AttributeError:
            continue
        try:
            fd = fileno()
        except Exception:  # closed
            continue
        if _is(fd, int) and fd >= 0 and (fd not in by_fd or _is(obj, socket.socket)):
            by_fd[fd] = origin
    return by_fd


def bound_to_a_loop(obj: Any, depth: int = 3, budget: int = 300) -> bool:
    """Whether ``obj`` holds (within ``depth`` attribute hops) an asyncio loop, transport, stream
    or asyncio lock: an asyncio client built on the master's event loop."""
    if "asyncio" not in sys.modules:
        return False
    seen: Set[int] = set()
    layer = [obj]
    for _ in range(depth):
        following: List[Any] = []
        for item in layer:
            for ref in references(item):
                if id(ref) in seen or _is(ref, (str, bytes, int, float, type(None))):
                    continue
                seen.add(id(ref))
                if type(ref).__module__.startswith("asyncio."):
                    return True
                following.append(ref)
                if len(seen) > budget:
                    return False
        layer = following
    return False


def app_files(managed: Set[int]) -> List[Tuple[str, Any]]:
    """``(module.name, file)`` for every file object open for writing that a module of the
    application (not the standard library, not an installed package) holds in a global and
    that no registration manages: a log or journal opened at import."""
    skip = tuple({sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib"),
                  sysconfig.get_path("purelib"), sysconfig.get_path("platlib"),
                  os.path.dirname(os.path.dirname(__file__))} - {None})
    found = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name != "__main__" and (not path or path.startswith(skip)):
            continue
        for attr, value in list(getattr(module, "__dict__", {}).items()):
            if (_is(value, io.IOBase) and id(value) not in managed and not value.closed
                    and _writes_a_file(value)):
                found.append((f"{name}.{attr}", value))
    return found


def _writes_a_file(f: Any) -> bool:
    try:
        fd = f.fileno()
        return bool(f.writable()) and fd > 2 and stat.S_ISREG(os.fstat(fd).st_mode)
    except (OSError, ValueError):
        return False
