"""The soak's machinery: start a server (gunicorn, uWSGI, a Celery worker) on the soak app, load
it from threads, check every answer and the journal, sample the master's descriptors and RSS
through /proc, count the soak's own server-side connections, and kill or restart things on
the way. ``run_scenario`` runs one scenario and returns its figures and the problems found.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple
from urllib.parse import urlparse, urlunparse

from _journal import parse
from _services import PostgresServer, RedisServer, free_port, workdir

SOAK = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
REDIS_URL = os.environ.get("SOAK_REDIS_URL") or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get("POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_DB = 11  # the soak's own database: the suite uses 13 to 15, other programs 0
RSS_TOLERANCE_KIB = 2048


def progress(message: str) -> None:
    print(f"soak: {message}", file=sys.stderr, flush=True)


@dataclass
class Scenario:
    name: str
    server: str  # "gunicorn", "uwsgi" or "celery"
    requests: int  # HTTP requests, or Celery tasks
    checkpoint: int  # the master is sampled after this many, and at the end
    workers: int = 4
    max_requests: int = 25  # recycling: gunicorn max_requests, uWSGI max-requests, Celery max-tasks-per-child
    jitter: int = 10
    kill_every: int = 0  # kill -9 a random worker every this many requests
    restarts: bool = False  # the soak's own Redis and PostgreSQL, each restarted under load
    threads: int = 6


def scenarios(scale: float = 1.0) -> List[Scenario]:
    """Every scenario; ``scale`` 0.1 is the short form (tests/test_soak.py, ``make soak SHORT=1``)."""
    def n(full: int) -> int:
        return max(int(full * scale), 20)

    return [
        Scenario("gunicorn", "gunicorn", n(5000), n(500)),
        Scenario("uwsgi", "uwsgi", n(5000), n(500), jitter=3),
        # first sampled once every pool process has been replaced twice: billiard's main
        # process holds 41 descriptors after 20 tasks, one pipe more from 40 tasks on, the same
        # to 1,000 (a warm-up, not a leak; seen as "master fds 41 -> 42" at a tenth of the scale)
        Scenario("celery", "celery", n(1000), max(n(100), 2 * 4 * 5), max_requests=5, threads=8),
        Scenario("restarts", "gunicorn", n(2000), n(200), max_requests=0, restarts=True),
        Scenario("gunicorn-kill9", "gunicorn", n(3000), n(300), max_requests=0, kill_every=n(300)),
        Scenario("uwsgi-kill9", "uwsgi", n(2000), n(200), max_requests=0, kill_every=n(250)),
    ]


# --- processes -------------------------------------------------------------------------------

class Proc:
    """One server process group and its log; :meth:`stop` always ends the whole group."""

    def __init__(self, argv: List[str], log: Path, env: Dict[str, str], stop_signal: int) -> None:
        self.argv = argv
        self.log_path = log
        self.stop_signal = stop_signal
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(argv, cwd=SOAK, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(self.stop_signal)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(10)
            self._log.close()
        return self.proc.returncode


def children(pid: int) -> List[int]:
    """The live child processes of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state not in "ZX":  # not a killed one awaiting its reaping
                found.append(int(entry))
    return found


def fds_and_rss(pid: int) -> Tuple[int, int]:
    """(open descriptors, VmRSS in KiB) of ``pid``."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]
    return fds, rss


def fd_kinds(pid: int) -> Dict[str, int]:
    """What ``pid``'s descriptors are, counted by kind (``socket``, ``pipe``, a path...)."""
    kinds: Dict[str, int] = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        kind = re.sub(r":\[\d+\]$", "", target)
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def quiet_sample(pid: int, workers: int, timeout: float = 30.0) -> Tuple[int, int]:
    """The master's (fds, RSS) once it has its ``workers`` children and the same fd count three
    times in a row: a worker being replaced holds a descriptor of the master's for a moment."""
    deadline = time.monotonic() + timeout
    seen: List[int] = []
    while time.monotonic() < deadline:
        fds, rss = fds_and_rss(pid)
        seen = (seen + [fds])[-3:] if len(children(pid)) == workers else []
        if len(seen) == 3 and len(set(seen)) == 1:
            return fds, rss
        time.sleep(0.2)
    raise RuntimeError(f"pid {pid}: no steady state with {workers} children in {timeout} s")


def wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def get(port: int, path: str, timeout: float = 60.0) -> Dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: {resp.status} {body[:200]!r}")
        return json.loads(body)  # type: ignore[no-any-return]
    finally:
        conn.close()


# --- the soak's own connections, as the servers see them --------------------------------------

def redis_connections(url: str, name: str) -> int:
    import redis

    with redis.Redis.from_url(url, socket_timeout=5) as probe:
        return sum(1 for c in probe.client_list() if c.get("name") == name)


def postgres_connections(dsn: str, application_name: str) -> int:
    import psycopg

    with psycopg.connect(dsn, connect_timeout=5, application_name="postfork_soak_probe") as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                           (application_name,)).fetchone()
    return int(row[0]) if row else 0


def with_db(url: str, db: int) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{db}"))


def with_application_name(dsn: str, name: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}application_name={name}"


# --- answers and the journal ----------------------------------------------------------------

def expected(ident: str, n: int) -> Dict[str, Any]:
    return {"redis": f"{ident}:{n}", "postgres": n, "sqlite": f"sq{(n % 100) ** 2}"}


def number(i: int) -> int:
    return (i * 7919 + 13) % 1_000_003


@dataclass
class Tally:
    """Every outcome of a scenario's requests or tasks."""

    answered: List[Dict[str, Any]] = field(default_factory=list)  # the app's replies
    failed: Dict[str, str] = field(default_factory=dict)  # id -> why no reply came
    spans: List[Tuple[float, float]] = field(default_factory=list)  # each request's monotonic start, end
    lock: threading.Lock = field(default_factory=threading.Lock)

    def in_flight(self, window: Tuple[float, float]) -> int:
        """How many requests were in flight at some moment of ``window``."""
        down, up = window
        return sum(1 for start, end in self.spans if start < up and end > down)

    def wrong(self) -> List[str]:
        out = []
        for r in self.answered:
            want = expected(r["id"], r["n"])
            for name, got in r["answers"].items():
                if got is not None and got != want[name]:
                    out.append(f"{r['id']} pid {r['pid']} {name}: wanted {want[name]!r}, got {got!r}")
        return out

    def client_errors(self) -> int:
        return sum(1 for r in self.answered if r["errors"])

    def errors_by_client(self) -> Dict[str, int]:
        counts: Dict[str, int] = {}
        for r in self.answered:
            for name in r["errors"]:
                counts[name] = counts.get(name, 0) + 1
        return counts

    def pids(self) -> Set[int]:
        return {r["pid"] for r in self.answered}


def check_journal(path: Path, tally: Tally) -> Dict[str, Any]:
    """Every line intact (its CRC matches); each answered request's line exactly once, naming
    the pid that answered; a failed request's at most once; no other line."""
    counts: Dict[str, int] = {}
    owner: Dict[str, int] = {}
    bad = 0
    lines = path.read_text().splitlines() if path.exists() else []
    for line in lines:
        parsed = parse(line)
        if parsed is None:
            bad += 1
            continue
        ident, pid, _ = parsed
        counts[ident] = counts.get(ident, 0) + 1
        owner[ident] = pid
    answered = {r["id"]: r["pid"] for r in tally.answered}
    missing = [i for i in answered if counts.get(i, 0) == 0]
    repeated = [i for i, c in counts.items() if c > 1]
    foreign = [i for i in counts if i not in answered and i not in tally.failed]
    misattributed = [i for i, pid in answered.items() if i in owner and owner[i] != pid]
    return {"lines": len(lines), "bad": bad, "missing": len(missing), "repeated": len(repeated),
            "foreign": len(foreign), "misattributed": len(misattributed)}


