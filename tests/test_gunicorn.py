"""gunicorn --preload, end to end: the example app under real gunicorn, real clients, real servers.

Each test starts gunicorn as a subprocess on a free port and checks from the servers' side
(redis CLIENT ID, pg_backend_pid(), MockupDB's peer port, SQLite's per-connection TEMP table)
that every worker talks over a connection of its own, never the master's.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List


from _servers import BIN, EXAMPLES, Server, free_port, identities, wrong_answers

TESTS = Path(__file__).resolve().parent
SUMMARY = re.compile(r"\[INFO\] postfork: reset (\d+) clients? in [\d.]+ ms \(pid (\d+)\), (\d+) failed")


def gunicorn(servers: List[Server], tmp_path: Path, *args: str, env: Dict[str, str],
             config: str = "gunicorn.conf.py") -> Server:
    port = free_port()
    argv = [str(BIN / "gunicorn"), "-c", config, "-b", f"127.0.0.1:{port}", "--no-control-socket",
            "--graceful-timeout", "5", *args]
    env = {"POSTFORK_EXAMPLE_DIR": str(tmp_path), **env}
    server = Server(argv, tmp_path / f"gunicorn-{port}.log", env=env, port=port)
    servers.append(server)
    return server


CLOSED = re.compile(r"\[INFO\] postfork: closed \d+ clients? in [\d.]+ ms \(pid (\d+)\), 0 failed")


def summaries(log: str) -> Counter:
    """pid -> how many reset summary lines gunicorn's log holds for it."""
    return Counter(int(m.group(2)) for m in SUMMARY.finditer(log))


def test_preload_three_workers_each_own_connections(servers, tmp_path, redis_url, postgres_dsn,
                                                    mockupdb) -> None:
    # MongoDB's whatsmyuri names the caller's address as the server sees it.
    mockupdb.autoresponds("whatsmyuri", lambda r: r.ok(you=f"127.0.0.1:{r.client_port}"))
    server = gunicorn(servers, tmp_path, "-w", "3", env={
        "REDIS_URL": redis_url, "POSTGRES_DSN": postgres_dsn, "MONGO_URL": mockupdb.uri})
    server.wait_http()
    master = server.get("/master")

    responses = server.hammer(600)

    workers = {r["pid"] for r in responses}
    assert len(workers) == 3 and master["pid"] not in workers, server.describe()
    assert wrong_answers(responses) == []
    for client in ("redis", "postgres", "mongo", "sqlite"):
        seen = identities(responses, client)
        every = [i for ids in seen.values() for i in ids]
        assert len(every) == len(set(every)), f"{client}: workers share a connection: {seen}"
        assert master[client] not in every, f"{client}: a worker uses the master's {master[client]}"
    assert all(r["resets"] == 1 for r in responses)
    counts = summaries(server.log)
    assert all(counts[pid] == 1 for pid in workers), server.describe()
    assert master["pid"] not in counts  # the master itself is never reset
    assert "postfork guard:" not in server.log  # every client is managed: no finding

    assert server.stop() == 0
    # worker_exit closed each worker's own clients, and never the master's
    closed = Counter(int(pid) for pid in CLOSED.findall(server.log))
    assert {pid: closed[pid] for pid in workers} == {pid: 1 for pid in workers}, server.describe()
    assert master["pid"] not in closed


def test_killed_worker_is_replaced_by_a_reset_one(servers, tmp_path, redis_url) -> None:
    # The config-module form: -c python:postfork.integrations.gunicorn, the app on the command line.
    server = gunicorn(servers, tmp_path, "--preload", "-w", "2", "--pythonpath", str(EXAMPLES),
                      "app:application", env={"REDIS_URL": redis_url},
                      config="python:postfork.integrations.gunicorn")
    server.wait_http()
    before = server.hammer(60)
    old_ids = {i for ids in identities(before, "redis").values() for i in ids}
    old_pids = {r["pid"] for r in before}
    victim = sorted(old_pids)[0]

    os.kill(victim, signal.SIGKILL)
    new: List[dict] = []
    server.wait_for(lambda: bool(new.extend(r for r in server.hammer(8, 2) if r["pid"] not in old_pids)
                                 or new), 20, "a respawned worker to serve")

    respawned = new[0]
    assert respawned["resets"] == 1
    assert respawned["clients"]["redis"]["id"] not in old_ids
    assert respawned["clients"]["redis"]["id"] != server.get("/master")["redis"]
    assert wrong_answers(new) == []
    assert summaries(server.log)[respawned["pid"]] == 1, server.describe()


