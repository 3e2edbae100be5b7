#!/usr/bin/env python3
"""Run other libraries' own fork-related tests with postfork imported (``make peer``).

For each suite below this downloads the library's *source distribution* from the package index
(the very version installed in the project's ``.venv``), unpacks it, and runs the selected
tests of that release with pytest in four modes:

    none    baseline: postfork is not imported at all
    off     ``import postfork; postfork.guard("off")`` (the at-fork hook alone)
    warn    ``postfork.guard("warn")``
    reset   ``postfork.guard("reset")``

postfork is imported by the pytest plugin ``peer/postfork_peer.py`` (``-p postfork_peer``),
which pytest loads before any conftest or test module, so postfork is active before the tested
library is imported. Each mode's outcomes are compared test by test with the baseline; a
difference is either listed in EXPECTED below with the postfork behaviour that explains it, or
it is a regression and the exit status is 1.

    python peer/run.py                              # every suite, every mode
    python peer/run.py --suite redis --mode warn    # baseline + warn for redis-py only
    python peer/run.py --suite redis -k multiprocessing
    python peer/run.py --json                       # machine-readable result on stdout
    python peer/run.py --list                       # what each suite runs

Everything fetched or built lives in ``.peer/`` (gitignored): a venv of its own, the sdists, the
unpacked sources (re-unpacked on each run) and each run's pytest log. Services: Redis at
127.0.0.1:6379 on database 13 (redis-py's tests flush their database; never 0), PostgreSQL at
127.0.0.1:5432 in a database of its own, ``postfork_peer``, created on first use (SQLAlchemy's
tests create and drop tables). Nothing is pointed anywhere but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
PEER_DIR = ROOT / "peer"
DEFAULT_CACHE = ROOT / ".peer"
PROJECT_PYTHON = ROOT / ".venv" / "bin" / "python"

MODES = ("none", "off", "warn", "reset")
BASELINE = "none"

REDIS_HOST, REDIS_PORT, REDIS_DB = "127.0.0.1", 6379, 13
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_ADMIN_DSN = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test"  # the project's test DSN
PG_DB = "postfork_peer"
PG_DSN = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{PG_DB}"


# -- what runs -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """One pytest invocation inside the unpacked sdist (its root is the working directory)."""

    paths: Tuple[str, ...]
    args: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Suite:
    name: str
    dist: str                      # its name on the package index and in the project's .venv
    runs: Tuple[Run, ...]
    deps: Tuple[str, ...] = ()     # the suite's own test dependencies (pinned: reproducible)
    services: Tuple[str, ...] = ()  # "redis", "postgres"
    env: Tuple[Tuple[str, str], ...] = ()
    timeout: int = 900             # seconds for one pytest invocation in one mode
    note: str = ""


SUITES: Tuple[Suite, ...] = (
    Suite(
        name="redis",
        dist="redis",
        runs=(Run(
            paths=("tests/test_multiprocessing.py", "tests/test_connection_pool.py",
                   "tests/test_pubsub.py"),
            # tests/conftest.py reads the server from --redis-url and flushes that database.
            # The other URLs are only probed for modules, TLS and sentinels: keep them local.
            args=(f"--redis-url={REDIS_URL}", f"--redis-mod-url={REDIS_URL}",
                  "--redis-ssl-url=rediss://127.0.0.1:6666",
                  "--sentinels=127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381",
                  # as its own standalone CI job: no cluster, modules or TLS server here
                  "-m", "not onlycluster and not redismod and not ssl"),
        ),),
        # from its dev_requirements.txt, the part these three files and conftest.py import
        deps=("pytest-timeout==2.4.0", "pytest-asyncio==1.5.0", "packaging"),
        services=("redis",),
    ),
    Suite(
        name="sqlalchemy",
        dist="SQLAlchemy",
        runs=(
            Run(paths=("test/engine",),
                args=(f"--dburi=postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{PG_DB}",
                      "--maxfail=100000")),
            Run(paths=("test/ext/asyncio/test_engine.py",),
                args=(f"--dburi=postgresql+psycopg_async://postgres@{PG_HOST}:{PG_PORT}/{PG_DB}",
                      "--maxfail=100000")),
            Run(paths=("test/aaa_profiling/test_memusage.py::MemUsageWBackendTest",),
                args=(f"--dburi=postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{PG_DB}",
                      "--maxfail=100000")),
        ),
        deps=("pytest-timeout==2.4.0",),
        services=("postgres",),
        note="test_memusage.py in this release has no fork test any more (profile_memory runs "
             "in-process); its MemUsageWBackendTest still builds engines in a loop and fails "
             "if memory grows, which is what the guard's tracking could break",
    ),
    Suite(
        name="psycopg",
        dist="psycopg",
        runs=(Run(paths=("tests/test_concurrency.py",), args=(f"--test-dsn={PG_DSN}",)),),
        services=("postgres",),
        env=(("PSYCOPG_TEST_DSN", PG_DSN),),
    ),
    Suite(
        name="psycopg_pool",
        dist="psycopg-pool",
        runs=(Run(paths=("tests/pool",), args=(f"--test-dsn={PG_DSN}",)),),
        services=("postgres",),
        env=(("PSYCOPG_TEST_DSN", PG_DSN),),
    ),
    Suite(
        name="celery",
        dist="celery",
        runs=(Run(paths=("t/unit/concurrency",)),),
        # from requirements/test.txt, what t/unit/conftest.py and t/unit/concurrency need
        deps=("pytest-timeout==2.4.0", "pytest-subtests==0.15.0", "pytest-click==1.1.0",
              "pytest-order==1.5.0"),
    ),
    Suite(
        name="billiard",
        dist="billiard",
        runs=(Run(paths=("t/unit",)),),
        deps=("pytest-timeout==2.4.0", "psutil==7.2.2"),  # requirements/test.txt, without pytest-cov
    ),
    Suite(
        name="gunicorn",
        dist="gunicorn",
        # pyproject's addopts asks for pytest-cov's --cov: replaced by the rest of it.
        runs=(Run(paths=("tests",), args=("-o", "addopts=--assert=plain")),),
        # its "testing" extra (gevent: the gevent worker's tests), without pytest-cov/coverage
        deps=("pytest-timeout==2.4.0", "pytest-asyncio==1.5.0", "h2==4.4.1", "httpx[http2]==0.28.1",
              "gevent==26.9.0", "uvloop==0.23.0", "inotify==0.2.12", "packaging"),
    ),
)
SUITE_NAMES = tuple(s.name for s in SUITES)

# What every suite gets on top of its own deps: the libraries at the project's versions.
LIBRARIES = ("redis", "SQLAlchemy[asyncio]", "psycopg[binary]", "psycopg-pool", "celery[redis]",
             "billiard", "kombu", "gunicorn", "pytest")


@dataclass(frozen=True)
class Expected:
    """A difference from the baseline that is postfork's documented behaviour."""

    suite: str
    modes: Tuple[str, ...]
    nodeid: str       # fnmatch pattern
    reason: str


