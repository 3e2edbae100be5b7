"""Dramatiq, end to end: real ``dramatiq`` worker processes (2 processes x 4 threads) on a Redis
broker namespace of the test's own, running ``tests/_dramatiq_app.py`` with postfork's
middleware. Messages are sent from here; each one records the redis ``CLIENT ID`` and the
PostgreSQL ``pg_backend_pid()`` its process's connections report.

Two ways to start it: the ``dramatiq`` command, whose worker processes import the app after
the fork (each builds its own clients: nothing is inherited), and the app imported first and
``dramatiq.cli.main()`` called after (``tests/_dramatiq_preload.py``, as Flask-Dramatiq's
``flask worker`` does), where the processes inherit the clients the app built.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

from _servers import BIN, Server, records, wait_for_records
from _worker_records import (TaskRun, assert_two_processes_each_their_own, by_process,
                             shared_connections)

dramatiq = pytest.importorskip("dramatiq")
pytest.importorskip("psycopg")

TESTS = Path(__file__).resolve().parent
DB = 12  # a Redis database of its own: nothing another test flushes
READY = "Worker process is ready for action."
SUMMARY = re.compile(r"\[postfork\.integrations\.dramatiq\.Postfork\] \[INFO\] postfork: reset "
                     r"(\d+) clients? in [\d.]+ ms \(pid (\d+)\), 0 failed$", re.M)
CLOSED = re.compile(r"postfork: closed 2 clients in [\d.]+ ms \(pid (\d+)\), 0 failed")


class Dramatiq(TaskRun):
    """Start Dramatiq on a queue and namespace of its own, send messages, read the records."""

    def __init__(self, tmp_path: Path, redis_url: str, postgres_dsn: str) -> None:
        from dramatiq.brokers.redis import RedisBroker

        super().__init__(tmp_path, redis_url, postgres_dsn, DB)
        self.broker = RedisBroker(url=self.url, namespace=self.name)

    def start(self, argv: List[str], *, processes: int = 2, unmanaged: bool = False,
              env: Optional[Dict[str, str]] = None, wait: bool = True) -> Server:
        self.server = Server([*argv, "_dramatiq_app", "-p", str(processes), "-t", "4"],
                             self.tmp_path / f"{self.name}.log", cwd=TESTS,
                             env=self.app_env(unmanaged=unmanaged, env=env))
        if wait:
            self.server.wait_for(lambda: self.server is not None and self.server.log.count(READY) == processes,
                                 30, f"{processes} worker processes to be ready")
        return self.server

    def send(self, count: int, rounds: int = 20, delay: float = 0.1) -> None:
        for n in range(count):
            self.broker.enqueue(dramatiq.Message(queue_name=self.name, actor_name="whoami",
                                                 args=(n, rounds, delay), kwargs={}, options={}))

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        client = self.broker.client
        for key in client.scan_iter(f"{self.name}*"):
            client.delete(key)
        self.broker.close()


@pytest.fixture
def dq(tmp_path: Path, redis_url: str, postgres_dsn: str) -> Iterator[Dramatiq]:
    run = Dramatiq(tmp_path, redis_url, postgres_dsn)
    yield run
    run.close()


PRELOAD = [sys.executable, str(TESTS / "_dramatiq_preload.py")]
COMMAND = [str(BIN / "dramatiq")]


def test_unmanaged_processes_share_the_launchers_connections(dq: Dramatiq) -> None:
    """The hazard: 8 threads in 2 processes on the one redis connection and the one PostgreSQL
    session the launching process opened."""
    server = dq.start(PRELOAD, unmanaged=True)
    dq.send(40, rounds=200, delay=0)
    launcher, done, wrong, errors, lost = shared_connections(server, dq.records, 40)
    log = server.log
    assert re.search(r"postfork guard: redis\.Redis built at \S*_threaded_app\.py:\d+ in pid "
                     rf"{launcher['pid']} \(the master\)", log), server.describe()
    assert "postfork guard: psycopg.Connection built at" in log
    print(f"Dramatiq, unmanaged: {wrong} wrong answers of {len(done) * 200} GETs, {errors} errors, "
          f"{lost} of 40 messages unfinished after 6 s")


def test_preloaded_app_two_processes_four_threads_each_their_own(dq: Dramatiq) -> None:
    """The fix: each worker process talks over connections of its own, shared by its 4
    threads; the launcher's are never used there; the guard finds nothing."""
    server = dq.start(PRELOAD)
    dq.send(40)
    done = wait_for_records(server, dq.records, "message", 40)
    (launcher,) = [r for r in records(dq.records) if r["role"] == "import"]

    seen = assert_two_processes_each_their_own(done, launcher)
    threads = {pid: {r["thread"] for r in done if r["pid"] == pid} for pid in seen}
    assert all(len(t) == 4 for t in threads.values()), threads
    log = server.log
    assert sorted(int(pid) for n, pid in SUMMARY.findall(log) if n == "2") == sorted(seen), \
        server.describe()
    assert "ForkSafetyWarning" not in log and "postfork guard:" not in log

    assert server.stop() == 0
    assert sorted(int(pid) for pid in CLOSED.findall(server.log)) == sorted(seen), server.describe()


def test_dramatiq_command_builds_the_app_in_each_process(dq: Dramatiq) -> None:
    """``dramatiq app``: each worker process imports the app after the fork, so its clients are
    its own from the start; the middleware says so and resets nothing."""
    server = dq.start(COMMAND)
    dq.send(40)
    done = wait_for_records(server, dq.records, "message", 40)
    imports = {r["pid"]: (r["redis"], r["postgres"]) for r in records(dq.records)
               if r["role"] == "import"}
    seen = by_process(done)
    assert set(seen) == set(imports) and len(seen) == 2, (seen, imports)
    assert all(seen[pid] == {imports[pid]} for pid in seen)  # the connections built at import
    log = server.log
    assert all(f"postfork: pid {pid} was not forked from a process that imported postfork: its "
               "clients are its own, nothing to reset" in log for pid in seen), server.describe()
    assert not SUMMARY.search(log)
    assert "ForkSafetyWarning" not in log and "postfork guard:" not in log


def test_strict_mode_stops_dramatiq_naming_the_client(dq: Dramatiq) -> None:
    server = dq.start([sys.executable, "-c", "import _broken, runpy; runpy.run_path("
                       f"{str(TESTS / '_dramatiq_preload.py')!r}, run_name='__main__')"],
                      processes=1, env={"POSTFORK_STRICT": "1"}, wait=False)
    server.wait_for(lambda: server.proc.poll() is not None, 30, "Dramatiq to stop")
    log = server.log
    assert server.proc.returncode == 1, server.describe()
    assert "postfork: reset of broken-client failed" in log
    assert "exits before consuming a message" in log
    # (Dramatiq's main process exits with the worker's code, 1; its own "exited unexpectedly"
    # line may be cut off: its log thread is stopped as it exits)
    assert READY not in log
