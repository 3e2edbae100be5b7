"""The guard: names every client, thread and socket that reached a child unmanaged.

``guard(mode)`` (or ``POSTFORK_GUARD``) switches on the tracking of client construction
(:mod:`postfork._tracking`), of thread starts (:mod:`postfork._threads`) and a snapshot of the
threads and socket inodes taken just before each fork. In the child, :func:`after_resets` (run by
the registry after the resets) turns what was inherited unmanaged into :class:`Finding` s, and
warns, resets or makes ``reset_all()`` raise, by mode.
"""

from __future__ import annotations

import os
import sys
import warnings

from ._errors import ForkSafetyWarning
from ._report import Entry, Report

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs 3 ms at startup
if TYPE_CHECKING:  # the tracking modules load only once the guard is switched on
    from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

    from ._threads import AliveThread
    from ._tracking import Origin

__all__ = ["Finding", "guard", "guard_default", "check", "mode", "after_resets"]

MODES = ("off", "warn", "reset", "raise")
_ENV = "POSTFORK_GUARD"
_mode: Optional[str] = None  # set by guard(); None: POSTFORK_GUARD decides


class Finding:
    """Something built before fork that reached this process unmanaged.

    ``kind``: ``"client"``, ``"thread"`` or ``"socket"``; ``created_at``: ``"path/file.py:LINE"``
    or None when unknown; ``pid``: the process that created it; ``fix``: what to do about it;
    ``subject``: the client's type, the thread's name or the socket's peer address.
    """

    __slots__ = ("kind", "description", "created_at", "pid", "fix", "subject")

    def __init__(self, kind: str, description: str, created_at: Optional[str], pid: Optional[int],
                 fix: str = "", subject: str = "") -> None:
        self.kind = kind
        self.description = description
        self.created_at = created_at
        self.pid = pid
        self.fix = fix
        self.subject = subject

    def as_dict(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Finding) and self.as_dict() == other.as_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Finding(kind={self.kind!r}, subject={self.subject!r}, "
                f"created_at={self.created_at!r}, pid={self.pid})")

    def __str__(self) -> str:
        return f"{self.description} Fix: {self.fix}" if self.fix else self.description


def _parse(value: str, source: str) -> str:
    mode = value.strip().lower()
    if mode not in MODES:
        raise ValueError(
            f"{source} takes one of {', '.join(repr(m) for m in MODES)}; got {value!r}. "
            f"Use 'warn' to be told about unmanaged clients, 'raise' to fail in CI."
        )
    return mode


_env_mode: Optional[str] = (
    _parse(os.environ[_ENV], f"the environment variable {_ENV}") if os.environ.get(_ENV, "").strip() else None
)


def mode() -> str:
    """The guard's mode in this process: ``guard()``'s, else ``POSTFORK_GUARD``'s, else off."""
    return _mode or _env_mode or "off"


def _apply() -> None:
    on = mode() != "off"
    if on:
        from . import _threads

        _threads.install()
        _install_snapshot()
    if on or "postfork._tracking" in sys.modules:
        from . import _tracking

        _tracking.enable(on)


def _set_mode(value: Optional[str]) -> None:
    """Set (``None``: hand back to ``POSTFORK_GUARD``) and apply; tests restore with it."""
    global _mode
    _mode = value
    _apply()


def guard(mode: str = "warn") -> None:
    """Switch the guard on (``"warn"``, ``"reset"``, ``"raise"``) or ``"off"``.

    Call it in the master before the application builds its clients: only clients built while
    the guard is on are known by type and creation site. This call wins over ``POSTFORK_GUARD``.
    """
    if not isinstance(mode, str):
        raise ValueError(f"postfork.guard(mode) takes one of {', '.join(repr(m) for m in MODES)}; got {mode!r}")
    _set_mode(_parse(mode, "postfork.guard(mode)"))


def guard_default(mode: str = "warn") -> None:
    """For the server integrations: switch the guard on in ``mode`` unless the user chose
    already, by ``postfork.guard()`` or ``POSTFORK_GUARD`` (``POSTFORK_GUARD=off`` keeps it off)."""
    if _mode is None and _env_mode is None:
        guard(mode)


# -- the fork-time snapshot ------------------------------------------------------------------

