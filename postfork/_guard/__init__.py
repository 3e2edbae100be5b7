"""The guard: names every client, thread and socket that reached a child unmanaged.

``guard(mode)`` (or ``POSTFORK_GUARD``) switches on the tracking of client construction
(:mod:`._tracking`), of thread starts (:mod:`._threads`) and a snapshot of the threads and
socket inodes taken just before each fork (:mod:`._inventory`). It subscribes to the registry
as an observer: in the child, after the resets ran, what was inherited unmanaged becomes a
:class:`~postfork.Finding`, and the guard warns, resets or makes ``reset_all()`` raise, by mode.
The registry knows nothing of it.
"""

from __future__ import annotations

import os
import sys
import warnings

from .. import _settings
from .._errors import ConfigError, ForkSafetyError, ForkSafetyWarning
from .._lookup import calls_for, find_adapter, fix_for, type_name
from .._mphooks import forked_by_multiprocessing, handlers, multiprocessing_after_fork
from .._registry import REGISTRY, install_hook, log, registered, run_one
from .._report import Entry, Finding, Report

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs 3 ms at startup
if TYPE_CHECKING:  # the guard's machinery loads only once it is switched on (or asked)
    from typing import Any, Iterable, List, Optional, Set, Tuple

    from . import _fds, _inventory, _threads, _tracking

__all__ = ["Finding", "guard", "guard_default", "check", "mode", "MODES"]

MODES = _settings.GUARD_MODES
_mode: Optional[str] = None  # set by guard(); None: POSTFORK_GUARD decides
_env_error: Optional[ConfigError] = None
try:
    _env_mode: Optional[str] = _settings.env_guard()
except ConfigError as exc:  # raised by the first call that needs the mode: mode(), guard()...
    _env_mode, _env_error = None, exc


def mode() -> str:
    """The guard's mode in this process: ``guard()``'s, else ``POSTFORK_GUARD``'s, else off."""
    if _mode is not None:
        return _mode
    if _env_error is not None:
        raise _env_error
    return _env_mode or "off"


class _Observer:
    """The guard's subscription to the registry."""

    def after_resets(self, report: Report) -> None:
        tracking = sys.modules.get("postfork._guard._tracking")
        if tracking is not None:  # a server that forks without at-fork hooks (uWSGI) lands here first
            tracking.refresh_pid()
        current = mode()
        if current == "off":
            return
        try:
            findings = _collect(report, reset=current == "reset")
        except Exception as exc:  # a bug of the guard must not cost the worker its resets
            log.error("postfork: the guard failed in pid %d", os.getpid(), exc_info=True)
            report.entries.append(Entry("postfork guard", False, exc))
            return
        report.findings.extend(findings)
        _emit(findings)

    def verdict(self, report: Report) -> None:
        if report.findings and mode() == "raise":
            raise ForkSafetyError(report, report.findings)

    def __repr__(self) -> str:
        return "<postfork guard>"


_OBSERVER = _Observer()
_snapshot_installed = False


def _apply() -> None:
    from . import _threads, _tracking
    global _snapshot_installed
    on = mode() != "off"
    if on:
        _threads.install()
        if not _snapshot_installed and hasattr(os, "register_at_fork"):
            _snapshot_installed = True
            os.register_at_fork(before=_before_fork)
        install_hook()
        if _OBSERVER not in REGISTRY.observers:
            REGISTRY.observers.append(_OBSERVER)
    elif _OBSERVER in REGISTRY.observers:
        REGISTRY.observers.remove(_OBSERVER)
    _tracking.enable(on)


def _before_fork() -> None:
    from . import _inventory
    if mode() != "off":
        _inventory.take_snapshot()


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
    value = _settings.parse_guard(mode, "postfork.guard(mode)")
    install_hook()  # using postfork, whatever the mode: the resets run in every child
    _set_mode(value)


def guard_default(mode: str = "warn") -> None:
    """For the server integrations: switch the guard on in ``mode`` unless the user chose
    already, by ``postfork.guard()`` or ``POSTFORK_GUARD`` (``POSTFORK_GUARD=off`` keeps it off)."""
    if _env_error is not None:
        raise _env_error
    if _mode is None and _env_mode is None:
        guard(mode)


