"""Huey, end to end: a real ``huey_consumer -k process`` (2 worker processes) on a RedisHuey of
the test's own, running ``tests/_huey_app.py`` with ``postfork.integrations.huey.install``.
The consumer imports the app in its main process and forks the workers: they inherit the
clients it built. Tasks are enqueued from here; each records the redis ``CLIENT ID`` and the
PostgreSQL ``pg_backend_pid()`` its process's connections report.
"""

from __future__ import annotations

import re
import signal
import sys
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

from _servers import BIN, Server, records, wait_for_records
from _worker_records import (TaskRun, assert_two_processes_each_their_own, by_process,
                             shared_connections)

huey = pytest.importorskip("huey")
pytest.importorskip("psycopg")

TESTS = Path(__file__).resolve().parent
DB = 12  # a Redis database of its own: nothing another test flushes
SUMMARY = re.compile(r"INFO:huey\.consumer:(\d+):postfork: reset (\d+) clients? in [\d.]+ ms "
                     r"\(pid (\d+)\), 0 failed$", re.M)
CLOSED = re.compile(r"postfork: closed 2 clients in [\d.]+ ms \(pid (\d+)\), 0 failed")
STARTED = re.compile(r"Huey consumer started with")


class Consumer(TaskRun):
    def __init__(self, tmp_path: Path, redis_url: str, postgres_dsn: str) -> None:
        from huey import RedisHuey

        super().__init__(tmp_path, redis_url, postgres_dsn, DB)
        self.huey = RedisHuey(self.name, url=self.url)  # to enqueue; the app is not imported here

    def start(self, *args: str, unmanaged: bool = False, env: Optional[Dict[str, str]] = None,
              argv: Optional[List[str]] = None) -> Server:
        self.server = Server([*(argv or [str(BIN / "huey_consumer")]), "_huey_app.huey", *args],
                             self.tmp_path / f"{self.name}.log", cwd=TESTS,
                             env=self.app_env(unmanaged=unmanaged, env=env),
                             stop_signal=signal.SIGINT)  # Huey's graceful shutdown
        return self.server

    def wait_started(self, count: int) -> None:
        """Until ``count`` worker processes logged their startup line."""
        assert self.server is not None
        server = self.server
        server.wait_for(lambda: len(re.findall(r"postfork: (reset|pid \d+ was not forked)",
                                               server.log)) >= count, 30, "the workers to start")

    def send(self, count: int, rounds: int = 20, delay: float = 0.1) -> None:
        from huey.registry import Message

        for n in range(count):
            message = Message(id=str(uuid.uuid4()), name="_huey_app.whoami",
                              args=(n, rounds, delay), kwargs={}, retries=0, retry_delay=0)
            self.huey.storage.enqueue(self.huey.serializer.serialize(message))

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.huey.storage.flush_all()  # this RedisHuey's own keys only
        self.huey.storage.conn.close()


@pytest.fixture
def consumer(tmp_path: Path, redis_url: str, postgres_dsn: str) -> Iterator[Consumer]:
    run = Consumer(tmp_path, redis_url, postgres_dsn)
    yield run
    run.close()


def test_unmanaged_workers_share_the_consumers_connections(consumer: Consumer) -> None:
    """The hazard: both worker processes on the one redis connection and the one PostgreSQL
    session the consumer's main process opened at import."""
    server = consumer.start("-k", "process", "-w", "2", unmanaged=True)
    consumer.wait_started(2)
    consumer.send(20, rounds=200, delay=0)
    main, done, wrong, errors, lost = shared_connections(server, consumer.records, 20)
    assert re.search(r"postfork guard: redis\.Redis built at \S*_threaded_app\.py:\d+ in pid "
                     rf"{main['pid']} \(the master\)", server.log), server.describe()
    print(f"Huey, unmanaged: {wrong} wrong answers of {len(done) * 200} GETs, {errors} errors, "
          f"{lost} of 20 tasks unfinished after 6 s")


def test_each_worker_process_has_its_own_connections(consumer: Consumer) -> None:
    server = consumer.start("-k", "process", "-w", "2")
    consumer.wait_started(2)
    consumer.send(20)
    done = wait_for_records(server, consumer.records, "message", 20)
    (main,) = [r for r in records(consumer.records) if r["role"] == "import"]

    seen = assert_two_processes_each_their_own(done, main)
    log = server.log
    summaries = {int(pid): int(n) for logged_by, n, pid in SUMMARY.findall(log) if logged_by == pid}
    assert summaries == {pid: 2 for pid in seen}, server.describe()
    assert "ForkSafetyWarning" not in log and "postfork guard:" not in log

    assert server.stop() == 0
    assert sorted(int(pid) for pid in CLOSED.findall(server.log)) == sorted(seen), server.describe()


def test_thread_workers_reset_nothing(consumer: Consumer) -> None:
    """``-k thread``: the workers are threads of the process that built the clients; the
    startup hook must not reset (it would drop that process's own connections)."""
    server = consumer.start("-k", "thread", "-w", "2")
    consumer.wait_started(2)
    consumer.send(6)
    done = wait_for_records(server, consumer.records, "message", 6)
    (main,) = [r for r in records(consumer.records) if r["role"] == "import"]
    assert by_process(done) == {main["pid"]: {(main["redis"], main["postgres"])}}
    assert all(r["wrong"] == 0 and r["errors"] == [] for r in done)
    log = server.log
    assert log.count(f"postfork: pid {main['pid']} was not forked") == 2 and not SUMMARY.search(log)
    assert server.stop() == 0
    assert not CLOSED.search(server.log)  # nor close them


def test_strict_mode_keeps_the_worker_from_taking_tasks(consumer: Consumer) -> None:
    server = consumer.start(
        "-k", "process", "-w", "1",
        argv=[sys.executable, "-c", "import sys, _broken; from huey.bin.huey_consumer import "
              "consumer_main; sys.argv[0] = 'huey_consumer'; consumer_main()"],
        env={"POSTFORK_STRICT": "1"})
    server.wait_for(lambda: "exits without taking a task" in server.log, 30, "the worker to exit")
    log = server.log
    assert "postfork: reset of broken-client failed" in log, server.describe()
    assert re.search(r"CRITICAL:huey\.consumer:\d+:postfork: strict mode: worker process \d+ "
                     r"exits without taking a task", log)