# --- load -----------------------------------------------------------------------------------

def http_load(port: int, tag: str, start: int, stop: int, threads: int, tally: Tally,
              every: Optional[Tuple[int, Callable[[], None]]] = None,
              at: Optional[Dict[int, Callable[[], None]]] = None) -> None:
    """Requests ``start``..``stop``-1 from ``threads`` threads. ``every=(k, action)`` runs
    action after each k-th completed request, ``at={count: action}`` once at that count; an
    action runs in the thread that completed the request while the others keep going."""
    done = [0]

    def one(i: int) -> None:
        ident, n = f"{tag}-{i}", number(i)
        began = time.monotonic()
        try:
            reply = get(port, f"/?id={ident}&n={n}")
            with tally.lock:
                tally.answered.append(reply)
        except Exception as exc:
            with tally.lock:
                tally.failed[ident] = f"{type(exc).__name__}: {exc}"
        with tally.lock:
            tally.spans.append((began, time.monotonic()))
            done[0] += 1
            count = done[0]
        if every and count % every[0] == 0:
            every[1]()
        if at and count in at:
            at[count]()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(start, stop)))


# --- scenarios ------------------------------------------------------------------------------

def run_scenario(sc: Scenario, root: Optional[Path] = None, redis_url: str = REDIS_URL,
                 postgres_dsn: str = POSTGRES_DSN) -> Dict[str, Any]:
    """Run ``sc`` against the Redis server of ``redis_url`` (database 11) and the PostgreSQL
    of ``postgres_dsn``, or servers of its own for the restarts; its figures, with
    ``problems`` listing every check that failed."""
    started = time.monotonic()
    root = root or workdir()
    tag = f"postfork_soak_{os.getpid()}_{sc.name.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
    data = root / sc.name
    data.mkdir(parents=True)
    own_redis = own_pg = None
    if sc.restarts:
        progress(f"[{sc.name}] starting a Redis server and a PostgreSQL server of its own")
        own_redis, own_pg = RedisServer(root), PostgresServer()
        own_redis.start()
        own_pg.start()
        redis_url, dsn = own_redis.url, own_pg.dsn(tag)
    else:
        redis_url, dsn = with_db(redis_url, REDIS_DB), with_application_name(postgres_dsn, tag)
    env = {"SOAK_REDIS_URL": redis_url, "SOAK_POSTGRES_DSN": dsn, "SOAK_TABLE": tag,
           "SOAK_PREFIX": tag, "SOAK_DIR": str(data), "PYTHONPATH": str(SOAK)}
    figures: Dict[str, Any] = {"scenario": sc.name, "server": sc.server, "workers": sc.workers,
                               "recycle_after": sc.max_requests, "requests": sc.requests}
    problems: List[str] = []
    figures["problems"] = problems
    figures["connections_before"] = [redis_connections(redis_url, tag), postgres_connections(dsn, tag)]
    try:
        if sc.server == "celery":
            _celery(sc, tag, data, env, redis_url, figures, problems)
        else:
            _http(sc, tag, data, env, figures, problems, own_redis, own_pg)
        after = [0, 0]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            after = [redis_connections(redis_url, tag), postgres_connections(dsn, tag)]
            if after == figures["connections_before"]:
                break
            time.sleep(0.25)
        figures["connections_after"] = after
        if after != figures["connections_before"]:
            problems.append(f"own connections [redis, postgres] {figures['connections_before']} "
                            f"before, {after} after shutdown")
    finally:
        _cleanup(redis_url, dsn, tag)
        if own_redis is not None:
            own_redis.stop()
        if own_pg is not None:
            own_pg.stop()
            own_pg.remove()
        figures["server_restarts"] = [s.restarts for s in (own_redis, own_pg) if s is not None]
    if sc.restarts and figures["server_restarts"] != [1, 1]:
        problems.append(f"restarts [redis, postgres]: {figures['server_restarts']}, not [1, 1]")
    figures["seconds"] = round(time.monotonic() - started, 1)
    progress(f"[{sc.name}] done in {figures['seconds']} s, {len(problems)} problem(s)")
    return figures


