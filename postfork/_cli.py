"""The ``postfork`` command: ``postfork doctor MODULE[:ATTR]``.

``doctor`` does what a preloading server does: switches the guard on, imports the application
in this process (the "master"), forks a probe child that runs the resets, and reports what the
master built, how each reset went, the threads alive at fork and the sockets the child
inherited; a fix for each finding. Exit 0 when clean, 1 on findings or failed resets, 2 when
the target cannot be imported.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import sys
import traceback
import warnings
from typing import Any, Dict, List, Optional, Sequence, TextIO

from . import _settings
from ._families import FAMILIES

__all__ = ["main"]

EXIT_CLEAN, EXIT_FINDINGS, EXIT_BAD_TARGET = 0, 1, 2


class BadTarget(Exception):
    """The target could not be imported; the message is one line for the user."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="postfork",
        description="Fork-safety tools for prefork servers (gunicorn --preload, uWSGI, Celery).",
    )
    parser.add_argument("--version", action="version", version=f"postfork {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    doctor = commands.add_parser(
        "doctor",
        help="import an app as a preloading server would, fork a probe worker, report what it inherited",
        description=(
            "Import MODULE (and ATTR) with the guard on, as a preloading server's master would, "
            "fork a probe child that runs postfork's resets, and report every client the master "
            "built (managed or not, with its creation site), each reset, the threads alive at "
            "fork and the sockets the child inherited. Exit status: 0 clean, 1 findings or "
            "failed resets, 2 the target could not be imported."
        ),
    )
    doctor.add_argument("target", metavar="MODULE[:ATTR]", help="e.g. myproject.wsgi:application")
    doctor.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    doctor.add_argument("--timeout", type=_seconds, default=30.0, help="seconds the probe child may take (30)")
    args = parser.parse_args(argv)
    if args.command != "doctor":
        parser.print_help()
        return EXIT_BAD_TARGET
    try:
        return _doctor(args.target, as_json=args.json, timeout=args.timeout)
    except KeyboardInterrupt:
        _progress_done()
        print("postfork doctor: interrupted", file=sys.stderr)
        return 130


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"takes a number of seconds above 0, got {text!r}")
    return value


# -- doctor --------------------------------------------------------------------------------