class _Snapshot:
    """Taken in the parent just before fork, read in the child."""

    __slots__ = ("pid", "threads", "sockets")

    def __init__(self, pid: int, threads: List["AliveThread"], sockets: Optional[Dict[int, int]]) -> None:
        self.pid = pid
        self.threads = threads
        self.sockets = sockets  # fd -> inode; None without /proc


_snapshot: Optional[_Snapshot] = None
_snapshot_installed = False


def _take_snapshot(force: bool = False) -> None:
    """The before-fork hook (and :mod:`postfork.testing`'s ``check=True``, with ``force``)."""
    global _snapshot
    if mode() == "off" and not force:
        return
    from . import _fds, _threads

    try:
        _snapshot = _Snapshot(os.getpid(), _threads.alive_threads(), _fds.socket_inodes())
    except Exception:  # never let the guard stop a fork
        _snapshot = None


def _install_snapshot() -> None:
    global _snapshot_installed
    if not _snapshot_installed and hasattr(os, "register_at_fork"):
        _snapshot_installed = True
        os.register_at_fork(before=_take_snapshot)


# -- what is managed -------------------------------------------------------------------------

def _managed_ids() -> Set[int]:
    """ids of every managed object: registered ones, ``local`` instances (inherited ones too),
    and the tracked objects a managed one refers to directly (a ``Redis`` registered with a
    pool built apart; an ``AsyncEngine``'s sync engine): its reset covers them."""
    from . import _local, _tracking
    from ._registry import REGISTRY

    managed: List[Any] = []
    for obj in REGISTRY.objects():
        managed.append(obj)
        if isinstance(obj, _local.Local) and obj.built:
            managed.append(obj._instance)
    managed.extend(_local._inherited)
    ids = {id(o) for o in managed}
    for obj in managed:
        for ref in _references(obj):
            if id(ref) in _tracking._records:
                ids.add(id(ref))
    return ids


def _references(obj: Any) -> Iterable[Any]:
    """The attribute values of ``obj``, and the items of its container attributes."""
    values: List[Any] = list(getattr(obj, "__dict__", {}).values())
    for klass in type(obj).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            try:
                values.append(object.__getattribute__(obj, slot))
            except (AttributeError, TypeError):
                pass
    out: List[Any] = []
    for value in values:
        out.append(value)
        if isinstance(value, dict):
            out.extend(list(value.values())[:1000])
        elif isinstance(value, (list, tuple, set, frozenset)) or type(value).__name__ == "deque":
            out.extend(list(value)[:1000])
    return out


def _is_managed(origin: Optional["Origin"], ids: Set[int]) -> bool:
    while origin is not None:
        obj = origin()
        if obj is not None and id(obj) in ids:
            return True
        origin = origin.owner
    return False


# -- findings --------------------------------------------------------------------------------

_FIX_CLIENT = ("postfork.register(client) right after building it (postfork resets it in every "
               "worker), or build one per process: postfork.local(lambda: {ctor}(...))")


def _type_name(obj: Any) -> str:
    from ._registry import _default_name

    return _default_name(obj)


def client_roots(ids: Set[int]) -> List[Tuple[Any, "Origin", bool]]:
    """Every tracked client (not sockets) that stands for itself, with whether it is managed.

    An object owned by another (built during its construction) or referred to by another
    tracked client (the pool that ``Redis.from_url`` builds first) is covered by that one;
    clients a prefork server built for itself (Celery's broker connection) are left out."""
    import socket

    from . import _tracking

    live = [(o(), o) for o in _tracking.origins()]
    live = [(obj, o) for obj, o in live if obj is not None and not isinstance(obj, socket.socket)]
    covered: Set[int] = set()
    for obj, origin in live:
        for ref in _references(obj):
            if ref is not obj:
                covered.add(id(ref))
    roots = []
    for obj, origin in live:
        if (origin.owner is not None and origin.owner() is not None) or id(obj) in covered:
            continue
        if _tracking.is_server_site(origin.file):
            continue
        roots.append((obj, origin, _is_managed(origin, ids)))
    return roots


