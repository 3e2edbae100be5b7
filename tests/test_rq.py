"""RQ, end to end: ``rq worker`` and ``rq worker-pool`` in burst mode on a Redis database of
the test's own, running the app of ``tests/_rq_app.py`` whose clients are built in the worker
process and used there between jobs, and in every work horse.

Every identity is the server's: the redis ``CLIENT ID`` and PostgreSQL ``pg_backend_pid()`` a
connection reports, and while each horse runs, whether ``CLIENT LIST`` / ``pg_stat_activity``
still list the worker's own connections.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from _servers import BIN, Server, with_db

pytest.importorskip("rq")
pytest.importorskip("psycopg")

TESTS = Path(__file__).resolve().parent
APP = TESTS / "_rq_app.py"
RQ_DB = 12  # a database of its own: nothing another test flushes
SUMMARY = re.compile(r"postfork: reset (\d+) clients? in [\d.]+ ms \(pid (\d+)\), 0 failed$", re.M)


def _line(text: str) -> int:
    """The line of ``_rq_app.py`` that holds ``text`` (where the guard must say a client was built)."""
    return next(i for i, line in enumerate(APP.read_text().splitlines(), 1) if text in line)


class Run:
    """One RQ command run to completion on a queue of its own, and what it left behind."""

    def __init__(self, tmp_path: Path, redis_url: str, postgres_dsn: str) -> None:
        import redis
        import rq

        self.tmp_path = tmp_path
        self.url = with_db(redis_url, RQ_DB)
        self.postgres_dsn = postgres_dsn
        self.queue_name = f"postfork-test-{uuid.uuid4().hex[:12]}"
        self.conn = redis.Redis.from_url(self.url)
        self.queue = rq.Queue(self.queue_name, connection=self.conn)
        self.records = tmp_path / f"{self.queue_name}.jsonl"
        self.server: Optional[Server] = None

    def enqueue(self, count: int, rounds: int = 20, fail: Tuple[int, ...] = (),
                timeout: int = 20) -> List[Any]:
        return [self.queue.enqueue("_rq_app.whoami", n, rounds, n in fail, job_timeout=timeout)
                for n in range(count)]

    def run(self, *argv: str, unmanaged: bool = False, env: Optional[Dict[str, str]] = None) -> Server:
        env = {"APP_REDIS_URL": self.url, "POSTGRES_DSN": self.postgres_dsn,
               "POSTFORK_TEST_PREFIX": f"postfork-test:{self.queue_name}",
               "POSTFORK_TEST_RECORDS": str(self.records), "PYTHONPATH": str(TESTS),
               "POSTFORK_TEST_UNMANAGED": "1" if unmanaged else "0", **(env or {})}
        self.server = Server([str(BIN / "rq"), *argv, "-u", self.url, "--burst", self.queue_name],
                             self.tmp_path / f"{argv[0]}.log", env=env, cwd=TESTS)
        try:
            self.server.proc.wait(60)  # burst: it exits once the queue is empty
        except Exception:
            raise AssertionError("RQ did not finish within 60 s\n" + self.server.describe())
        assert self.server.stop() == 0, self.server.describe()
        return self.server

    def worker_records(self) -> List[Dict[str, Any]]:
        return [json.loads(line) for line in self.records.read_text().splitlines()]

    def close(self) -> None:
        for key in self.conn.scan_iter(f"postfork-test:{self.queue_name}:*"):
            self.conn.delete(key)
        self.queue.empty()
        self.conn.close()


@pytest.fixture
def rq_run(tmp_path: Path, redis_url: str, postgres_dsn: str) -> Iterator[Run]:
    run = Run(tmp_path, redis_url, postgres_dsn)
    yield run
    if run.server is not None:
        run.server.stop()
    run.close()


def _results(jobs: List[Any]) -> Tuple[List[Dict[str, Any]], List[Any]]:
    """(return values of the finished jobs, the failed jobs)."""
    done, failed = [], []
    for job in jobs:
        job.refresh()
        (done if job.is_finished else failed).append(job.return_value() if job.is_finished else job)
    return done, failed


def _exc(job: Any) -> str:
    result = job.latest_result()
    return result.exc_string if result is not None else ""


def test_unmanaged_horses_share_the_workers_connections(rq_run: Run) -> None:
    """The hazard: every horse talks over the worker's own redis connection and PostgreSQL
    session, and a job that fails mid-transaction breaks the worker's next query."""
    jobs = rq_run.enqueue(6, fail=(2,))
    server = rq_run.run("worker", "-w", "_rq_app.AppWorker", unmanaged=True)

    done, failed = _results(jobs)
    worker = [r for r in rq_run.worker_records() if r["role"] != "import"]
    assert len(done) == 5 and len(failed) == 1 and "DivisionByZero" in _exc(failed[0]), server.describe()
    main = worker[0]
    assert {r["redis"] for r in done} == {main["redis"]}  # one CLIENT ID: the worker's
    assert {r["postgres"] for r in done} == {main["postgres"]}  # one backend: the worker's
    # the horse of job 2 left the worker's session in a failed transaction
    errors = [r.get("postgres_error", "") for r in worker]
    assert sum("InFailedSqlTransaction" in e for e in errors) == 1, worker
    assert worker[5]["role"] == "after job" and "InFailedSqlTransaction" in errors[5]
    # the guard (on through the integration) named both clients where the app built them
    log = server.log
    redis_site = f"_rq_app.py:{_line('cache = redis.Redis.from_url(')}"  # relative to RQ's cwd
    pg_site = f"_rq_app.py:{_line('return psycopg.connect(')}"
    assert f"postfork guard: redis.Redis built at {redis_site}" in log, server.describe()
    assert f"postfork guard: psycopg.Connection built at {pg_site}" in log
    assert "ForkSafetyWarning" in log
    assert len(re.findall(r"postfork: reset 0 clients in .* 0 failed, 2 guard findings", log)) == 6


