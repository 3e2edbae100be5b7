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
library is imported. Each mode's outcomes are compared test by test with the baseline. The
files of the tests that differ run again in both modes: a difference that does not come back is
listed as flaky and not counted (the shared Redis's pub/sub counters, timing-bound tests). A
difference that comes back is either listed in EXPECTED below with the documented postfork
behaviour that explains it, or it is a regression and the exit status is 1.

    python peer/run.py                              # every suite, every mode
    python peer/run.py --suite redis --mode warn    # baseline + warn for redis-py only
    python peer/run.py --suite redis -k multiprocessing
    python peer/run.py --json                       # machine-readable result on stdout
    python peer/run.py --list                       # what each suite runs

Everything fetched or built lives in ``.peer/`` (gitignored): one venv for every suite (postfork
editable from this checkout, the libraries pinned to the project venv's versions, the union of
the suites' test dependencies: their pytest plugins load in every suite, alike in every mode),
the sdists, the unpacked sources (re-unpacked on each run) and each run's pytest log. The tests
run from the sdist's root, so they import the library's released source from there. Services: Redis at
127.0.0.1:6379 on database 15 (redis-py's tests flush their database; never 0), PostgreSQL at
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
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
PEER_DIR = ROOT / "peer"
DEFAULT_CACHE = ROOT / ".peer"
PROJECT_PYTHON = ROOT / ".venv" / "bin" / "python"

MODES = ("none", "off", "warn", "reset")
BASELINE = "none"

REDIS_HOST, REDIS_PORT, REDIS_DB = "127.0.0.1", 6379, 15
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
        timeout=300,
        note="test_connection_pool.py's tests that send DEBUG (busy loading, OOM, read-only, auth "
             "errors) fail in every mode, the baseline included: the local Redis refuses DEBUG "
             "(enable-debug-command no)",
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
        services=("postgres",),
        timeout=600,
        note="test_memusage.py in this release has no fork test any more (profile_memory runs "
             "in-process); its MemUsageWBackendTest still builds engines in a loop and fails "
             "if memory grows, which is what the guard's tracking could break",
    ),
    # psycopg's and psycopg_pool's tests live in their repository only: neither sdist ships them
    # (checked: psycopg 3.3.9, psycopg-pool 3.3.3), so these two report "no-tests" and run
    # nothing. Paths and --test-dsn follow the repository's layout, for a release that ships them.
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
        timeout=300,
    ),
    Suite(
        name="billiard",
        dist="billiard",
        runs=(Run(paths=("t/unit",)),),
        deps=("psutil==7.2.2",),  # requirements/test.txt, without pytest-cov
        timeout=300,
    ),
    Suite(
        name="gunicorn",
        dist="gunicorn",
        # pyproject's addopts asks for pytest-cov's --cov: replaced by the rest of it.
        runs=(Run(paths=("tests",), args=("-o", "addopts=--assert=plain")),),
        # its "testing" extra (gevent: the gevent worker's tests), without pytest-cov/coverage
        deps=("pytest-asyncio==1.5.0", "h2==4.4.1", "httpx[http2]==0.28.1",
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


# None with the versions tested so far. What belongs here: a test that fails only because
# postfork does what its README says, e.g. in "warn" and "reset" mode a forked child that
# inherited an unmanaged client emits a ForkSafetyWarning, so a test asserting that a child's
# stderr stays silent fails. A postfork bug never belongs here: the table must show it.
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
    # Rerun of the test's file in both modes: True, the difference came back; False, it did
    # not (a flaky test: the shared Redis's pub/sub counters, timing); None, not rerun.
    reproduced: Optional[bool] = None


@dataclass
class Cell:
    suite: str
    mode: str
    status: str = "ran"   # ran | timeout | crashed | no-tests | service-down
    detail: str = ""
    seconds: float = 0.0
    outcomes: Dict[str, str] = field(default_factory=dict)
    messages: Dict[str, str] = field(default_factory=dict)
    logs: List[str] = field(default_factory=list)
    diffs: List[Diff] = field(default_factory=list)
    # What postfork did in the forked children (from postfork_peer's per-child lines).
    forks: int = 0
    findings: Dict[str, int] = field(default_factory=dict)   # by kind: client, thread, socket
    resets: int = 0
    reset_failures: List[str] = field(default_factory=list)  # distinct, first few
    retries: List[str] = field(default_factory=list)  # pytest died and ran again: why

    def counts(self) -> Dict[str, int]:
        c = {"passed": 0, "failed": 0, "skipped": 0}
        for outcome in self.outcomes.values():
            c[BUCKET[outcome]] += 1
        return c

    @property
    def unexpected(self) -> List[Diff]:
        """The differences that count: not expected, and not gone on a rerun."""
        return [d for d in self.diffs if not d.expected and d.reproduced is not False]

    @property
    def flaky(self) -> List[Diff]:
        return [d for d in self.diffs if not d.expected and d.reproduced is False]


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


def ensure_venv(cache: Path, base_python: Path, versions: Dict[str, str]) -> Path:
    """The peer venv: postfork (editable, from this checkout), the libraries at the project's
    versions (a constraints file made from the project's venv), and every suite's test deps
    (all of them whatever --suite says, so that narrowing a run never rebuilds the venv)."""
    venv = cache / "venv"
    py = venv / "bin" / "python"
    reqs = sorted(set(LIBRARIES) | {d for s in SUITES for d in s.deps})
    # A suite's own pinned test dependency (gunicorn's tests pin httpx==0.28.1) wins over the
    # project's version of it: the two cannot both hold, and it is not a library under test.
    pinned = {canonical(re.split(r"[\[=<>!~ ]", r, maxsplit=1)[0]) for r in reqs if "==" in r}
    skip = {"postfork", "pip", "setuptools", "wheel"} | pinned
    constraints = "".join(f"{n}=={v}\n" for n, v in sorted(versions.items()) if n not in skip)
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
    found = cached_sdist(folder, dist, version)
    if found is not None:
        return found
    progress(f"peer: pip download --no-binary :all: --no-deps {dist}=={version}")
    done = subprocess.run([str(py), "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                           "--no-binary", ":all:", "--no-deps", "-d", str(folder),
                           f"{dist}=={version}"])
    if done.returncode != 0:
        sys.exit(f"peer: pip could not download the {dist} {version} sdist (see above)")
    found = cached_sdist(folder, dist, version)
    if found is None:
        sys.exit(f"peer: pip download left no {dist} {version} sdist in {folder}")
    return found


def cached_sdist(folder: Path, dist: str, version: str) -> Optional[Path]:
    for path in sorted(folder.glob("*.tar.gz")):  # an sdist is a .tar.gz (PEP 625)
        name, _, ver = path.name[: -len(".tar.gz")].rpartition("-")
        if canonical(name) == canonical(dist) and ver == version:
            return path
    return None


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

def child_env(mode: str, report: Path, forks: Path, suite: Suite) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("POSTFORK_", "PYTEST_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(suite.env)
    env["PYTHONPATH"] = str(PEER_DIR)  # every mode alike; only the -p flags differ
    env["POSTFORK_PEER_REPORT"] = str(report)
    if mode != BASELINE:
        env["POSTFORK_PEER_GUARD"] = mode
        env["POSTFORK_PEER_FORKS"] = str(forks)
    return env


@dataclass
class Attempt:
    """One pytest invocation's result."""

    status: str             # ran | timeout | crashed
    detail: str = ""
    data: Optional[Dict[str, Any]] = None  # peer_report's JSON
    log: str = ""
    forks: Optional[Path] = None


def run_pytest(py: Path, src: Path, suite: Suite, mode: str, run: Run, stem: str, cache: Path,
               select: Optional[str], limit: int) -> Attempt:
    logs = cache / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    report, log, forks = (logs / f"{stem}{ext}" for ext in (".json", ".log", ".forks.jsonl"))
    running = Path(f"{report}.running")
    for path in (report, forks, running):
        path.unlink(missing_ok=True)
    cmd = [str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "peer_report"]
    if mode != BASELINE:
        cmd += ["-p", "postfork_peer"]
    cmd += [*run.args, *(["-k", select] if select else []), *run.paths]
    what = " ".join(run.paths)
    attempt = Attempt("ran", log=str(log), forks=forks)
    with open(log, "w") as out:
        out.write(f"# cwd {src}\n# {shlex.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=src, env=child_env(mode, report, forks, suite),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            attempt.status, attempt.detail = "timeout", f"{what} ran over {limit} s"
    died_in = running.read_text().strip() if running.exists() else ""
    if report.exists():
        attempt.data = json.loads(report.read_text())
        # 0 all passed, 1 some failed, 5 nothing selected (-k); else pytest itself broke
        status = attempt.data["exitstatus"]
        if status not in (0, 1, 5) and attempt.status == "ran":
            attempt.status, attempt.detail = "crashed", f"pytest exit status {status} for {what}"
    elif attempt.status == "ran":
        why = ("pytest-timeout ended the process"
               if "+++ Timeout +++" in log.read_text(errors="replace") else
               f"pytest exit status {proc.returncode}, no report")
        attempt.status = "crashed"
        attempt.detail = f"{why}, in {died_in or what}"
    elif died_in:
        attempt.detail += f", in {died_in}"
    return attempt


def run_cell(py: Path, src: Path, suite: Suite, mode: str, cache: Path,
             select: Optional[str], timeout: Optional[int],
             runs: Optional[Sequence[Run]] = None, tag: str = "") -> Cell:
    """Run the suite's pytest invocations (or ``runs``) in one mode; ``tag`` names the logs.

    A pytest process that dies (pytest-timeout's per-test limit ends the whole process; redis-py
    sets 30 s) leaves no outcome for the rest of its tests, so that invocation runs once more
    and the cell says so; a second death, or the runner's own time limit, ends the cell."""
    cell = Cell(suite.name, mode)
    started = time.monotonic()
    for i, run in enumerate(suite.runs if runs is None else runs):
        stem = f"{suite.name}-{mode}{tag}-{i}"
        limit = timeout or suite.timeout
        attempt = run_pytest(py, src, suite, mode, run, stem, cache, select, limit)
        if attempt.status == "crashed":
            cell.retries.append(f"first attempt died: {attempt.detail}")
            progress(f"[{suite.name}] {mode}: pytest died ({attempt.detail}); running it again")
            cell.logs.append(attempt.log)
            attempt = run_pytest(py, src, suite, mode, run, stem + "-retry", cache, select, limit)
        cell.logs.append(attempt.log)
        if attempt.forks is not None and attempt.forks.exists():
            count_activity(cell, attempt.forks)
        if attempt.data is not None:
            cell.outcomes.update(attempt.data["outcomes"])
            cell.messages.update(attempt.data["messages"])
            if mode == BASELINE and attempt.data["postfork_imported"]:
                attempt.status, attempt.detail = "crashed", "postfork was imported in the baseline"
        if attempt.status != "ran" and cell.status == "ran":
            cell.status, cell.detail = attempt.status, attempt.detail
    cell.seconds = round(time.monotonic() - started, 1)
    return cell


def count_activity(cell: Cell, forks: Path) -> None:
    for text in forks.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            line = json.loads(text)
        except ValueError:  # two children appending at once can garble a line
            continue
        cell.forks += 1
        cell.resets += line.get("resets", 0)
        for kind in line.get("findings", ()):
            cell.findings[kind] = cell.findings.get(kind, 0) + 1
        for failure in line.get("failed", ()) + ([line["raised"]] if "raised" in line else []):
            if failure not in cell.reset_failures and len(cell.reset_failures) < 5:
                cell.reset_failures.append(failure)


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


def narrowed(suite: Suite, files: Sequence[str]) -> List[Run]:
    """The suite's runs cut down to ``files`` (test files, relative to the sdist's root)."""
    runs = []
    for run in suite.runs:
        paths = []
        for f in files:
            for p in run.paths:
                base = p.split("::")[0].rstrip("/")
                if f == base:
                    paths.append(p)  # keep a ::Class restriction
                elif f.startswith(base + "/"):
                    paths.append(f)
        if paths:
            runs.append(Run(tuple(dict.fromkeys(paths)), run.args))
    return runs


def rerun_diffs(py: Path, src: Path, suite: Suite, cells: Dict[str, Cell], cache: Path,
                select: Optional[str], timeout: Optional[int]) -> None:
    """Run the files of every unexpected difference again, baseline and mode, and mark each
    difference reproduced or not. A shared server (Redis's pub/sub counters are global to it)
    or a timing-bound test can differ once by chance; a rerun of the whole file keeps the
    order effects within it."""
    pending = {m: c.unexpected for m, c in cells.items()
               if m != BASELINE and c.status == "ran" and c.unexpected}
    if not pending:
        return
    def files(diffs: Sequence[Diff]) -> List[str]:
        return sorted({d.nodeid.split("::")[0] for d in diffs if "::" in d.nodeid})
    every = sorted({f for diffs in pending.values() for f in files(diffs)})
    progress(f"[{suite.name}] rerunning {len(every)} file(s) with differences, to tell "
             f"reproducible from flaky: {', '.join(every)}")
    base = run_cell(py, src, suite, BASELINE, cache, select, timeout, narrowed(suite, every), "-rerun")
    for mode, diffs in pending.items():
        again = run_cell(py, src, suite, mode, cache, select, timeout,
                         narrowed(suite, files(diffs)), "-rerun")
        for d in diffs:
            if "::" not in d.nodeid or base.status != "ran" or again.status != "ran":
                d.reproduced = True  # cannot tell: count it
                continue
            b = BUCKET.get(base.outcomes.get(d.nodeid, ""), "absent")
            m = BUCKET.get(again.outcomes.get(d.nodeid, ""), "absent")
            d.reproduced = (b, m) == (d.baseline, d.mode)
        n = sum(1 for d in diffs if d.reproduced)
        progress(f"[{suite.name}] {mode}: {n} of {len(diffs)} difference(s) reproduced on rerun")


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
        return "baseline" + ("; pytest died once and ran again (below)" if cell.retries else "")
    if base is None or base.status != "ran":
        return "no baseline to compare with"
    bad, flaky = cell.unexpected, cell.flaky
    known = [d for d in cell.diffs if d.expected]
    parts = [] if bad else ["same as baseline"]
    if bad:
        names = ", ".join(short(d.nodeid) for d in bad[:VERDICT_NAMES])
        more = f" and {len(bad) - VERDICT_NAMES} more" if len(bad) > VERDICT_NAMES else ""
        parts.append(f"{len(bad)} differ: {names}{more}")
    if known:
        parts.append(f"{len(known)} expected difference{'s' if len(known) > 1 else ''} (documented)")
    if flaky:
        parts.append(f"{len(flaky)} flaky, not reproduced on rerun: "
                     + ", ".join(short(d.nodeid) for d in flaky[:VERDICT_NAMES]))
    if cell.retries:
        parts.append("pytest died once and ran again (below)")
    return "; ".join(parts)


VERDICT_NAMES = 2  # tests named in a table cell; the list below the table names them all


def short(nodeid: str) -> str:
    """``test_x[param]`` from ``path/test_file.py::Class::test_x[param]``."""
    return nodeid.rsplit("::", 1)[-1]


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
            text = f"{n['passed']} passed, {n['failed']} failed, {n['skipped']} skipped ({c.seconds:.0f} s)"
            v = verdict(grid.get((s.name, BASELINE)), c)
            row.append(f"{text}: {v}" if v != "baseline" else text)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def activity(cells: Sequence[Cell], modes: Sequence[str], suites: Sequence[Suite]) -> str:
    """Second table: what postfork did in the forked children of each run (proof it was on)."""
    shown = [m for m in modes if m != BASELINE]
    grid = {(c.suite, c.mode): c for c in cells if c.status not in ("no-tests", "service-down")}
    if not shown or not any((s.name, m) in grid for s in suites for m in shown):
        return ""
    lines = ["", "What postfork did in the forked children (forks seen by postfork's at-fork hook; "
             "guard findings; resets run, failed):", "",
             "| suite | " + " | ".join(shown) + " |", "|" + "---|" * (len(shown) + 1)]
    for s in suites:
        if not any((s.name, m) in grid for m in shown):
            continue
        row = [s.name]
        for m in shown:
            c = grid.get((s.name, m))
            if c is None:
                row.append("")
                continue
            found = ", ".join(f"{n} {kind}" for kind, n in sorted(c.findings.items())) or "none"
            row.append(f"{c.forks} forks; findings: {found}; resets {c.resets}, "
                       f"{len(c.reset_failures)} failed")
        lines.append("| " + " | ".join(row) + " |")
    failures = [(c, f) for c in cells for f in c.reset_failures]
    if failures:
        lines += ["", "Failed resets (first few per cell):"]
        lines += [f"- {c.suite} / {c.mode}: {f}" for c, f in failures]
    return "\n".join(lines)


def label(d: Diff) -> str:
    if d.expected:
        return f"expected: {d.expected}"
    if d.reproduced is False:
        return "flaky: not reproduced on rerun, not counted"
    return "UNEXPECTED, reproduced on rerun" if d.reproduced else "UNEXPECTED"


def details(cells: Sequence[Cell], suites: Sequence[Suite]) -> str:
    text: List[str] = []
    skipped = [c for c in cells if c.status == "no-tests" and c.mode == BASELINE]
    broken = [c for c in cells if c.status not in ("ran", "no-tests")]
    if skipped or broken:
        text += ["", "Not compared:"]
        text += [f"- {c.suite}: {c.detail}" for c in skipped]
        text += [f"- {c.suite} / {c.mode}: {c.status}: {c.detail} (log: {', '.join(c.logs)})"
                 for c in broken]
    # One block per suite, mode and failure message (pids and addresses aside): 40 tests
    # failing alike read as one cause.
    groups: Dict[Tuple[str, str, str, str, str], List[str]] = {}
    shown: Dict[Tuple[str, str, str, str, str], str] = {}
    for c in cells:
        for d in c.diffs:
            key = (c.suite, c.mode, f"{d.baseline} -> {d.mode}", label(d),
                   re.sub(r"0x[0-9a-fA-F]+|\d+", "N", d.message))
            groups.setdefault(key, []).append(d.nodeid)
            shown.setdefault(key, d.message)
    if groups:
        text += ["", "Differences from the baseline:"]
        for key, nodeids in groups.items():
            suite, mode, change, tag, _ = key
            message = shown[key]
            text.append(f"- {suite} / {mode}: {len(nodeids)} test{'s' if len(nodeids) > 1 else ''} "
                        f"{change} [{tag}]")
            if message:
                text.append(f"    {message}")
            text += [f"    {nodeid}" for nodeid in nodeids]
    retried = [f"- {c.suite} / {c.mode}: {r}" for c in cells for r in c.retries]
    if retried:
        text += ["", "pytest processes that died and ran again (the outcomes above are the second run's):",
                 *retried]
    notes = [f"- {s.name}: {s.note}" for s in suites if s.note]
    if notes:
        text += ["", "Notes:", *notes]
    return "\n".join(text)


def as_json(cells: Sequence[Cell], modes: Sequence[str], suites: Sequence[Suite],
            versions: Dict[str, str], success: bool, elapsed: float) -> Dict[str, object]:
    """The result without each test's outcome (those are in the logs' per-run .json files)."""
    bases = {c.suite: c for c in cells if c.mode == BASELINE}
    out = []
    for c in cells:
        d = asdict(c)
        del d["outcomes"], d["messages"]
        d["counts"] = c.counts()
        d["verdict"] = verdict(bases.get(c.suite), c)
        d["diffs"] = [dict(asdict(x), counted=x in c.unexpected) for x in c.diffs]
        out.append(d)
    return {"ok": success, "seconds": elapsed, "modes": list(modes),
            "versions": {s.name: versions.get(canonical(s.dist)) for s in suites}, "cells": out}


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
    ap.add_argument("--no-rerun", dest="rerun", action="store_false",
                    help="count every difference; by default the files of differing tests run "
                         "again in both modes and a difference that does not come back is "
                         "listed as flaky and not counted")
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
                print(f"    pytest {shlex.join([*r.args, *r.paths])}")
        return 0

    started = time.monotonic()
    cache: Path = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    versions = project_versions(args.project_python)
    py = ensure_venv(cache, args.project_python, versions)

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
        done: Dict[str, Cell] = {}
        for mode in modes:
            progress(f"[{suite.name} {version}] {mode}: running {len(suite.runs)} pytest run(s)")
            cell = run_cell(py, src, suite, mode, cache, args.select, args.timeout)
            if mode == BASELINE:
                base = cell
            elif base is not None and base.status == "ran":
                compare(base, cell)
            n = cell.counts()
            progress(f"[{suite.name} {version}] {mode}: {n['passed']} passed, {n['failed']} failed, "
                     f"{n['skipped']} skipped in {cell.seconds:.0f} s; {verdict(base, cell)}")
            done[mode] = cell
        if args.rerun:
            rerun_diffs(py, src, suite, done, cache, args.select, args.timeout)
        cells += done.values()

    elapsed = round(time.monotonic() - started, 1)
    success = ok(cells)
    result = json.dumps(as_json(cells, modes, suites, versions, success, elapsed), indent=1)
    (cache / "last-run.json").write_text(result)
    if args.json:
        print(result)
    else:
        print(table(cells, modes, suites))
        print(activity(cells, modes, suites))
        print(details(cells, suites))
        print(f"\n{'OK' if success else 'DIFFERENT'}: {len(cells)} cells in {elapsed:.0f} s"
              f" (logs in {cache / 'logs'})")
    return 0 if success else 1


if __name__ == "__main__":
    sys.exit(main())
