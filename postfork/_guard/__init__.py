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
from typing import Any, Iterable, List, Optional, Set, Tuple

from .. import _settings
from .._errors import ConfigError, ForkSafetyError, ForkSafetyWarning
from .._lookup import calls_for, find_adapter, fix_for, type_name
from .._registry import REGISTRY, log, run_one
from .._report import Entry, Finding, Report
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
    global _snapshot_installed
    on = mode() != "off"
    if on:
        _threads.install()
        if not _snapshot_installed and hasattr(os, "register_at_fork"):
            _snapshot_installed = True
            os.register_at_fork(before=_before_fork)
        if _OBSERVER not in REGISTRY.observers:
            REGISTRY.observers.append(_OBSERVER)
    elif _OBSERVER in REGISTRY.observers:
        REGISTRY.observers.remove(_OBSERVER)
    _tracking.enable(on)


def _before_fork() -> None:
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
    _set_mode(_settings.parse_guard(mode, "postfork.guard(mode)"))


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
    me = os.getpid()
    return [(obj, origin) for obj, origin, managed in _inventory.client_roots(ids)
            if not managed and not (inherited_only and origin.pid == me)]


def _client_finding(obj: Any, origin: _tracking.Origin, here: int) -> Finding:
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
    fix = fix_for(obj) or _FIX_CLIENT.format(calls=calls_for(obj))
    return Finding("client", text, site, origin.pid, fix, name)


def _thread_findings(threads: Iterable[_threads.AliveThread], master: int, here: int,
                     ids: Set[int]) -> List[Finding]:
    found = []
    for thread in threads:
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


def _socket_findings(snapshot: Optional[_inventory.Snapshot], here: int, reported: Set[int],
                     managed: Set[int]) -> List[Finding]:
    """Connected sockets inherited from the master and still open after the resets; those of a
    client already reported (``reported``: ids) are part of its finding, and those of a managed
    client are its reset's business (a ``local``'s inherited instance is kept, unused, with its
    connection: dropping it would run its finalizers)."""
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
        found.append(Finding("socket", text, site, master, fix, info.peer or ""))
    return found


def _collect(report: Optional[Report], reset: bool) -> List[Finding]:
    here = os.getpid()
    snapshot = _inventory.snapshot()
    child = snapshot is not None or any(o.pid != here for o in _tracking.origins())
    ids = _inventory.managed_ids()
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