EXPECTED: Tuple[Expected, ...] = ()


# -- results -------------------------------------------------------------------------------

BUCKET = {"passed": "passed", "xpassed": "passed", "failed": "failed", "error": "failed",
          "skipped": "skipped", "xfailed": "skipped"}


@dataclass
class Diff:
    nodeid: str
    baseline: str      # a bucket, or "absent"
    mode: str
    message: str = ""
    expected: str = ""  # the reason, when the difference is expected


@dataclass
class Cell:
    suite: str
    mode: str
    status: str = "ran"   # ran | timeout | crashed | no-tests | service-down | not-run
    detail: str = ""
    seconds: float = 0.0
    outcomes: Dict[str, str] = field(default_factory=dict)
    messages: Dict[str, str] = field(default_factory=dict)
    logs: List[str] = field(default_factory=list)
    diffs: List[Diff] = field(default_factory=list)

    def counts(self) -> Dict[str, int]:
        c = {"passed": 0, "failed": 0, "skipped": 0}
        for outcome in self.outcomes.values():
            c[BUCKET[outcome]] += 1
        return c

    @property
    def unexpected(self) -> List[Diff]:
        return [d for d in self.diffs if not d.expected]


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the environment -----------------------------------------------------------------------

def project_versions(python: Path) -> Dict[str, str]:
    """Every distribution installed in the project's venv, by canonical name."""
    if not python.exists():
        sys.exit(f"peer: {python} does not exist; run `make venv` first (make peer does)")
    code = ("import json, importlib.metadata as m; "
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True)
    return {canonical(k): v for k, v in json.loads(out.stdout).items() if k}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def ensure_venv(cache: Path, base_python: Path, versions: Dict[str, str], suites: Sequence[Suite]) -> Path:
    """The peer venv: postfork (editable, from this checkout), the libraries at the project's
    versions (a constraints file made from the project's venv), and the suites' test deps."""
    venv = cache / "venv"
    py = venv / "bin" / "python"
    skip = {"postfork", "pip", "setuptools", "wheel"}
    constraints = "".join(f"{n}=={v}\n" for n, v in sorted(versions.items()) if n not in skip)
    reqs = sorted(set(LIBRARIES) | {d for s in SUITES for d in s.deps})
    digest = hashlib.sha256("\n".join([constraints, *reqs, str(ROOT),
                                       (ROOT / "pyproject.toml").read_text()]).encode()).hexdigest()
    stamp = venv / ".peer-installed"
    if stamp.exists() and stamp.read_text() == digest and py.exists():
        return py
    progress(f"peer: building {venv} (postfork from {ROOT}, libraries at the project's versions)")
    if not py.exists():
        subprocess.run([str(base_python), "-m", "venv", str(venv)], check=True)
    constraints_file = cache / "constraints.txt"
    constraints_file.write_text(constraints)
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "-c", str(constraints_file)]
    subprocess.run([*pip, "-e", str(ROOT), *reqs], check=True)
    stamp.write_text(digest)
    return py