def _progress(message: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\x1b[Kpostfork doctor: {message}")
        sys.stderr.flush()


def _progress_done() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


def _doctor(target: str, *, as_json: bool, timeout: float) -> int:
    from . import ConfigError, _guard

    try:
        if _guard.mode() == "off":
            _guard.guard("warn")
        _settings.strict()
    except ConfigError as exc:
        print(f"postfork doctor: {exc}", file=sys.stderr)
        return EXIT_BAD_TARGET
    _progress(f"importing {target}…")
    try:
        _import_target(target)
    except BadTarget as exc:
        _progress_done()
        print(f"postfork doctor: {exc}", file=sys.stderr)
        return EXIT_BAD_TARGET
    _progress("forking probe…")
    gc.collect()  # what the app dropped is no client of its workers
    result = _probe(target, timeout)
    _progress_done()
    code = EXIT_CLEAN if result["ok"] else EXIT_FINDINGS
    result["exit_code"] = code
    if as_json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _render(result, sys.stdout)
    return code


def _import_target(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    if not module_name or not all(p.isidentifier() for p in module_name.split(".")):
        raise BadTarget(f"{target!r} is not MODULE[:ATTR] (e.g. myproject.wsgi:application)")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as gunicorn does: the app is importable from here
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise BadTarget(f"no module named {module_name!r} (run it from your project's "
                            f"directory, or set PYTHONPATH)") from None
        raise BadTarget(_raised(module_name, exc)) from None
    except BaseException as exc:  # SystemExit and KeyboardInterrupt from an app are its failure
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise BadTarget(_raised(module_name, exc)) from None
    for part in filter(None, attr.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise BadTarget(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def _raised(module_name: str, exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    for frame in reversed(frames):
        if "importlib" not in frame.filename and not frame.filename.startswith("<"):
            where = f" at {_short(frame.filename)}:{frame.lineno}"
            break
    return f"importing {module_name!r} raised {type(exc).__name__}: {exc}{where}"


def _short(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _master_inventory() -> Dict[str, Any]:
    """What the master holds: tracked clients (managed or not), registered entries, threads."""
    from ._guard import _inventory as inv
    from ._registry import REGISTRY

    ids = inv.managed_ids()
    clients = [{"type": inv.type_name(obj), "created_at": origin.site, "managed": managed,
                "pid": origin.pid}
               for obj, origin, managed in inv.client_roots(ids)]
    registered = REGISTRY.names()
    roots = [obj for obj, _, _ in inv.client_roots(ids)]
    threads = []
    alive = inv.alive_threads()
    for thread in alive:
        origin = thread.origin
        owner = origin.owner() if origin is not None and origin.owner is not None else None
        threads.append({
            "name": thread.name,
            "started_at": origin.site if origin is not None else None,
            "owner": inv.type_name(owner) if owner is not None else None,
            "native": thread.native,
            "library": thread.owner,
            "managed": bool(origin is not None and (origin.server or inv.is_managed(origin.owner, ids))),
        })
    libraries = {t.owner for t in alive if t.native and t.owner}
    return {"clients": clients, "registered": registered, "threads": threads,
            "notes": _notes(roots + REGISTRY.objects(), libraries)}


def _notes(objects: List[Any], libraries: "set[str]") -> List[Dict[str, Any]]:
    """The family table's notes for each family the master holds a client of (or whose
    library runs native threads in it): what must be set up before the library is imported."""
    from ._families import family_of_name
    from ._lookup import qualname

    seen = set()
    for obj in objects:
        for klass in type(obj).__mro__:
            family = family_of_name(qualname(klass))
            if family is not None:
                seen.add(family.name)
                break
    return [{"family": f.name, "note": f.note,
             "env": [{"name": name, "value": value, "now": os.environ.get(name)}
                     for name, value in f.env]}
            for f in FAMILIES if (f.note or f.env) and (f.name in seen or f.name in libraries)]


def _probe(target: str, timeout: float) -> Dict[str, Any]:
    import logging

    from . import ForkSafetyError, ResetError
    from ._guard import _fds
    from ._guard import _inventory as inv
    from .testing import ChildError, fork_child

    master = _master_inventory()
    before = {info.fd: info for info in _fds.scan() if info.connection}

    def in_child() -> Dict[str, Any]:
        import postfork

        try:
            report = postfork.reset_all()
        except (ResetError, ForkSafetyError) as exc:  # strict or raise mode: the report is there
            report = exc.report
        after = _fds.socket_inodes() or {}
        holders = inv.socket_origins(os.getpid())
        managed = inv.managed_ids()
        sockets = []
        for fd, info in sorted(before.items()):
            holder = holders.get(fd)
            root = holder.root()() if holder is not None else None
            still_open = after.get(fd) == info.inode
            sockets.append({"fd": fd, "peer": info.peer, "family": info.family,
                            "open_after_resets": still_open,
                            # a local's inherited instance keeps its connection, unused
                            "kept_by_managed_client": still_open and inv.is_managed(holder, managed),
                            "created_at": holder.site if holder is not None else None,
                            "client": inv.type_name(root) if root is not None else None})
        return {
            "pid": os.getpid(),
            "resets": [{"name": e.name, "ok": e.ok, "retired": e.retired,
                        "ms": round(e.seconds * 1e3, 3),
                        "error": None if e.ok else f"{type(e.error).__name__}: {e.error}"}
                       for e in report.entries],
            "findings": [f.as_dict() for f in report.findings],
            "sockets": sockets,
        }

    # The probe reports through this process, not through warnings or logs of its own.
    logger = logging.getLogger("postfork")
    was_disabled, logger.disabled = logger.disabled, True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            child = fork_child(in_child, reset=False)
        child_result = child.result(timeout)
        error = None
    except ChildError as exc:
        child_result, error = {"pid": None, "resets": [], "findings": [], "sockets": []}, str(exc)
    finally:
        logger.disabled = was_disabled
    failed = [r for r in child_result["resets"] if not r["ok"]]
    retired = [r for r in child_result["resets"] if r["ok"] and r.get("retired")]
    ok = error is None and not failed and not retired and not child_result["findings"]
    return {
        "target": target,
        "master_pid": os.getpid(),
        "child_pid": child_result["pid"],
        "guard": _mode_name(),
        "clients": master["clients"],
        "registered": master["registered"],
        "threads_at_fork": master["threads"],
        "notes": master["notes"],
        "resets": child_result["resets"],
        "sockets": child_result["sockets"],
        "findings": child_result["findings"],
        "probe_error": error,
        "ok": ok,
    }


def _mode_name() -> str:
    from . import _guard

    return _guard.mode()


# -- rendering -----------------------------------------------------------------------------

class _Style:
    def __init__(self, stream: TextIO) -> None:
        self.on = stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"

    def __call__(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.on else text

    def bold(self, text: str) -> str:
        return self(text, "1")

    def red(self, text: str) -> str:
        return self(text, "31;1")

    def green(self, text: str) -> str:
        return self(text, "32")

    def dim(self, text: str) -> str:
        return self(text, "2")


def _table(rows: List[List[str]], styles: Optional[List[Any]] = None) -> List[str]:
    """Left-aligned columns; ``styles[i]`` colours row i's first cell after padding."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        cells = [cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
        if styles is not None and styles[n] is not None:
            cells[0] = styles[n](cells[0])
        out.append("  " + "  ".join(cells).rstrip())
    return out


def _reset_state(reset: Dict[str, Any]) -> str:
    if not reset["ok"]:
        return "FAILED"
    return "RETIRED" if reset.get("retired") else "ok"


def _socket_state(sock: Dict[str, Any]) -> str:
    if not sock["open_after_resets"]:
        return "closed"
    return "kept" if sock["kept_by_managed_client"] else "OPEN"


def _render(result: Dict[str, Any], out: TextIO) -> None:
    s = _Style(out)
    lines: List[str] = []
    lines.append(s.bold(f"postfork doctor: {result['target']}") +
                 s.dim(f"  (master pid {result['master_pid']}, probe pid {result['child_pid']}, "
                       f"guard {result['guard']})"))
    lines.append("")

    lines.append(s.bold("Clients built in the master"))
    if result["clients"]:
        rows = [["managed" if c["managed"] else "UNMANAGED", c["type"], c["created_at"] or "?"]
                for c in result["clients"]]
        lines += _table(rows, [s.green if c["managed"] else s.red for c in result["clients"]])
    else:
        known = ", ".join(f.name for f in FAMILIES if f.name not in ("socket", "files"))
        lines.append(s.dim(f"  none of a known family ({known})"))
    lines.append("")

    lines.append(s.bold(f"Resets in the probe worker (pid {result['child_pid']})"))
    if result["resets"]:
        rows = [[_reset_state(r), r["name"],
                 r["error"] if not r["ok"] else
                 "unusable in workers: using it raises RetiredError; use postfork.local"
                 if r.get("retired") else f"{r['ms']:.2f} ms"]
                for r in result["resets"]]
        lines += _table(rows, [s.green if _reset_state(r) == "ok" else s.red for r in result["resets"]])
    else:
        lines.append(s.dim("  nothing registered"))
    if result["probe_error"]:
        lines.append(s.red("  the probe worker failed: ") + result["probe_error"].splitlines()[0])
    lines.append("")

    lines.append(s.bold("Threads alive in the master at fork"))
    threads = result["threads_at_fork"]
    if threads:
        rows = [["managed" if t["managed"] else "UNMANAGED", t["name"],
                 (f"native, started by C code{' (' + t['library'] + ')' if t.get('library') else ''}"
                  if t.get("native") else
                  (t["started_at"] or "start site unknown") + (f" by {t['owner']}" if t["owner"] else ""))]
                for t in threads]
        lines += _table(rows, [s.green if t["managed"] else s.red for t in threads])
    else:
        lines.append(s.dim("  only the main thread"))
    if threads:
        lines.append(s.dim("  under uWSGI: threads run in the master, so start uWSGI with "
                           "--py-call-uwsgi-fork-hooks (without it a worker forked while one of "
                           "them holds or waits for the GIL hangs for good: unbit/uwsgi#1149)"))
    if sys.version_info[:2] == (3, 13):
        lines.append(s.dim("  under uWSGI on CPython 3.13: leave out --py-call-osafterfork (with it "
                           "pyuwsgi kills every worker at fork: '_PyRecursiveMutex_Unlock', postfork "
                           "or not); postfork's uWSGI integration does not need it"))
    lines.append("")

    lines.append(s.bold("Connected sockets the worker inherited"))
    if result["sockets"]:
        rows = [[_socket_state(k), f"fd {k['fd']}", k["peer"] or "?",
                 " ".join(filter(None, [k["client"], k["created_at"] and f"({k['created_at']})"]))]
                for k in result["sockets"]]
        lines += _table(rows, [s.red if _socket_state(k) == "OPEN" else s.green for k in result["sockets"]])
    else:
        lines.append(s.dim("  none"))
    lines.append("")

    if result.get("notes"):
        lines.append(s.bold("Notes"))
        for note in result["notes"]:
            lines.append(f"  {note['family']}: {note['note']}")
            for var in note["env"]:
                now = "unset" if var["now"] is None else repr(var["now"])
                lines.append(f"    {var['name']}={var['value']}  (now: {now})")
        lines.append("")

    findings = result["findings"]
    if findings:
        lines.append(s.bold(f"Findings ({len(findings)})"))
        for n, f in enumerate(findings, 1):
            lines.append(f"  {n}. {s.red(f['kind'])}: {f['description']}")
            if f.get("fix"):
                lines.append(f"     fix: {f['fix']}")
        lines.append("")

    failed = sum(1 for r in result["resets"] if not r["ok"])
    retired = sum(1 for r in result["resets"] if r["ok"] and r.get("retired"))
    summary = (f"{len(findings)} finding{'' if len(findings) == 1 else 's'}, "
               f"{failed} failed reset{'' if failed == 1 else 's'}")
    if retired:
        summary += (f", {retired} client{'' if retired == 1 else 's'} retired in every worker "
                    f"(build {'it' if retired == 1 else 'them'} per process with postfork.local)")
    if result["ok"]:
        lines.append(s.green(s.bold("✓ fork-safe")) + f": {summary}; every worker starts with its own clients.")
    else:
        lines.append(s.red(s.bold("✗ not fork-safe")) + f": {summary}.")
    out.write("\n".join(lines) + "\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