# -- findings --------------------------------------------------------------------------------

_FIX_CLIENT = ("postfork.register(client) right after building it (postfork resets it in every "
               "worker), or build one per process: postfork.local(lambda: {calls})")


def _unmanaged_clients(ids: Set[int], inherited_only: bool) -> List[Tuple[Any, _tracking.Origin]]:
    from . import _inventory
    me = os.getpid()
    return [(obj, origin) for obj, origin, managed in _inventory.client_roots(ids)
            if not managed and not (inherited_only and origin.pid == me)]


def _client_finding(obj: Any, origin: _tracking.Origin, here: int) -> Finding:
    from . import _inventory
    name = type_name(obj)
    site = origin.site
    where = f"at {site}" if site else "at an unknown site"
    if origin.pid == here:
        text = (f"{name} built {where} in pid {origin.pid} is not managed: every process forked "
                f"from here would share its connections.")
    else:
        text = (f"{name} built {where} in pid {origin.pid} (the master) reached pid {here} "
                f"unmanaged: this worker shares its connections with the master and every "
                f"other worker.")
        if _inventory.bound_to_a_loop(obj):
            text += (" It is bound to the master's event loop: on this worker's loop it fails "
                     "('attached to a different loop', 'Event loop is closed').")
    fix = fix_for(obj) or _FIX_CLIENT.format(calls=calls_for(obj))
    return Finding("client", text, site, origin.pid, fix, name)


def _thread_findings(threads: Iterable[_threads.AliveThread], master: int, here: int,
                     ids: Set[int]) -> List[Finding]:
    from . import _inventory
    found = []
    for thread in threads:
        if thread.native:
            found.append(_native_thread_finding(thread, master, here))
            continue
        origin = thread.origin
        if origin is not None and (origin.server or _inventory.is_managed(origin.owner, ids)):
            continue
        site = origin.site if origin is not None else None
        if origin is None:
            started = "started before the guard was on"
        else:
            started = f"started at {site}" if site else "start site unknown"
        owner = origin.owner() if origin is not None and origin.owner is not None else None
        if owner is not None:
            started += f" by a {type_name(owner)}"
            fix = (f"manage the {type_name(owner)} that runs it: postfork.register(client) (its "
                   f"reset restarts its threads)")
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


def _native_thread_finding(thread: _threads.AliveThread, master: int, here: int) -> Finding:
    owner = f" ({thread.owner})" if thread.owner else ""
    if master == here:
        text = (f"native thread {thread.name!r}{owner}, started by C code, is alive: a worker "
                f"forked now would not have it.")
    else:
        text = (f"native thread {thread.name!r}{owner}, started by C code, was alive in the master "
                f"(pid {master}) at fork; it does not exist in pid {here}, and any lock it held "
                f"stays held. This is the thread Python's 'This process is multi-threaded, use of "
                f"fork() may lead to deadlocks in the child' warning is about.")
    fix = ("build the client that runs it in each worker, after the fork "
           "(postfork.local(lambda: ...)), not in the master")
    return Finding("thread", text, None, master, fix, thread.name)


def _socket_findings(snapshot: Optional[_inventory.Snapshot], here: int, reported: Set[int],
                     managed: Set[int]) -> List[Finding]:
    """Connected sockets inherited from the master and still open after the resets; those of a
    client already reported (``reported``: ids) are part of its finding, and those of a managed
    client are its reset's business (a ``local``'s inherited instance is kept, unused, with its
    connection: dropping it would run its finalizers)."""
    from . import _fds, _inventory, _tracking
    inodes = _fds.socket_inodes()
    if inodes is None:
        return []
    inherited = None
    if snapshot is not None and snapshot.sockets is not None:
        inherited = set(snapshot.sockets.values())
    by_fd = _inventory.socket_origins(here)
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
                                   or _inventory.is_managed(origin, managed)):
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
        if origin is None:
            # Seen with connection pools: a connection a pool's thread was still opening when
            # the master forked belongs to no object in the worker (only to that thread's stack).
            text += (" No object of the worker holds it: it may be a connection a thread of the "
                     "master was still opening at fork (a pool's worker thread).")
            fix += ("; for a pool, let it finish connecting before the server forks "
                    "(psycopg_pool: pool.wait())")
        found.append(Finding("socket", text, site, master, fix, info.peer or ""))
    return found