def _cleanup(redis_url: str, dsn: str, tag: str) -> None:
    import psycopg
    import redis

    try:
        with redis.Redis.from_url(redis_url, socket_timeout=5) as probe:
            keys = list(probe.scan_iter(f"{tag}:*", count=1000))
            for i in range(0, len(keys), 500):
                probe.delete(*keys[i:i + 500])
        with psycopg.connect(dsn.replace(tag, "postfork_soak_probe"), connect_timeout=5) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {tag}")
    except Exception as exc:  # a cleanup that fails must not hide the scenario's own outcome
        progress(f"cleanup of {tag} failed: {exc!r}")


def _start_http(sc: Scenario, data: Path, env: Dict[str, str]) -> Tuple[Proc, int]:
    port = free_port()
    if sc.server == "gunicorn":
        argv = [str(BIN / "gunicorn"), "-c", str(SOAK / "gunicorn_soak.py"), "-b", f"127.0.0.1:{port}",
                "-w", str(sc.workers), "--no-control-socket", "--graceful-timeout", "5",
                "--pythonpath", str(SOAK)]
        if sc.max_requests:
            argv += ["--max-requests", str(sc.max_requests), "--max-requests-jitter", str(sc.jitter)]
        stop = signal.SIGTERM
    else:
        # --py-call-uwsgi-fork-hooks: the master runs psycopg_pool's threads (README, uWSGI).
        argv = [str(BIN / "uwsgi"), "--master", "--processes", str(sc.workers),
                "--http-socket", f"127.0.0.1:{port}", "--die-on-term", "--disable-logging",
                "--import", "postfork.integrations.uwsgi", "--py-call-uwsgi-fork-hooks",
                "--pythonpath", str(SOAK), "--module", "soak_app:application"]
        if sc.max_requests:
            argv += ["--max-requests", str(sc.max_requests), "--max-requests-delta", str(sc.jitter),
                     "--min-worker-lifetime", "0"]
        stop = signal.SIGINT
    server = Proc(argv, data / f"{sc.server}.log", env, stop)
    deadline = time.monotonic() + 60
    while True:
        try:
            get(port, "/master", timeout=5)
            return server, port
        except (OSError, http.client.HTTPException, RuntimeError):
            if server.proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"{sc.server} did not come up:\n{server.log[-3000:]}")
            time.sleep(0.2)