def _failing_config(tmp_path: Path) -> str:
    """A gunicorn.conf.py that keeps a post_fork of its own with @with_reset, on an app that
    registers a client whose reset raises."""
    conf = tmp_path / "failing.conf.py"
    conf.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "import _broken  # registered in the master, before the app\n"
        "from postfork.integrations.gunicorn import with_reset, worker_exit\n"
        f"pythonpath = {str(EXAMPLES)!r}\n"
        "wsgi_app = 'app:application'\n"
        "preload_app = True\n"
        "workers = 1\n"
        "@with_reset\n"
        "def post_fork(server, worker):\n"
        "    server.log.info('user post_fork ran in %s', worker.pid)\n"
    )
    return str(conf)


def test_failing_reset_is_logged_and_the_worker_serves(servers, tmp_path) -> None:
    server = gunicorn(servers, tmp_path, env={}, config=_failing_config(tmp_path))
    server.wait_http()
    reply = server.get("/?n=7")
    assert reply["clients"]["sqlite"]["answer"] == 7
    log = server.log
    assert re.search(rf"ERROR\] postfork: reset of broken-client failed in pid {reply['pid']}: "
                     r"RuntimeError: this reset always fails", log), server.describe()
    assert f"(pid {reply['pid']}), 1 failed" in log
    # the user's own post_fork, kept with @with_reset, ran after the resets
    assert log.index(f"(pid {reply['pid']}), 1 failed") < log.index(f"user post_fork ran in {reply['pid']}")


def test_strict_mode_stops_gunicorn_naming_the_client(servers, tmp_path) -> None:
    server = gunicorn(servers, tmp_path, env={"POSTFORK_STRICT": "1"}, config=_failing_config(tmp_path))
    deadline = time.monotonic() + 30
    while server.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    log = server.log
    assert server.proc.returncode == 3, server.describe()  # gunicorn's WORKER_BOOT_ERROR
    assert "Worker failed to boot" in log
    assert "ResetError" in log and "broken-client" in log
    assert "user post_fork ran" not in log  # the worker stopped before serving anything


def test_the_guard_names_an_unmanaged_client(servers, tmp_path, redis_url) -> None:
    # The integration switched the guard on (warn) before the app was preloaded, so a client
    # the app leaves unmanaged is named, with its creation site, in each worker's log.
    (tmp_path / "leaky.py").write_text(
        "import os, redis\n"
        "client = redis.Redis.from_url(os.environ['REDIS_URL'])\n"
        "client.ping()\n"
    )
    conf = tmp_path / "leaky.conf.py"
    conf.write_text(
        "import sys\n"
        "from postfork.integrations.gunicorn import post_fork, worker_exit\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import leaky  # built after the integration switched the guard on\n"
        f"pythonpath = {str(EXAMPLES)!r}\n"
        "wsgi_app = 'app:application'\n"
        "preload_app = True\n"
        "workers = 1\n"
    )
    server = gunicorn(servers, tmp_path, env={"REDIS_URL": redis_url}, config=str(conf))
    server.wait_http()
    worker = server.get("/?n=1")["pid"]
    server.wait_for(lambda: "postfork guard:" in server.log, 10, "the guard's finding")
    log = server.log
    assert re.search(r"postfork guard: .*Redis", log) and f"{tmp_path / 'leaky.py'}:2" in log, \
        server.describe()
    assert f"(pid {worker}), 0 failed, 1 guard finding" in log
    assert re.search(rf"\[{worker}\] \[WARNING\] postfork guard: redis.Redis built at .*leaky.py:2", log)


def test_without_preload_the_log_says_nothing_was_inherited(servers, tmp_path) -> None:
    server = gunicorn(servers, tmp_path, "-w", "2", "--pythonpath", str(EXAMPLES), "app:application",
                      env={}, config="python:postfork.integrations.gunicorn")
    server.wait_http()
    pids = {r["pid"] for r in server.hammer(20)}
    log = server.log
    for pid in pids:
        assert (f"postfork: pid {pid}: gunicorn runs without --preload, so this worker builds its "
                f"own app after the fork: nothing was inherited, nothing needed resetting") in log
    assert not SUMMARY.search(log), server.describe()  # no "reset 0 clients" that reads like a failure