def _import_findings(report: Optional[Report], snapshot: Optional[_inventory.Snapshot],
                     master: int, here: int) -> List[Finding]:
    """Imports a thread of the master had in flight at fork (released by the registry)."""
    from . import _threads
    if report is None:
        return []
    threads = {t.ident: t for t in (snapshot.threads if snapshot is not None else _threads.alive_threads())}
    found = []
    for module, owner, dropped in report.imports:
        thread = threads.get(owner)
        who = f"thread {thread.name!r}" if thread is not None else f"a thread (ident {owner})"
        site = thread.origin.site if thread is not None and thread.origin is not None else None
        if site:
            who += f" (started at {site})"
        text = (f"module {module!r} was being imported by {who} in the master (pid {master}) at "
                f"fork: its import lock stayed held in pid {here}, where that thread does not "
                f"exist, and the first import of it here would have hung. postfork released it"
                + (" and dropped the half-imported module, which is imported afresh here." if dropped
                   else "."))
        fix = (f"import {module} in the master before starting threads or before the server "
               f"forks (for example at the top of the app module)")
        found.append(Finding("import", text, site, master, fix, module))
    return found


def _is_multiprocessing_own(file: Optional[str]) -> bool:
    return bool(file) and os.sep + "multiprocessing" + os.sep in str(file)


def _mp_hook_findings(master: int, here: int) -> List[Finding]:
    """``multiprocessing.util.register_after_fork`` handlers, in a child multiprocessing did not
    start: they never run here (unless the opt-in runs them)."""
    from . import _tracking
    if forked_by_multiprocessing() or registered(multiprocessing_after_fork):
        return []
    found = []
    for obj, func in handlers():
        code = getattr(func, "__code__", None)
        file = getattr(code, "co_filename", None)
        if _tracking.is_server_site(file) or _is_multiprocessing_own(file):
            continue  # kombu's, billiard's, multiprocessing's own (ForkAwareThreadLock): theirs
        site = _tracking.format_site(file, code.co_firstlineno) if code is not None else None
        name = getattr(func, "__qualname__", repr(func))
        text = (f"multiprocessing.util.register_after_fork({type_name(obj)}, {name}) "
                f"{'(defined at ' + site + ') ' if site else ''}was registered in the master "
                f"(pid {master}); multiprocessing runs such handlers only in the processes it "
                f"starts itself, so it never ran in pid {here}.")
        fix = ("register the object with postfork.register() instead, or opt in once: "
               "postfork.after_fork(postfork.multiprocessing_after_fork) runs these handlers in "
               "every child postfork resets")
        found.append(Finding("hook", text, site, master, fix, name))
    return found


def _file_findings(ids: Set[int], master: int, here: int) -> List[Finding]:
    from . import _inventory
    found = []
    for holder, f in _inventory.app_files(ids):
        path = getattr(f, "name", "?")
        text = (f"file {path!r} (fd {f.fileno()}), opened for writing in the master (pid {master}) "
                f"and held by {holder}, reached pid {here} unmanaged: master and workers share "
                f"one file offset, and bytes buffered before the fork are written twice.")
        fix = (f"postfork.register({holder.rsplit('.', 1)[-1]}) (each worker reopens it in place, "
               f"with an offset of its own), or open it in each worker: "
               f"postfork.local(lambda: open({path!r}, 'a'))")
        found.append(Finding("file", text, None, master, fix, str(path)))
    return found