def sdist(py: Path, cache: Path, dist: str, version: str) -> Path:
    """The released source distribution, downloaded once into the cache."""
    folder = cache / "sdists"
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.iterdir()):
        for ext in (".tar.gz", ".zip"):
            if path.name.endswith(ext):
                name, _, ver = path.name[: -len(ext)].rpartition("-")
                if canonical(name) == canonical(dist) and ver == version:
                    return path
    progress(f"peer: pip download --no-binary :all: --no-deps {dist}=={version}")
    subprocess.run([str(py), "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                    "--no-binary", ":all:", "--no-deps", "-d", str(folder), f"{dist}=={version}"],
                   check=True)
    return sdist(py, cache, dist, version)


def unpack(archive: Path, cache: Path) -> Path:
    """A fresh copy of the sdist's tree (tests write files; each runner invocation starts clean)."""
    dest = cache / "src"
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        top = tar.getnames()[0].split("/")[0]
        target = dest / top
        if target.exists():
            shutil.rmtree(target)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python < 3.11.4
            tar.extractall(dest)
    return target


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def prepare_postgres(py: Path) -> Optional[str]:
    """Create the peer's own database (and the schemas SQLAlchemy's reflection tests expect).
    Returns why it could not, or None."""
    code = f"""
import psycopg
with psycopg.connect({PG_ADMIN_DSN!r}, autocommit=True) as c:
    if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", ({PG_DB!r},)).fetchone():
        c.execute('CREATE DATABASE "{PG_DB}"')
with psycopg.connect({PG_DSN!r}, autocommit=True) as c:
    for schema in ("test_schema", "test_schema_2"):
        c.execute(f"CREATE SCHEMA IF NOT EXISTS {{schema}}")
"""
    done = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1]


def services_down(suite: Suite, py: Path, ready: Dict[str, Optional[str]]) -> Optional[str]:
    for service in suite.services:
        if service not in ready:
            if service == "redis":
                ok = port_open(REDIS_HOST, REDIS_PORT)
                ready[service] = None if ok else f"no Redis on {REDIS_HOST}:{REDIS_PORT}"
            elif service == "postgres":
                ready[service] = (prepare_postgres(py) if port_open(PG_HOST, PG_PORT)
                                  else f"no PostgreSQL on {PG_HOST}:{PG_PORT}")
        if ready[service]:
            return ready[service]
    return None


# -- running -------------------------------------------------------------------------------

