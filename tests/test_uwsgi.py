"""uWSGI (pyuwsgi), end to end: the example app, --import postfork.integrations.uwsgi.

uWSGI skips ``os.register_at_fork`` hooks in its workers unless ``--py-call-osafterfork``, so
without the integration a worker keeps the master's connections (shown first, the hazard);
with it each worker resets exactly once whichever way uWSGI was started.
"""

from __future__ import annotations

import re
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Sequence

import pytest

from _servers import BIN, Server, free_port, fresh_interpreter, identities, wrong_answers

TESTS = Path(__file__).resolve().parent
SUMMARY = re.compile(r"^postfork: reset (\d+) clients? in [\d.]+ ms \(pid (\d+)\), (\d+) failed", re.M)
INTEGRATION = ["--import", "postfork.integrations.uwsgi"]


def uwsgi(servers: List[Server], tmp_path: Path, *args: str, env: Dict[str, str],
          wait: bool = True) -> Server:
    port = free_port()
    argv = [str(BIN / "uwsgi"), "--http-socket", f"127.0.0.1:{port}", "--processes", "2",
            "--die-on-term", "--pythonpath", str(TESTS), *args, "--module", "app:application"]
    server = Server(argv, tmp_path / f"uwsgi-{port}.log", port=port, stop_signal=signal.SIGINT,
                    env={"POSTFORK_EXAMPLE_DIR": str(tmp_path), **env})
    servers.append(server)
    if not wait:
        return server
    # Under --lazy-apps each worker imports the app itself: wait until both have.
    apps = 2 if "--lazy-apps" in args else 1
    server.wait_for(lambda: server.log.count("WSGI app 0 (mountpoint='') ready") >= apps, 30,
                    f"{apps} app(s) to load")
    server.wait_http()
    return server


def serve_both_workers(server: Server, count: int = 200) -> List[dict]:
    """At least ``count`` requests, and more until both workers have answered: uWSGI hands a
    request to whichever worker accepts first, and on a loaded machine one worker can take
    every request of a short burst (seen: 40 of 40)."""
    responses = server.hammer(count, threads=4)
    for _ in range(20):
        if len({r["pid"] for r in responses}) == 2:
            break
        responses += server.hammer(50, threads=4)
    assert len({r["pid"] for r in responses}) == 2, server.describe()
    assert wrong_answers(responses) == []
    return responses


def assert_own_connections(responses: Sequence[dict], master: dict, clients: Sequence[str]) -> None:
    for client in clients:
        seen = identities(responses, client)
        every = [i for ids in seen.values() for i in ids]
        assert len(every) == len(set(every)), f"{client}: workers share a connection: {seen}"
        assert master[client] not in every, f"{client}: a worker uses the master's {master[client]}"


def test_without_the_integration_workers_keep_the_masters_connection(servers, tmp_path) -> None:
    # The hazard the integration exists for: no at-fork hook runs in uWSGI workers, so each
    # worker uses the SQLite connection the master opened.
    server = uwsgi(servers, tmp_path, "--master", env={})
    master = server.get("/master")
    responses = serve_both_workers(server, 40)
    assert {r["resets"] for r in responses} == {0}
    assert {r["clients"]["sqlite"]["id"] for r in responses} == {master["sqlite"]}