def test_fifty_horses_each_on_their_own_connections(rq_run: Run) -> None:
    """The fix: each of 50 horses connects anew, the worker's connections (re-used between
    jobs) stay the same ones and keep answering, a failing job leaves the worker unharmed, and
    the guard finds nothing."""
    jobs = rq_run.enqueue(50, fail=(17,))
    server = rq_run.run("worker", "-w", "_rq_app.AppWorker")

    done, failed = _results(jobs)
    assert len(done) == 49 and len(failed) == 1 and "DivisionByZero" in _exc(failed[0]), server.describe()
    records = rq_run.worker_records()
    assert [r["role"] for r in records] == ["import"] + ["before job", "after job"] * 50
    main = records[0]
    # the worker process: the same two connections from import to the last job, each answering
    assert all(r["pid"] == main["pid"] and r["redis"] == main["redis"] and r["redis_ok"]
               and r.get("postgres") == main["postgres"] for r in records), records
    # every horse: a connection of its own to each server, never the worker's
    assert len({r["pid"] for r in done}) == 49 and {r["worker"] for r in done} == {main["pid"]}
    redis_ids = [r["redis"] for r in done]
    backends = [r["postgres"] for r in done]
    assert len(set(redis_ids)) == 49 and main["redis"] not in redis_ids
    assert len(set(backends)) == 49 and main["postgres"] not in backends
    assert all(r["wrong"] == 0 and r["errors"] == [] for r in done), done
    # while each horse ran, both servers still listed the worker's connections
    assert all(r["worker_redis_listed"] and r["worker_postgres_listed"] for r in done)
    # RQ's own connection (named after the worker) is one and the same for all 50 jobs
    rq_ids = {tuple(r["rq_connection"]) for r in done}
    assert len(rq_ids) == 1 and len(next(iter(rq_ids))) == 1, rq_ids
    assert next(iter(rq_ids))[0] not in redis_ids
    # each horse wrote the summary to RQ's log: 2 clients reset, once; no guard finding
    log = server.log
    summaries = Counter(int(pid) for n, pid in SUMMARY.findall(log) if n == "2")
    assert len(summaries) == 50 and set(summaries.values()) == {1}, server.describe()
    assert {r["pid"] for r in done} <= set(summaries)
    assert "ForkSafetyWarning" not in log and "postfork guard:" not in log


def test_worker_pool_processes_and_horses_each_have_their_own(rq_run: Run) -> None:
    """``rq worker-pool`` with the documented line: the app is built in the pool's main process
    (as ``--config``), two pool processes are forked from it, each forks a horse per job."""
    jobs = rq_run.enqueue(50)
    server = rq_run.run("worker-pool", "-n", "2", "-w", "_rq_worker.Worker",
                        "-c", "_rq_app")

    done, failed = _results(jobs)
    assert failed == [] and len(done) == 50, server.describe()
    (main,) = rq_run.worker_records()  # built and used in the pool's main process
    workers = Counter(r["worker"] for r in done)
    assert len(workers) == 2 and main["pid"] not in workers, workers
    redis_ids = [r["redis"] for r in done]
    backends = [r["postgres"] for r in done]
    assert len(set(redis_ids)) == 50 and main["redis"] not in redis_ids
    assert len(set(backends)) == 50 and main["postgres"] not in backends
    assert all(r["wrong"] == 0 and r["errors"] == [] for r in done), done
    log = server.log
    summaries = Counter(int(pid) for _, pid in SUMMARY.findall(log))
    assert set(workers) | {r["pid"] for r in done} <= set(summaries), server.describe()
    assert set(summaries.values()) == {1} and main["pid"] not in summaries
    assert "ForkSafetyWarning" not in log and "postfork guard:" not in log


def test_worker_pool_unmanaged_horses_cross_replies(rq_run: Run) -> None:
    """The hazard under ``rq worker-pool`` (django-rq#650): the horses of both pool processes
    talk at once over the main process's one redis connection and PostgreSQL session."""
    jobs = rq_run.enqueue(30, rounds=200, timeout=10)
    server = rq_run.run("worker-pool", "-n", "2", "-w", "_rq_worker.Worker",
                        "-c", "_rq_app", unmanaged=True)

    done, failed = _results(jobs)
    (main,) = rq_run.worker_records()
    wrong = sum(r["wrong"] for r in done)
    errors = sum(len(r["errors"]) for r in done) + len(failed)
    assert wrong + errors > 0, server.describe()
    assert main["postgres"] in {r.get("postgres") for r in done}  # the main process's session
    assert "ForkSafetyWarning" in server.log
    print(f"RQ worker-pool, unmanaged: {wrong} wrong answers of {30 * 200} GETs, "
          f"{errors} errors ({len(failed)} jobs failed)")


def test_strict_mode_fails_the_job_before_it_runs(rq_run: Run) -> None:
    jobs = rq_run.enqueue(1)
    server = rq_run.run("worker", "-w", "_rq_worker.Worker", "-c", "_broken",
                        env={"POSTFORK_STRICT": "1"})
    _, failed = _results(jobs)
    log = server.log
    assert len(failed) == 1 and "Work-horse terminated unexpectedly" in _exc(failed[0]), log
    assert "postfork: reset of broken-client failed" in log
    assert "exits without running a job" in log
    assert not rq_run.records.exists()  # the job never ran