def _http(sc: Scenario, tag: str, data: Path, env: Dict[str, str], figures: Dict[str, Any],
          problems: List[str], own_redis: Optional[RedisServer], own_pg: Optional[PostgresServer]) -> None:
    server, port = _start_http(sc, data, env)
    tally = Tally()
    kills: List[int] = []
    try:
        master = get(port, "/master")
        mpid = master["pid"]
        figures["master_pid"] = mpid
        figures["master_preload"] = master
        wait(lambda: len(children(mpid)) == sc.workers, 60, f"{sc.workers} workers")
        first = set(children(mpid))
        progress(f"[{sc.name}] {sc.server} up (master {mpid}); {sc.checkpoint} requests")
        http_load(port, tag, 0, sc.checkpoint, sc.threads, tally)
        figures["fds_start"], figures["rss_kib_start"] = quiet_sample(mpid, sc.workers)
        figures["fd_kinds_start"] = fd_kinds(mpid)
        progress(f"[{sc.name}] master fds {figures['fds_start']}, RSS {figures['rss_kib_start']} KiB; "
                 f"{sc.requests - sc.checkpoint} more requests")

        def kill() -> None:
            # A worker that has served (so that each kill hits a worker at work, and each
            # replacement gets to answer before it can be picked in turn).
            with tally.lock:
                served = tally.pids()
            victims = [pid for pid in children(mpid) if pid in served and pid not in kills]
            if victims:
                victim = random.choice(victims)
                os.kill(victim, signal.SIGKILL)
                kills.append(victim)

        restart_threads: List[threading.Thread] = []

        def restart(what: Any) -> Callable[[], None]:
            """An action that restarts ``what`` in a thread of its own: the load goes on."""
            def go() -> None:
                progress(f"[{sc.name}] restarting {type(what).__name__} on port {what.port}")
                what.restart()

            def start() -> None:
                restart_threads.append(threading.Thread(target=go))
                restart_threads[-1].start()
            return start

        rest = sc.requests - sc.checkpoint
        at = {rest // 3: restart(own_redis), 2 * rest // 3: restart(own_pg)} if sc.restarts else None
        every = (sc.kill_every, kill) if sc.kill_every else None
        before_restart = tally.pids()
        http_load(port, tag, sc.checkpoint, sc.requests, sc.threads, tally, every=every, at=at)
        next_id = sc.requests
        while any(t.is_alive() for t in restart_threads):  # load for as long as a restart lasts
            http_load(port, tag, next_id, next_id + 20, sc.threads, tally)
            next_id += 20
        for t in restart_threads:
            t.join()
        if own_redis is not None and own_pg is not None:
            # The outages fell under load: requests were in flight while each server was down
            # (errors are no proof: psycopg_pool waits for a new connection, redis-py retries).
            seen = {name: sum(tally.in_flight(w) for w in own.outages)
                    for name, own in (("redis", own_redis), ("postgres", own_pg))}
            figures["requests_during_outages"] = seen
            if not all(seen.values()):
                problems.append(f"an outage fell outside the load: requests in flight {seen}")
        if sc.kill_every:
            _check_respawns(sc, port, tag, mpid, first, kills, tally, figures, problems)
        if sc.restarts:
            _check_recovery(sc, port, tag, mpid, before_restart, tally, data, figures, problems, next_id)
        figures["fds_end"], figures["rss_kib_end"] = quiet_sample(mpid, sc.workers)
        figures["fd_kinds_end"] = fd_kinds(mpid)
        if get(port, "/master")["pid"] != mpid or server.proc.poll() is not None:
            problems.append("the master changed or died")
    finally:
        code = server.stop()
        figures["exit_code"] = code
    _check_common(sc, tally, data, figures, problems, master)
    figures["kills"] = len(kills)
    if sc.server == "gunicorn":
        _check_master_log(data, master, sc.restarts, figures, problems)


def _check_respawns(sc: Scenario, port: int, tag: str, mpid: int, first: Set[int], kills: List[int],
                    tally: Tally, figures: Dict[str, Any], problems: List[str]) -> None:
    """Every worker killed was replaced, and each replacement answered (more requests until it did)."""
    def respawned() -> bool:  # a worker killed a moment ago may not even be a zombie yet
        live = set(children(mpid))
        return len(live) == sc.workers and not live & set(kills)

    wait(respawned, 30, "the master to respawn its workers")
    start = sc.requests
    deadline = time.monotonic() + 60
    while not set(children(mpid)) <= tally.pids() and time.monotonic() < deadline:
        http_load(port, tag, start, start + 40, sc.threads, tally)
        start += 40
    figures["requests"] = start
    spawned = tally.pids() - first
    figures["respawned_answered"] = len(spawned)
    if not set(children(mpid)) <= tally.pids():
        problems.append("a respawned worker never answered")
    if len(spawned) < len(kills):
        problems.append(f"{len(kills)} kills but {len(spawned)} respawned workers answered "
                        f"(first {sorted(first)}, killed {kills}, answered {sorted(tally.pids())})")


def _check_recovery(sc: Scenario, port: int, tag: str, mpid: int, before: Set[int], tally: Tally,
                    data: Path, figures: Dict[str, Any], problems: List[str], start: int) -> None:
    """After the restarts: the same workers (none died of it) each answer correctly again, by
    themselves; then the master spawns one more worker (SIGTTIN), its pre_fork hook uses the
    master's own clients, which must work, and that worker answers correctly too."""
    good: Dict[int, int] = {}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        fresh = Tally()
        http_load(port, tag, start, start + 40, sc.threads, fresh)
        start += 40
        tally.answered += fresh.answered
        tally.failed.update(fresh.failed)
        for r in fresh.answered:
            if not r["errors"]:
                good[r["pid"]] = good.get(r["pid"], 0) + 1
        if set(children(mpid)) <= {p for p, c in good.items() if c >= 2}:
            break
    live = set(children(mpid))
    figures["workers_recovered"] = len([p for p in live if good.get(p, 0) >= 2])
    figures["workers_survived"] = len(live & before)
    if not live <= {p for p, c in good.items() if c >= 2}:
        problems.append(f"workers {sorted(live - set(good))} did not answer correctly after the restarts")
    if live != before:
        problems.append(f"workers changed across the restarts: {sorted(before)} -> {sorted(live)}")
    checks_before = len(_master_records(data))
    os.kill(mpid, signal.SIGTTIN)
    wait(lambda: len(_master_records(data)) > checks_before, 30, "the master's pre_fork check")
    wait(lambda: len(children(mpid)) == sc.workers + 1, 30, "the extra worker")
    extra = set(children(mpid)) - live
    deadline = time.monotonic() + 30
    while not extra <= tally.pids() and time.monotonic() < deadline:
        http_load(port, tag, start, start + 20, sc.threads, tally)
        start += 20
    if not extra <= tally.pids():
        problems.append("the worker forked after the restarts never answered")
    os.kill(mpid, signal.SIGTTOU)
    wait(lambda: len(children(mpid)) == sc.workers, 30, "back to the usual number of workers")
    figures["requests"] = start
    record = _master_records(data)[-1]
    figures["master_after_restart"] = record
    if not record.get("ok"):
        problems.append(f"the master's clients did not work after the restarts: {record}")


def _master_records(data: Path) -> List[Dict[str, Any]]:
    path = data / "master.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _check_master_log(data: Path, master: Dict[str, Any], restarts: bool, figures: Dict[str, Any],
                      problems: List[str]) -> None:
    """The gunicorn master used its own clients before every fork: each check worked, and,
    without a server restart, over the very connections it opened at preload."""
    records = _master_records(data)
    figures["master_checks"] = len(records)
    failed = [r for r in records if not r.get("ok")]
    figures["master_checks_failed"] = len(failed)
    if any(r["pid"] != master["pid"] for r in records):
        problems.append("a master check ran outside the master")
    if restarts:
        return  # during the outage a check fails, and the master reconnects: both expected
    if failed:
        problems.append(f"{len(failed)} master checks failed: {failed[:3]}")
    moved = [r for r in records if (r.get("redis"), r.get("postgres")) != (master["redis"], master["postgres"])]
    if moved:
        problems.append(f"the master's session changed: {moved[:3]} vs {master}")