# Without --py-call-uwsgi-fork-hooks uWSGI does not re-initialise the GIL in a worker: one
# forked while a Python thread of the master holds the GIL, or waits for it, hangs for good
# (unbit/uwsgi#1149, #1369, #2387; seen here with psycopg_pool's threads in 2 of 80 four-worker
# starts under load; README, uWSGI). So the psycopg pool, whose worker threads run in the
# master, is used only with that flag.
@pytest.mark.parametrize("flags,clients", [
    ((), ("redis", "sqlite")),
    (("--py-call-osafterfork",), ("redis", "sqlite")),
    (("--py-call-uwsgi-fork-hooks",), ("redis", "postgres", "sqlite")),
], ids=["plain", "py-call-osafterfork", "py-call-uwsgi-fork-hooks"])
def test_each_worker_resets_once_and_owns_its_connections(servers, tmp_path, redis_url,
                                                          postgres_dsn, flags, clients) -> None:
    if "--py-call-osafterfork" in flags and sys.version_info[:2] == (3, 13):
        pytest.skip("CPython 3.13 under pyuwsgi kills every worker at fork with "
                    "--py-call-osafterfork, with or without postfork: "
                    "test_py_call_osafterfork_kills_workers_on_3_13_without_postfork_too shows it")
    env = {"REDIS_URL": redis_url}
    if "postgres" in clients:
        env["POSTGRES_DSN"] = postgres_dsn
    server = uwsgi(servers, tmp_path, "--master", *flags, *INTEGRATION, env=env)
    master = server.get("/master")
    responses = serve_both_workers(server)
    assert_own_connections(responses, master, clients)
    # after_fork callbacks ran once per worker, whether the at-fork hook ran too or not
    assert {r["resets"] for r in responses} == {1}
    counts = Counter(int(m.group(2)) for m in SUMMARY.finditer(server.log))
    workers = {r["pid"] for r in responses}
    assert {pid: counts[pid] for pid in workers} == {pid: 1 for pid in workers}, server.describe()
    assert master["pid"] not in counts
    assert "postfork guard:" not in server.log  # every client is managed: no finding


def test_lazy_apps_still_work(servers, tmp_path, redis_url) -> None:
    server = uwsgi(servers, tmp_path, "--master", "--lazy-apps", *INTEGRATION,
                   env={"REDIS_URL": redis_url})
    responses = serve_both_workers(server, 60)
    # each worker imported the app itself, after the fork: nothing inherited, nothing reset
    for r in responses:
        assert r["resets"] == 0
    for built in (server.get("/master") for _ in range(10)):
        assert built["pid"] == built["served_by"]  # the app was imported in the worker itself
    assert_own_connections(responses, {"redis": None, "sqlite": None}, ("redis", "sqlite"))
    assert "Traceback" not in server.log, server.describe()


@pytest.mark.parametrize("master", [True, False], ids=["master", "no-master"])
def test_a_hook_set_before_the_import_still_runs(servers, tmp_path, master) -> None:
    marks = tmp_path / "prehook.txt"
    marks.touch()
    server = uwsgi(servers, tmp_path, *(["--master"] if master else []),
                   "--import", "_uwsgi_prehook", *INTEGRATION,
                   env={"POSTFORK_TEST_PREHOOK_FILE": str(marks)})
    loader = server.get("/master")["pid"]
    responses = serve_both_workers(server, 40)
    forked = {r["pid"] for r in responses} - {loader}
    # Without --master, worker 1 is the process that loaded the app: nothing to reset there,
    # but uWSGI calls the hook in it too.
    ran = Counter(int(line) for line in marks.read_text().split())
    assert all(ran[pid] == 1 for pid in {r["pid"] for r in responses}), (ran, server.describe())
    for r in responses:
        assert r["resets"] == (1 if r["pid"] in forked else 0)
    log = server.log
    for pid in forked:
        assert len(re.findall(rf"^postfork: reset .* \(pid {pid}\)", log, re.M)) == 1
    assert not re.search(rf"^postfork: reset .* \(pid {loader}\)", log, re.M)


