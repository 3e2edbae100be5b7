"""Threads racing the fork: 8 master threads register, unregister, resolve ``local``s and use
registered redis and PostgreSQL clients while the main thread forks 500 children. Every child
must finish its resets within 2 s (a watchdog kills and counts any that does not), and no
exception may escape postfork in any of them.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
import warnings
from typing import Any, Dict, List

import pytest

import postfork

CHILDREN = int(os.environ.get("POSTFORK_RACE_FORKS", "500"))
THREADS = 8


class Plain:
    pass


def _child_outcome(pid: int, read_fd: int, limit: float) -> str:
    """'ok', 'failed: ...' or 'hung' (killed by the watchdog after ``limit`` seconds)."""
    ready, _, _ = select.select([read_fd], [], [], limit)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_fd)
        return "hung"
    data = os.read(read_fd, 4096).decode()
    os.close(read_fd)
    os.waitpid(pid, 0)
    return data or "died"


@pytest.mark.usefixtures("clean_registry")
def test_children_reset_in_time_while_threads_race_the_fork(redis_url: str, postgres_dsn: str) -> None:
    import redis
    from psycopg_pool import ConnectionPool

    cache = postfork.register(redis.Redis.from_url(redis_url, socket_timeout=5))
    single = postfork.register(redis.Redis.from_url(redis_url, single_connection_client=True,
                                                    socket_timeout=5))
    pool = postfork.register(ConnectionPool(postgres_dsn, min_size=2, max_size=4, open=True))
    pool.wait(timeout=10)
    locals_ = [postfork.local(Plain) for _ in range(4)]
    stop = threading.Event()
    errors: List[BaseException] = []

    def churn(n: int) -> None:
        try:
            while not stop.is_set():
                obj = postfork.register(Plain(), reset=lambda o: None)
                locals_[n % 4].get()
                if n % 2:
                    cache.incr(f"postfork-race:{os.getpid()}:{n}")
                    single.ping()
                else:
                    with pool.connection() as conn:
                        conn.execute("SELECT 1")
                postfork.unregister(obj)
        except BaseException as exc:  # noqa: BLE001 - counted below
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(n,), daemon=True) for n in range(THREADS)]
    for t in threads:
        t.start()
    outcomes: Dict[str, int] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: "multi-threaded fork"
            for _ in range(CHILDREN):
                read_fd, write_fd = os.pipe()
                pid = os.fork()
                if pid == 0:  # the at-fork hook ran every reset before this line
                    try:
                        report = postfork.reset_all()
                        message = "ok" if report.ok else f"failed: {report}"
                    except BaseException as exc:  # noqa: BLE001 - reported to the parent
                        message = f"raised: {type(exc).__name__}: {exc}"
                    os.write(write_fd, message.encode())
                    os._exit(0)
                os.close(write_fd)
                outcome = _child_outcome(pid, read_fd, 2.0)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                time.sleep(0.001)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        cache.delete(*cache.keys(f"postfork-race:{os.getpid()}:*") or ["-"])
        pool.close()
    assert outcomes == {"ok": CHILDREN}, outcomes
    assert errors == []
    assert single.ping() and cache.ping()  # the master's clients are intact