def _check_common(sc: Scenario, tally: Tally, data: Path, figures: Dict[str, Any],
                  problems: List[str], master: Dict[str, Any]) -> None:
    wrong = tally.wrong()
    figures["answered"] = len(tally.answered)
    figures["wrong"] = len(wrong)
    figures["failed"] = len(tally.failed)
    figures["client_errors"] = tally.client_errors()
    pids = tally.pids()
    figures["worker_pids"] = len(pids)
    journal = check_journal(data / "journal.log", tally)
    figures["journal"] = journal
    if wrong:
        problems.append(f"{len(wrong)} wrong answers: {wrong[:5]}")
    if master["pid"] in pids:
        problems.append("the master answered a request itself")
    bad_resets = [r for r in tally.answered if r["resets"] != 1]
    if bad_resets:
        problems.append(f"{len(bad_resets)} answers from a process whose resets ran {bad_resets[0]['resets']} times")
    if any(journal[k] for k in ("bad", "missing", "repeated", "foreign", "misattributed")):
        problems.append(f"journal: {journal}")
    if sc.max_requests and len(pids) <= sc.workers:
        problems.append(f"no recycling: only {len(pids)} worker pids answered")
    if not sc.kill_every and not sc.restarts and (tally.failed or tally.client_errors()):
        problems.append(f"{len(tally.failed)} failed requests, {tally.client_errors()} client errors "
                        f"with no outage: {list(tally.failed.values())[:3]}")
    figures["errors_by_client"] = tally.errors_by_client()
    if "fds_start" in figures and "fds_end" in figures:
        if figures["fds_end"] != figures["fds_start"]:
            before, after = figures.get("fd_kinds_start", {}), figures.get("fd_kinds_end", {})
            moved = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)
                     if after.get(k, 0) != before.get(k, 0)}
            problems.append(f"master fds {figures['fds_start']} -> {figures['fds_end']} {moved}")
        if figures["rss_kib_end"] - figures["rss_kib_start"] > RSS_TOLERANCE_KIB:
            problems.append(f"master RSS {figures['rss_kib_start']} -> {figures['rss_kib_end']} KiB")