def _unmanaged_clients(ids: Set[int], inherited_only: bool) -> List[Tuple[Any, "Origin"]]:
    me = os.getpid()
    return [(obj, origin) for obj, origin, managed in client_roots(ids)
            if not managed and not (inherited_only and origin.pid == me)]


def _client_finding(obj: Any, origin: "Origin", here: int) -> Finding:
    name = _type_name(obj)
    site = origin.site
    where = f"at {site}" if site else "at an unknown site"
    if origin.pid == here:
        text = (f"{name} built {where} in pid {origin.pid} is not managed: every process forked "
                f"from here would share its connections.")
    else:
        text = (f"{name} built {where} in pid {origin.pid} (the master) reached pid {here} "
                f"unmanaged: this worker shares its connections with the master and every "
                f"other worker.")
    ctor = name.rsplit(".", 1)[-1]
    return Finding("client", text, site, origin.pid, _FIX_CLIENT.format(ctor=ctor), name)


def _thread_findings(threads: Iterable["AliveThread"], master: int, here: int,
                     ids: Set[int]) -> List[Finding]:
    found = []
    for thread in threads:
        origin = thread.origin
        if origin is not None and (origin.server or _is_managed(origin.owner, ids)):
            continue
        site = origin.site if origin is not None else None
        started = f"started at {site}" if site else "started before the guard was on"
        owner = origin.owner() if origin is not None and origin.owner is not None else None
        if owner is not None:
            started += f" by a {_type_name(owner)}"
            fix = f"manage the {_type_name(owner)} that runs it: postfork.register(client) (its reset restarts its threads)"
        else:
            fix = ("start it in each worker (postfork.after_fork(start_it)) or after the fork, "
                   "not in the master")
        if master == here:
            text = f"thread {thread.name!r} ({started}) is alive: a worker forked now would not have it."
        else:
            text = (f"thread {thread.name!r} ({started}) was alive in the master (pid {master}) "
                    f"at fork; it does not exist in pid {here}, and any lock it held stays held.")
        found.append(Finding("thread", text, site, master, fix, thread.name))
    return found


def _socket_findings(snapshot: Optional[_Snapshot], here: int, reported: Set[int],
                     managed: Set[int]) -> List[Finding]:
    """Connected sockets inherited from the master and still open after the resets; those of a
    client already reported (``reported``: ids) are part of its finding, and those of a managed
    client are its reset's business (a ``local``'s inherited instance is kept, unused, with its
    connection: dropping it would run its finalizers)."""
    from . import _fds, _tracking

    inodes = _fds.socket_inodes()
    if inodes is None:
        return []
    inherited = None
    if snapshot is not None and snapshot.sockets is not None:
        inherited = set(snapshot.sockets.values())
    by_fd = socket_origins(here)
    found = []
    for fd, inode in sorted(inodes.items()):
        origin = by_fd.get(fd)
        if inherited is not None:
            if inode not in inherited:
                continue  # opened in this process, or retired by a reset (dup2 onto the number)
        elif origin is None:
            continue  # no snapshot (the server skipped at-fork hooks): only what was tracked
        if origin is not None and (_tracking.is_server_site(origin.root().file)
                                   or id(origin.root()()) in reported
                                   or _is_managed(origin, managed)):
            continue  # the server's; part of a client finding; or its client's reset owns it
        info = _fds.describe(fd, inode)
        if info is None or not info.connection:
            continue
        site = origin.site if origin is not None else None
        master = origin.pid if origin is not None else (snapshot.pid if snapshot else None)
        built = f", created at {site}" if site else ""
        text = (f"socket fd {fd} connected to {info.peer} (inherited from pid {master}{built}) "
                f"is still open in pid {here} after the resets: master and workers share this "
                f"connection.")
        fix = ("register the client that owns it (postfork.register(client), with reset= for a "
               "type postfork does not know), or register the socket itself: "
               "postfork.register(sock) closes the worker's copy")
        found.append(Finding("socket", text, site, master, fix, info.peer or ""))
    return found