def test_mules_and_spoolers_reset_too(servers, tmp_path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    server = uwsgi(servers, tmp_path, "--master", "--mule", "--spooler", str(spool), *INTEGRATION,
                   env={})
    spawned = [re.compile(r"spawned uWSGI mule 1 \(pid: (\d+)\)"),
               re.compile(r"spawned the uWSGI spooler on dir .* with pid (\d+)")]
    server.wait_for(lambda: all(r.search(server.log) for r in spawned), 20, "the mule and spooler")
    pids = [int(m.group(1)) for m in (r.search(server.log) for r in spawned) if m]
    server.wait_for(lambda: all(f"(pid {pid}), 0 failed" in server.log for pid in pids), 20,
                    "the mule and the spooler to reset")
    counts = Counter(int(m.group(2)) for m in SUMMARY.finditer(server.log))
    assert [counts[pid] for pid in pids] == [1, 1], server.describe()


def test_a_failing_reset_is_logged_and_strict_mode_keeps_the_worker_from_serving(
        servers, tmp_path) -> None:
    lenient = uwsgi(servers, tmp_path, "--master", "--import", "_broken", *INTEGRATION, env={})
    reply = lenient.get("/?n=5")
    assert reply["clients"]["sqlite"]["answer"] == 5 and reply["resets"] == 1
    assert re.search(rf"^postfork: reset of broken-client failed in pid {reply['pid']}: "
                     r"RuntimeError: this reset always fails", lenient.log, re.M), lenient.describe()

    strict = uwsgi(servers, tmp_path, "--master", "--import", "_broken", *INTEGRATION,
                   env={"POSTFORK_STRICT": "1"}, wait=False)
    strict.wait_for(lambda: strict.log.count("OOPS ! failed loading app in worker") >= 2, 30,
                    "both workers to exit")
    log = strict.log
    assert re.search(r"^postfork: reset of broken-client failed in pid \d+", log, re.M)
    assert "postfork: strict mode: worker" in log, strict.describe()


def test_import_outside_uwsgi_is_a_silent_no_op() -> None:
    script = (
        "import json, sys\n"
        "import postfork\n"
        "from postfork import _guard\n"
        "calls = []\n"
        "postfork.after_fork(lambda: calls.append(1))\n"
        "before = (_guard.mode(), _guard._mode)\n"
        "import postfork.integrations.uwsgi as m\n"
        "print(json.dumps({'guard': [before, (_guard.mode(), _guard._mode)], 'resets': calls,\n"
        "                  'installed': m.installed,\n"
        "                  'uwsgidecorators': 'uwsgidecorators' in sys.modules}))\n"
    )
    result = fresh_interpreter(script)
    assert result == {"guard": [["off", None], ["off", None]], "resets": [], "installed": False,
                      "uwsgidecorators": False}


@pytest.mark.parametrize("flags", [(), ("--py-call-uwsgi-fork-hooks",)], ids=["no-flag", "fork-hooks"])
def test_master_threads_without_the_fork_hook_flag_are_warned_about(servers, tmp_path, flags) -> None:
    # The master runs a thread (a sleeping one: it holds no GIL at fork, so the workers boot):
    # without --py-call-uwsgi-fork-hooks a worker forked while such a thread holds the GIL hangs
    # before any Python runs (unbit/uwsgi#1149). The integration says so in every worker.
    server = uwsgi(servers, tmp_path, "--master", "--import", "_uwsgi_thread", *flags, *INTEGRATION, env={})
    serve_both_workers(server)  # both workers booted and served
    warned = [line for line in server.log.splitlines() if "--py-call-uwsgi-fork-hooks" in line
              and line.startswith("postfork: WARNING")]
    if flags:
        assert warned == [], server.describe()
    else:
        assert len(warned) == 2 and all("(master-ticker)" in line for line in warned), server.describe()


@pytest.mark.skipif(sys.version_info[:2] != (3, 13), reason="seen on CPython 3.13 only")
def test_py_call_osafterfork_kills_workers_on_3_13_without_postfork_too(servers, tmp_path) -> None:
    # Measured: under pyuwsgi 2.0.30 on CPython 3.13.0, --py-call-osafterfork kills every worker
    # at fork ("Fatal Python error: _PyRecursiveMutex_Unlock: unlocking a recursive mutex that is
    # not owned by the current thread") with a plain app that never imports postfork: uWSGI's or
    # CPython's, not ours. postfork's integration needs no such flag; the README and the doctor
    # say to leave it out on 3.13.
    app = tmp_path / "plain_app.py"
    app.write_text("def application(environ, start_response):\n"
                   "    start_response('200 OK', [])\n    return [b'ok']\n")
    port = free_port()
    argv = [str(BIN / "uwsgi"), "--http-socket", f"127.0.0.1:{port}", "--processes", "2", "--master",
            "--die-on-term", "--pythonpath", str(tmp_path), "--py-call-osafterfork",
            "--module", "plain_app:application"]
    server = Server(argv, tmp_path / "uwsgi-plain.log", port=port, stop_signal=signal.SIGINT, env={})
    servers.append(server)
    server.wait_for(lambda: "_PyRecursiveMutex_Unlock" in server.log, 30, "a worker to die at fork")
    assert "postfork" not in server.log