def _celery(sc: Scenario, tag: str, data: Path, env: Dict[str, str], redis_url: str,
            figures: Dict[str, Any], problems: List[str]) -> None:
    from celery import Celery

    queue = tag
    broker = redis_url
    argv = [str(BIN / "celery"), "-A", "celery_soak", "worker", "--pool", "prefork",
            "--concurrency", str(sc.workers), "--max-tasks-per-child", str(sc.max_requests),
            "-l", "info", "-Q", queue, "-n", f"{queue}@%h", "--without-gossip", "--without-mingle",
            "--without-heartbeat"]
    server = Proc(argv, data / "celery.log", {**env, "CELERY_BROKER_URL": broker, "SOAK_QUEUE": queue},
                  signal.SIGTERM)
    caller = Celery("postfork_soak_caller", broker=broker, backend=broker)
    tally = Tally()
    main: Dict[str, Any] = {}
    try:
        wait(lambda: " ready." in server.log or server.proc.poll() is not None, 60, "the Celery worker")
        if server.proc.poll() is not None:
            raise RuntimeError(f"celery exited:\n{server.log[-3000:]}")
        progress(f"[{sc.name}] celery up (main {server.proc.pid}); {sc.checkpoint} tasks")

        def batch(start: int, stop: int) -> None:
            sent = [(f"{tag}-{i}", number(i)) for i in range(start, stop)]
            results = [(ident, caller.send_task("postfork_soak.work", args=(ident, n), queue=queue))
                       for ident, n in sent]
            for ident, result in results:
                try:
                    reply = result.get(timeout=120)
                    main.update(reply.pop("main"))
                    tally.answered.append(reply)
                except Exception as exc:
                    tally.failed[ident] = f"{type(exc).__name__}: {exc}"

        step = max(sc.threads * 5, 20)
        for start in range(0, sc.checkpoint, step):
            batch(start, min(start + step, sc.checkpoint))
        mpid = main["pid"]
        figures["master_pid"] = mpid
        if mpid != server.proc.pid:
            problems.append(f"tasks say the main process is {mpid}, not {server.proc.pid}")
        figures["fds_start"], figures["rss_kib_start"] = quiet_sample(mpid, sc.workers)
        figures["fd_kinds_start"] = fd_kinds(mpid)
        progress(f"[{sc.name}] main fds {figures['fds_start']}, RSS {figures['rss_kib_start']} KiB; "
                 f"{sc.requests - sc.checkpoint} more tasks")
        for start in range(sc.checkpoint, sc.requests, step):
            batch(start, min(start + step, sc.requests))
        figures["fds_end"], figures["rss_kib_end"] = quiet_sample(mpid, sc.workers)
        figures["fd_kinds_end"] = fd_kinds(mpid)
    finally:
        caller.close()
        figures["exit_code"] = server.stop()
    _check_common(sc, tally, data, figures, problems, main)
    figures["kills"] = 0