def child_env(mode: str, report: Path, suite: Suite) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("POSTFORK_", "PYTEST_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(suite.env)
    env["PYTHONPATH"] = str(PEER_DIR)  # every mode alike; only the -p flags differ
    env["POSTFORK_PEER_REPORT"] = str(report)
    if mode != BASELINE:
        env["POSTFORK_PEER_GUARD"] = mode
    return env


def run_cell(py: Path, src: Path, suite: Suite, mode: str, cache: Path,
             select: Optional[str], timeout: Optional[int]) -> Cell:
    cell = Cell(suite.name, mode)
    logs = cache / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for i, run in enumerate(suite.runs):
        report = logs / f"{suite.name}-{mode}-{i}.json"
        log = logs / f"{suite.name}-{mode}-{i}.log"
        report.unlink(missing_ok=True)
        cmd = [str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "peer_report"]
        if mode != BASELINE:
            cmd += ["-p", "postfork_peer"]
        cmd += [*run.args, *(["-k", select] if select else []), *run.paths]
        limit = timeout or suite.timeout
        with open(log, "w") as out:
            out.write(f"# cwd {src}\n# {' '.join(cmd)}\n")
            out.flush()
            proc = subprocess.Popen(cmd, cwd=src, env=child_env(mode, report, suite),
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                kill_group(proc)
                cell.status, cell.detail = "timeout", f"{' '.join(run.paths)} ran over {limit} s"
        cell.logs.append(str(log))
        if report.exists():
            data = json.loads(report.read_text())
            cell.outcomes.update(data["outcomes"])
            cell.messages.update(data["messages"])
            if mode == BASELINE and data["postfork_imported"]:
                cell.status, cell.detail = "crashed", "postfork was imported in the baseline"
            if data["exitstatus"] not in (0, 1) and cell.status == "ran":
                cell.status = "crashed"
                cell.detail = f"pytest exit status {data['exitstatus']} for {' '.join(run.paths)}"
        elif cell.status == "ran":
            cell.status = "crashed"
            cell.detail = f"pytest exit status {proc.returncode}, no report, for {' '.join(run.paths)}"
    cell.seconds = round(time.monotonic() - started, 1)
    return cell


def kill_group(proc: "subprocess.Popen[bytes]") -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def compare(base: Cell, cell: Cell) -> None:
    """Fill cell.diffs: every test whose outcome bucket differs from the baseline's."""
    for nodeid in sorted(set(base.outcomes) | set(cell.outcomes)):
        b = BUCKET.get(base.outcomes.get(nodeid, ""), "absent")
        m = BUCKET.get(cell.outcomes.get(nodeid, ""), "absent")
        if b == m:
            continue
        diff = Diff(nodeid, b, m, cell.messages.get(nodeid) or base.messages.get(nodeid, ""))
        for exp in EXPECTED:
            if exp.suite == cell.suite and cell.mode in exp.modes and fnmatch.fnmatchcase(nodeid, exp.nodeid):
                diff.expected = exp.reason
                break
        cell.diffs.append(diff)


def verdict(base: Optional[Cell], cell: Cell) -> str:
    if cell.status != "ran":
        return f"{cell.status}: {cell.detail}" if cell.detail else cell.status
    if cell.mode == BASELINE:
        return "baseline"
    if base is None or base.status != "ran":
        return "no baseline to compare with"
    if not cell.diffs:
        return "same as baseline"
    parts = []
    bad = cell.unexpected
    if bad:
        parts.append(f"{len(bad)} differ: " + ", ".join(short(d.nodeid) for d in bad))
    known = [d for d in cell.diffs if d.expected]
    if known:
        parts.append(f"{len(known)} expected")
    return "; ".join(parts)


def short(nodeid: str) -> str:
    return nodeid.split("::", 1)[-1] if "::" in nodeid else nodeid


def ok(cells: Sequence[Cell]) -> bool:
    by_suite: Dict[str, Dict[str, Cell]] = {}
    for c in cells:
        by_suite.setdefault(c.suite, {})[c.mode] = c
    for modes in by_suite.values():
        for c in modes.values():
            if c.status == "no-tests":
                continue
            if c.status != "ran" or c.unexpected:
                return False
    return True


# -- output --------------------------------------------------------------------------------

def table(cells: Sequence[Cell], modes: Sequence[str], suites: Sequence[Suite]) -> str:
    grid = {(c.suite, c.mode): c for c in cells}
    head = "| suite | " + " | ".join(modes) + " |"
    lines = [head, "|" + "---|" * (len(modes) + 1)]
    for s in suites:
        row = [s.name]
        for m in modes:
            c = grid.get((s.name, m))
            if c is None:
                row.append("")
                continue
            if c.status in ("no-tests", "service-down"):
                row.append(c.status)
                continue
            n = c.counts()
            text = f"{n['passed']} passed, {n['failed']} failed, {n['skipped']} skipped"
            v = verdict(grid.get((s.name, BASELINE)), c)
            row.append(text if v == "baseline" else f"{text}: {v}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def details(cells: Sequence[Cell], suites: Sequence[Suite]) -> str:
    out: List[str] = []
    for c in cells:
        if c.status == "no-tests" and c.mode == BASELINE:
            out.append(f"- {c.suite}: {c.detail}")
        elif c.status not in ("ran", "no-tests"):
            out.append(f"- {c.suite} / {c.mode}: {c.status}: {c.detail} (log: {', '.join(c.logs)})")
    notes = [f"- {s.name}: {s.note}" for s in suites if s.note]
    diffs = [(c, d) for c in cells for d in c.diffs]
    text = []
    if out:
        text += ["", "Not compared:", *out]
    if diffs:
        text += ["", "Differences from the baseline (suite / mode: test: baseline -> mode):"]
        for c, d in diffs:
            tag = f"EXPECTED ({d.expected})" if d.expected else "UNEXPECTED"
            text.append(f"- {c.suite} / {c.mode}: {d.nodeid}: {d.baseline} -> {d.mode} [{tag}]")
            if d.message:
                text.append(f"    {d.message}")
    if notes:
        text += ["", "Notes:", *notes]
    return "\n".join(text)


# -- main ----------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", action="append", choices=SUITE_NAMES,
                    help="run only this suite (repeatable; default: all)")
    ap.add_argument("--mode", action="append", choices=MODES,
                    help="run only this mode (repeatable; the baseline 'none' always runs)")
    ap.add_argument("-k", dest="select", help="pytest -k expression, passed to every run")
    ap.add_argument("--timeout", type=int, help="seconds per pytest invocation (default: per suite)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    ap.add_argument("--list", action="store_true", help="show what each suite runs, then exit")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="default: %(default)s")
    ap.add_argument("--project-python", type=Path, default=PROJECT_PYTHON,
                    help="the interpreter whose library versions to test (default: %(default)s)")
    args = ap.parse_args(argv)

    suites = [s for s in SUITES if not args.suite or s.name in args.suite]
    modes = [BASELINE] + [m for m in MODES if m != BASELINE and (not args.mode or m in args.mode)]

    if args.list:
        for s in suites:
            print(f"{s.name} ({s.dist} sdist):")
            for r in s.runs:
                print(f"    pytest {' '.join(r.args)} {' '.join(r.paths)}")
        return 0

    started = time.monotonic()
    cache: Path = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    versions = project_versions(args.project_python)
    py = ensure_venv(cache, args.project_python, versions, suites)

    cells: List[Cell] = []
    ready: Dict[str, Optional[str]] = {}
    for suite in suites:
        version = versions.get(canonical(suite.dist))
        if version is None:
            sys.exit(f"peer: {suite.dist} is not installed in {args.project_python}")
        src = unpack(sdist(py, cache, suite.dist, version), cache)
        missing = [p for r in suite.runs for p in r.paths if not (src / p.split("::")[0]).exists()]
        if len(missing) == sum(len(r.paths) for r in suite.runs):
            detail = (f"the {suite.dist} {version} sdist ships no tests "
                      f"(no {', '.join(missing)}): not run")
            progress(f"[{suite.name}] {detail}")
            cells += [Cell(suite.name, m, "no-tests", detail) for m in modes]
            continue
        if missing:
            sys.exit(f"peer: {suite.dist} {version} sdist lacks {', '.join(missing)}")
        down = services_down(suite, py, ready)
        if down:
            progress(f"[{suite.name}] not run: {down}")
            cells += [Cell(suite.name, m, "service-down", down) for m in modes]
            continue
        base: Optional[Cell] = None
        for mode in modes:
            progress(f"[{suite.name} {version}] {mode}: running {len(suite.runs)} pytest run(s)")
            cell = run_cell(py, src, suite, mode, cache, args.select, args.timeout)
            if mode == BASELINE:
                base = cell
            elif base is not None:
                compare(base, cell)
            n = cell.counts()
            progress(f"[{suite.name} {version}] {mode}: {n['passed']} passed, {n['failed']} failed, "
                     f"{n['skipped']} skipped in {cell.seconds:.0f} s; {verdict(base, cell)}")
            cells.append(cell)

    elapsed = round(time.monotonic() - started, 1)
    success = ok(cells)
    if args.json:
        print(json.dumps({
            "ok": success,
            "seconds": elapsed,
            "modes": modes,
            "versions": {s.name: versions.get(canonical(s.dist)) for s in suites},
            "cells": [dict(asdict(c), counts=c.counts(),
                           verdict=verdict(next((b for b in cells if b.suite == c.suite
                                                 and b.mode == BASELINE), None), c))
                      for c in cells],
        }, indent=1))
    else:
        print(table(cells, modes, suites))
        print(details(cells, suites))
        print(f"\n{'OK' if success else 'DIFFERENT'}: {len(cells)} cells in {elapsed:.0f} s"
              f" (logs in {cache / 'logs'})")
    return 0 if success else 1


if __name__ == "__main__":
    sys.exit(main())
