"""Celery prefork, end to end: a real worker (``celery worker --pool prefork``) on a Redis
broker, the example app with ``import postfork.integrations.celery``, tasks sent from here.

Each task reports its pool process's pid and the ``CLIENT ID`` of that process's redis
connection as the Redis server sees it; the main process recorded its own at import.
"""

from __future__ import annotations

import re
import signal
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional
from urllib.parse import urlparse, urlunparse

import pytest

from _servers import BIN, EXAMPLES, Server, fresh_interpreter

TESTS = Path(__file__).resolve().parent
SUMMARY = re.compile(r"INFO/ForkPoolWorker-\d+\] postfork: reset \d+ clients? in [\d.]+ ms "
                     r"\(pid (\d+)\), 0 failed")
BROKER_DB = 13  # a database of its own: nothing another test flushes


def _with_db(url: str, db: int) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{db}"))


@pytest.fixture
def celery_worker(tmp_path: Path, redis_url: str) -> Iterator[Any]:
    celery = pytest.importorskip("celery")
    broker = _with_db(redis_url, BROKER_DB)
    queue = f"postfork-test-{uuid.uuid4().hex[:12]}"
    started: List[Server] = []
    caller = celery.Celery("postfork_test_caller", broker=broker, backend=broker)

    def start(*args: str, extra_env: Optional[Dict[str, str]] = None, wait: bool = True) -> Server:
        argv = [str(BIN / "celery"), "-A", "_celery_gc_app", "worker", "--pool", "prefork",
                "--concurrency", "2", "-l", "info", "-Q", queue, "-n", f"{queue}@%h",
                "--without-gossip", "--without-mingle", "--without-heartbeat", *args]
        env = {"REDIS_URL": redis_url, "CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": broker,
               "POSTFORK_EXAMPLE_QUEUE": queue, "PYTHONPATH": f"{EXAMPLES}:{TESTS}", **(extra_env or {})}
        server = Server(argv, tmp_path / f"celery-{len(started)}.log", env=env,
                        stop_signal=signal.SIGTERM)  # warm shutdown
        started.append(server)
        if wait:
            server.wait_for(lambda: " ready." in server.log, 30, "the worker to be ready")
        return server

    def call(delay: float = 0.0) -> Any:
        return caller.send_task("postfork_example.whoami", args=(delay,), queue=queue)

    yield start, call
    caller.close()
    for server in started:
        assert server.stop() is not None


def _summaries(log: str) -> Counter:
    return Counter(int(pid) for pid in SUMMARY.findall(log))


def test_each_pool_process_has_its_own_connection(celery_worker) -> None:
    start, call = celery_worker
    worker = start()
    pending = [call(0.4) for _ in range(6)]  # concurrent: both pool processes get some
    results: List[Dict[str, Any]] = [r.get(timeout=30) for r in pending]

    main = results[0]["main"]
    by_pid: Dict[int, set] = {}
    for r in results:
        by_pid.setdefault(r["pid"], set()).add(r["client_id"])
    assert len(by_pid) == 2 and main["pid"] not in by_pid, (results, worker.describe())
    ids = [i for s in by_pid.values() for i in s]
    assert len(ids) == 2 and len(set(ids)) == 2, by_pid  # one connection per process, not shared
    assert main["client_id"] not in ids
    assert all(r["resets"] == 1 for r in results)
    # the receiver ran in each pool process (after the gc.collect() in the main process)
    counts = _summaries(worker.log)
    assert {pid: counts[pid] for pid in by_pid} == {pid: 1 for pid in by_pid}, worker.describe()
    assert "postfork guard:" not in worker.log  # the one client is managed: no finding


def test_a_recycled_pool_process_resets_again(celery_worker) -> None:
    start, call = celery_worker
    worker = start("--max-tasks-per-child", "1")
    results = [call().get(timeout=30) for _ in range(3)]  # one after another: each on a new child

    pids = [r["pid"] for r in results]
    ids = [r["client_id"] for r in results]
    assert len(set(pids)) == 3, (results, worker.describe())
    assert len(set(ids)) == 3 and results[0]["main"]["client_id"] not in ids
    assert all(r["resets"] == 1 for r in results)
    counts = _summaries(worker.log)
    assert all(counts[pid] == 1 for pid in pids), worker.describe()
    # each process closed its own clients on the way out (worker_process_shutdown), the last
    # one at the warm shutdown
    assert worker.stop() is not None
    closed = re.findall(r"postfork: closed \d+ clients? in [\d.]+ ms \(pid (\d+)\), 0 failed",
                        worker.log)
    closed_by = Counter(int(pid) for pid in closed)
    assert all(closed_by[pid] == 1 for pid in pids), worker.describe()  # (idle ones close too)
    assert set(closed_by.values()) == {1} and results[0]["main"]["pid"] not in closed_by