def socket_origins(here: int) -> Dict[int, "Origin"]:
    """fd -> origin of the tracked object built in another process that holds it (a socket,
    or a psycopg/psycopg2 connection's libpq socket)."""
    import socket

    from . import _tracking

    by_fd: Dict[int, "Origin"] = {}
    for origin in _tracking.origins():
        obj = origin()
        fileno = getattr(obj, "fileno", None)
        if fileno is not None and origin.pid != here:
            try:
                fd = fileno()
            except Exception:  # closed
                continue
            if isinstance(fd, int) and fd >= 0 and (fd not in by_fd or isinstance(obj, socket.socket)):
                by_fd[fd] = origin
    return by_fd


def _collect(report: Optional[Report], reset: bool) -> List[Finding]:
    from . import _threads, _tracking

    here = os.getpid()
    snapshot = _snapshot if _snapshot is not None and _snapshot.pid != here else None
    child = snapshot is not None or any(o.pid != here for o in _tracking.origins())
    ids = _managed_ids()
    clients = _unmanaged_clients(ids, inherited_only=child)
    findings = [_client_finding(obj, origin, here) for obj, origin in clients]
    if reset and report is not None:
        _reset_unmanaged(clients, report)
    if snapshot is not None:
        findings += _thread_findings(snapshot.threads, snapshot.pid, here, ids)
    elif child:
        # No before-fork snapshot: the server forked without at-fork hooks (uWSGI). Without
        # --py-call-osafterfork, threading's own after-fork cleanup did not run either, so the
        # master's threads are still listed: they are the ones that were alive at fork.
        findings += _thread_findings(_threads.alive_threads(), os.getppid(), here, ids)
    else:
        findings += _thread_findings(_threads.alive_threads(), here, here, ids)
    if child:
        reported = {id(obj) for obj, _ in clients}
        reported.update(id(ref) for obj, _ in clients for ref in _references(obj))
        findings += _socket_findings(snapshot, here, reported, ids)
    return findings


def _reset_unmanaged(clients: List[Tuple[Any, "Origin"]], report: Report) -> None:
    from ._adapters import find_adapter
    from ._registry import _run_one

    for obj, origin in clients:
        name = f"{_type_name(obj)} (unmanaged, built at {origin.site or 'unknown site'})"
        try:
            reset = find_adapter(type(obj))
        except Exception as exc:
            report.entries.append(Entry(name, False, exc))
            continue
        if reset is None:
            report.entries.append(Entry(name, False, TypeError(f"postfork has no adapter for {_type_name(obj)}")))
            continue
        report.entries.append(_run_one(name, reset, obj))


def _emit(findings: List[Finding]) -> None:
    """One ForkSafetyWarning per finding, pointing at the creation site; also logged."""
    from ._registry import log

    first_error: Optional[BaseException] = None
    for finding in findings:
        message = f"postfork guard: {finding}"
        # Without a configured handler the warning below already reaches stderr: say it once.
        if "logging" in sys.modules and log().hasHandlers():
            log().warning("%s", message)
        try:
            file, _, line = (finding.created_at or "").rpartition(":")
            if file and line.isdigit():
                warnings.warn_explicit(message, ForkSafetyWarning, file, int(line))
            else:
                warnings.warn(message, ForkSafetyWarning, stacklevel=2)
        except Exception as exc:  # warnings turned into errors: raise after every one was given
            first_error = first_error or exc
    if first_error is not None:
        raise first_error


def after_resets(report: Report) -> None:
    """Called by the registry after the resets ran: fill ``report.findings`` and act on them."""
    current = mode()
    if current == "off":
        return
    try:
        findings = _collect(report, reset=current == "reset")
    except Exception as exc:  # a bug of the guard must not cost the worker its resets
        from ._registry import log

        log().error("postfork: the guard failed in pid %d", os.getpid(), exc_info=True)
        report.entries.append(Entry("postfork guard", False, exc))
        return
    report.findings.extend(findings)
    _emit(findings)


def check() -> List[Finding]:
    """The guard's findings for this process, now, with no warning and no reset.

    In a child: the unmanaged clients built in an ancestor, the threads alive in the master at
    fork, and the inherited connected sockets still open. In the master (nothing inherited):
    the unmanaged clients it built and the threads alive now, which a worker forked now would
    inherit; sockets are judged only in a child, after the resets. Clients are known only if
    built while the guard was on.
    """
    return _collect(None, reset=False)


if _env_mode is not None and _env_mode != "off":
    _apply()