def _loop_findings(master: int, here: int) -> List[Finding]:
    """The master's event loop, still this thread's current loop in the worker."""
    events = sys.modules.get("asyncio.events")
    if events is None:
        return []
    local = getattr(getattr(events.get_event_loop_policy(), "_local", None), "_loop", None)
    if local is None or local.is_closed() or local.is_running():
        return []
    text = (f"the asyncio event loop created in the master (pid {master}) is still this thread's "
            f"event loop in pid {here}: its selector is the master's (one epoll instance for "
            f"both processes), and clients built on it fail here ('attached to a different "
            f"loop', 'Event loop is closed').")
    fix = ("create the loop in each worker (asyncio.run(...), or asyncio.new_event_loop() after "
           "the fork) and build asyncio clients there: postfork.local(lambda: ...)")
    return [Finding("loop", text, None, master, fix, type(local).__name__)]


def _collect(report: Optional[Report], reset: bool) -> List[Finding]:
    from . import _tracking
    with _tracking.one_look():
        return _collect_once(report, reset)


def _collect_once(report: Optional[Report], reset: bool) -> List[Finding]:
    from . import _inventory, _threads, _tracking
    here = os.getpid()
    snapshot = _inventory.snapshot()
    if report is None:
        report = REGISTRY.last()
    child = snapshot is not None or any(o.pid != here for o in _tracking.origins())
    ids = _inventory.managed_ids()
    clients = _unmanaged_clients(ids, inherited_only=child)
    findings = [_client_finding(obj, origin, here) for obj, origin in clients]
    if reset and report is not None:
        _reset_unmanaged(clients, report)
    findings += _import_findings(report, snapshot, snapshot.pid if snapshot else os.getppid(), here)
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
        master = snapshot.pid if snapshot else os.getppid()
        findings += _mp_hook_findings(master, here)
        findings += _file_findings(ids, master, here)
        findings += _loop_findings(master, here)
        reported = {id(obj) for obj, _ in clients}
        reported.update(id(ref) for obj, _ in clients for ref in _inventory.references(obj))
        findings += _socket_findings(snapshot, here, reported, ids)
    return findings


def _reset_unmanaged(clients: List[Tuple[Any, _tracking.Origin]], report: Report) -> None:
    for obj, origin in clients:
        name = f"{type_name(obj)} (unmanaged, built at {origin.site or 'unknown site'})"
        try:
            found = find_adapter(type(obj))
        except Exception as exc:
            report.entries.append(Entry(name, False, exc))
            continue
        if found is None:
            report.entries.append(Entry(name, False, TypeError(f"postfork has no adapter for {type_name(obj)}")))
            continue
        report.entries.append(run_one(name, found, obj))


_POSTFORK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _stacklevel() -> int:
    """``warnings.warn``'s stacklevel of the first frame outside postfork (the code that forked
    or called ``reset_all``), so that a finding with no known site points there."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_POSTFORK_DIR):
        frame = frame.f_back
        level += 1
    return level


def _emit(findings: List[Finding]) -> None:
    """One ForkSafetyWarning per finding, pointing at the creation site; also logged."""
    first_error: Optional[BaseException] = None
    for finding in findings:
        message = f"postfork guard: {finding}"
        # Without a configured handler the warning below already reaches stderr: say it once.
        if log.hasHandlers():
            log.warning("%s", message)
        try:
            file, _, line = (finding.created_at or "").rpartition(":")
            if file and line.isdigit():
                warnings.warn_explicit(message, ForkSafetyWarning, file, int(line))
            else:
                warnings.warn(message, ForkSafetyWarning, stacklevel=_stacklevel())
        except Exception as exc:  # warnings turned into errors: raise after every one was given
            first_error = first_error or exc
    if first_error is not None:
        raise first_error


def check() -> List[Finding]:
    """The guard's findings for this process, now, with no warning and no reset.

    In a child: the unmanaged clients built in an ancestor, the threads alive in the master at
    fork, and the inherited connected sockets still open. In the master (nothing inherited):
    the unmanaged clients it built and the threads alive now, which a worker forked now would
    inherit; sockets are judged only in a child, after the resets. Clients are known only if
    built while the guard was on.
    """
    mode()  # a bad POSTFORK_GUARD is an error here too
    return _collect(None, reset=False)


if _env_mode is not None and _env_mode != "off":
    _apply()