def test_strict_mode_stops_the_worker_naming_the_client(celery_worker) -> None:
    start, _ = celery_worker
    worker = start("--include", "_broken", extra_env={"POSTFORK_STRICT": "1"}, wait=False)
    assert worker.proc.wait(30) == 1, worker.describe()  # Celery's cold shutdown: EX_FAILURE
    log = worker.log
    assert re.search(r"ERROR/ForkPoolWorker-\d+\] postfork: reset of broken-client failed", log)
    assert re.search(r"postfork: strict mode: pool process \d+ exits without running a task and "
                     r"stops the worker \(SIGQUIT to \d+\)", log), worker.describe()
    # Stopped at once, not after Celery replaced failing pool processes over and over (seen:
    # 408 in 30 s, when the first ones failed after Celery's one start-up check of its pool).
    assert len(set(re.findall(r"strict mode: pool process (\d+) exits", log))) <= 4, log


def test_strict_mode_stops_the_worker_when_a_later_pool_process_fails(
        celery_worker, tmp_path: Path) -> None:
    # The first pool processes reset well, so Celery's one start-up check of its pool passes;
    # then resets fail, and --max-tasks-per-child 1 brings a replacement. Without the SIGQUIT,
    # Celery replaces each failing process with another that fails, and never stops.
    start, call = celery_worker
    broken = tmp_path / "broken"
    worker = start("--include", "_broken", "--max-tasks-per-child", "1",
                   extra_env={"POSTFORK_STRICT": "1", "POSTFORK_TEST_BREAK_WHEN": str(broken)})
    assert call().get(timeout=30)["resets"] == 1
    broken.touch()
    call()
    assert worker.proc.wait(30) == 1, worker.describe()
    assert "stops the worker (SIGQUIT to" in worker.log, worker.describe()


def test_import_without_a_worker_only_connects_the_receivers() -> None:
    pytest.importorskip("celery")
    script = (
        "import gc, json\n"
        "import postfork\n"
        "from postfork import _guard\n"
        "calls = []\n"
        "postfork.after_fork(lambda: calls.append(1))\n"
        "import postfork.integrations.celery as m\n"
        "from celery import signals\n"
        "gc.collect()\n"
        "live = lambda s: [getattr(r, '__name__', r) for r in s._live_receivers(None)]\n"
        "import weakref\n"
        "weak = [k for s in (signals.worker_process_init, signals.worker_process_shutdown)\n"
        "        for k, r in s.receivers if isinstance(r, weakref.ReferenceType)]\n"
        "print(json.dumps({'init': live(signals.worker_process_init),\n"
        "                  'shutdown': live(signals.worker_process_shutdown),\n"
        "                  'weak': weak, 'resets': calls, 'guard': _guard.mode()}))\n"
    )
    result = fresh_interpreter(script)
    assert result == {"init": ["on_worker_process_init"], "shutdown": ["on_worker_process_shutdown"],
                      "weak": [],  # held strongly (weak=False): a gc cannot drop them
                      "resets": [], "guard": "warn"}  # the guard's warn mode is the one effect


def test_a_weakly_connected_receiver_is_named_once(celery_worker) -> None:
    start, _ = celery_worker
    server = start(extra_env={"POSTFORK_TEST_WEAK_RECEIVER": "1"})
    server.wait_for(lambda: "connected weakly" in server.log, 20, "the warning")
    lines = [line for line in server.log.splitlines() if "connected weakly" in line]
    assert len(lines) == 1, server.describe()  # once, in the main process, not per pool process
    assert "worker_process_init receiver _celery_gc_app.reconnect_cache" in lines[0]
    assert "weak=False" in lines[0]
