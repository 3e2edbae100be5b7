"""Django: ``django.db.connections`` (PostgreSQL, Django's psycopg pool, MariaDB through
mysqlclient) and ``django.core.cache.caches`` (Django's ``RedisCache``, django-redis), against
the real servers, forking for real.

Each connection is identified from the server's side (PostgreSQL ``pg_backend_pid()`` and
``pg_stat_activity``, MariaDB ``CONNECTION_ID()`` and its process list, Redis ``CLIENT ID`` and
``CLIENT LIST``), and every answer carries the number it was asked for, so a crossed reply
shows as a wrong number. The hazard is shown unmanaged first, then the fix.

This process configures Django once (``tests/django_app/settings.py`` without the integration
in ``INSTALLED_APPS``): the in-process tests register ``connections``/``caches`` themselves,
as the integration's ``ready()`` does; the end-to-end tests run the project under gunicorn
``--preload`` and Celery prefork with the one line in ``INSTALLED_APPS``.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Set
from urllib.parse import urlparse, urlunparse

import pytest

import postfork
from _locks import held_by_a_parent_thread
from _servers import BIN, Server, fresh_interpreter, free_port
from postfork.testing import ChildError, fork_child, run_in_child

django = pytest.importorskip("django")
pytest.importorskip("django_redis")
MySQLdb = pytest.importorskip("MySQLdb")
psycopg = pytest.importorskip("psycopg")
pytest.importorskip("psycopg_pool")

from django.conf import settings  # noqa: E402
from django.core.cache import caches  # noqa: E402
from django.db import close_old_connections, connections  # noqa: E402

from django_app.settings import build  # noqa: E402

TESTS = Path(__file__).resolve().parent
HERE = os.path.relpath(__file__)
TAG = f"pf-dj-{uuid.uuid4().hex[:10]}"
CACHE_DB = 11  # the caches' Redis database (never 0)

if not settings.configured:
    _conf = build({**os.environ, "POSTFORK_DJANGO_INTEGRATION": "0", "POSTFORK_DJANGO_TAG": TAG,
                   "DJANGO_CACHE_DB": str(CACHE_DB)})
    # django-redis with a connection held per client: redis-py does no pid check there
    _conf["CACHES"]["single"] = {
        **_conf["CACHES"]["djredis"], "KEY_PREFIX": f"{TAG}-single",
        "OPTIONS": {"SOCKET_TIMEOUT": 5,
                    "REDIS_CLIENT_KWARGS": {"single_connection_client": True}}}
    settings.configure(**_conf)
    django.setup()

from django_app.views import probe  # noqa: E402


# -- the servers' side -------------------------------------------------------------------------

@pytest.fixture
def pg(postgres_dsn: str) -> Iterator[Any]:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def maria(mysql_url: str) -> Iterator[Any]:
    u = urlparse(mysql_url)
    conn = MySQLdb.connect(host=u.hostname, port=u.port or 3306, user=u.username or "root",
                           password=u.password or "", database=u.path.lstrip("/"), autocommit=True)
    yield conn
    conn.close()


def pg_alive(pg: Any, pid: int) -> bool:
    return bool(pg.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()[0])


def pg_pool_backends(pg: Any) -> Set[int]:
    rows = pg.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                      [f"{TAG}-pool"]).fetchall()
    return {r[0] for r in rows}


def maria_alive(maria: Any, conn_id: int) -> bool:
    cur = maria.cursor()
    cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s", [conn_id])
    return bool(cur.fetchone()[0])


def eventually(check: Any, timeout: float = 5.0) -> bool:
    """``check()`` becomes true within ``timeout`` (a server drops an ended session from its
    lists a moment after the socket closes)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def services(postgres_dsn: str, mysql_url: str, redis_url: str) -> None:
    """Every backend of the project is up (or the test skips / fails under CI)."""


@pytest.fixture(autouse=True)
def django_state(clean_registry: None) -> Iterator[None]:
    """Each test starts from no connection and ends by closing what this process holds (its
    own, gracefully) and dropping Django's pool, so no test inherits another's sessions."""
    yield
    for wrapper in connections.all(initialized_only=True):
        try:
            wrapper.close()
        except Exception:
            wrapper.connection = None  # broken by a hazard: nothing left to close
    try:
        connections["pooled"].close_pool()
    except Exception:
        pass
    type(connections["pooled"])._connection_pools.clear()
    for alias in list(settings.CACHES):
        try:
            del caches[alias]  # its pools go with it
        except AttributeError:
            pass
    gc.collect()


def answers(result: Dict[str, Any]) -> Dict[str, Any]:
    """backend -> (connection id, right answer?) ; errors as ("error", message)."""
    out = {}
    for name, got in result["clients"].items():
        if got.get("error"):
            out[name] = ("error", got["error"])
        else:
            out[name] = (got["id"], got["answer"] == result["n"])
    return out


def ids(result: Dict[str, Any]) -> Dict[str, Any]:
    return {name: got["id"] for name, got in result["clients"].items()}


def worker(n: int, rounds: int = 3) -> List[Dict[str, Any]]:
    """What a worker does with the inherited app: serve ``rounds`` requests (Django closes
    obsolete connections after each, as ``request_finished`` does), then exit closing its
    connections (``connections.close_all()``, Django's pool)."""
    results = []
    for i in range(rounds):
        results.append(probe(n + i))
        close_old_connections()
    connections.close_all()
    connections["pooled"].close_pool()
    return results


# -- 1. databases: the hazard, then the fix -----------------------------------------------------

def test_unmanaged_worker_uses_then_kills_the_masters_sessions(services: None, pg: Any,
                                                                maria: Any) -> None:
    master = probe(1)
    assert all(ok for _, ok in answers(master).values()), master
    pool_before = pg_pool_backends(pg)

    child = run_in_child(worker, 100, timeout=30)

    # The child's requests went over the master's own sessions (same backends)...
    first = ids(child[0])
    assert first["postgres"] == ids(master)["postgres"]
    assert first["mariadb"] == ids(master)["mariadb"]
    assert first["pooled"] in pool_before  # an idle connection of the master's pool
    # ...and its close said goodbye on them: libpq's Terminate, mysqlclient's COM_QUIT.
    assert eventually(lambda: not pg_alive(pg, ids(master)["postgres"]))
    assert eventually(lambda: not maria_alive(maria, ids(master)["mariadb"]))
    after = answers(probe(2))
    assert after["postgres"][0] == "error" and after["mariadb"][0] == "error", after
    # Django's pool: the child's close_pool() terminated the master's pooled connections too
    assert eventually(lambda: not pool_before & pg_pool_backends(pg))


def test_registered_connections_give_each_worker_its_own(services: None, pg: Any,
                                                         maria: Any) -> None:
    postfork.register(connections)
    postfork.register(caches)
    master = probe(1)
    master_ids = ids(master)
    pool_before = pg_pool_backends(pg)

    children = [fork_child(worker, 100 * (k + 1)) for k in range(2)]
    results = [child.result(30) for child in children]

    seen: Dict[str, Set[Any]] = {}
    for k, rounds in enumerate(results):
        for r in rounds:
            assert all(ok is True for _, ok in answers(r).values()), r
        for name in master_ids:
            mine = {ids(r)[name] for r in rounds}
            assert master_ids[name] not in mine, (name, rounds)
            assert not mine & seen.get(name, set()), (name, "two workers share a connection")
            seen.setdefault(name, set()).update(mine)
    assert not seen["pooled"] & pool_before  # the child's pool opened its own connections
    # The master's sessions are the same ones, alive, and answer.
    assert pg_alive(pg, master_ids["postgres"]) and maria_alive(maria, master_ids["mariadb"])
    again = probe(7)
    assert answers(again) == {name: (master_ids[name], True) for name in master_ids
                              if name != "pooled"} | {"pooled": answers(again)["pooled"]}
    assert answers(again)["pooled"][0] in pool_before and answers(again)["pooled"][1] is True


def test_another_threads_mariadb_session_survives_every_fork(services: None, maria: Any) -> None:
    """A wrapper lives in its thread's thread-local; CPython drops the other threads' locals in
    the child before any at-fork hook, and once the wrapper's reference cycles are collected
    mysqlclient's finalizer sends COM_QUIT on the master's socket. Unmanaged, a fork ends that thread's session; registered (before or after
    that thread connected), it survives."""
    for managed in (False, True):
        if managed:
            postfork.register(connections)
        asked, done = threading.Event(), threading.Event()
        box: Dict[str, Any] = {}

        def session() -> None:
            box["before"] = _mariadb_id()  # this thread's own wrapper, opened after register()
            asked.set()
            done.wait(30)
            try:
                box["after"] = _mariadb_id()
            except Exception as exc:
                box["after"] = f"{type(exc).__name__}: {exc}"
            box["alive"] = maria_alive(maria, box["before"]) if managed else not eventually(
                lambda: not maria_alive(maria, box["before"]))  # as the server sees it
            connections.close_all()  # this thread's

        thread = threading.Thread(target=session, daemon=True)
        thread.start()
        assert asked.wait(10)
        run_in_child(gc.collect)  # a worker that does nothing but collect garbage, as all do

        done.set()
        thread.join(30)
        if managed:
            assert box["after"] == box["before"] and box["alive"], box
        else:
            assert "Lost connection" in str(box["after"]) or "gone away" in str(box["after"]), box
            assert not box["alive"]


def _mariadb_id() -> int:
    with connections["mariadb"].cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        return int(cursor.fetchone()[0])


# -- 2. caches ----------------------------------------------------------------------------------

def test_cache_locks_held_at_fork_hang_the_unmanaged_child(services: None, redis_key: str) -> None:
    """redis-py's pool checks the pid, so Django's RedisCache does not cross replies; but the
    child's first use takes the pool's lock (redis-py's own fork reset), and every access to
    ``caches`` takes the RLock of Django's context-local storage. A parent thread holding
    either at fork hangs the child for good (bounded here); registered, the child answers on a
    connection of its own."""
    cache = caches["default"]
    cache.set(redis_key, 1, 60)
    parent_id = cache._cache.get_client(write=True).client_id()
    pool = cache._cache._pools[0]
    storage_lock = object.__getattribute__(caches._connections, "_lock")

    def use() -> Any:
        c = caches["default"]
        return c.get(redis_key), c._cache.get_client(write=True).client_id()

    with held_by_a_parent_thread(pool._lock, storage_lock):
        with pytest.raises(ChildError, match="did not finish"):
            run_in_child(use, timeout=2)
        postfork.register(caches)
        started = time.monotonic()
        value, child_id = run_in_child(use, timeout=10)
        took = time.monotonic() - started  # postfork's before-fork work must not wait either
    assert value == 1 and child_id != parent_id
    assert took < 5, took
    assert cache._cache.get_client(write=True).client_id() == parent_id  # the master's, intact


def test_django_redis_single_connection_client_is_shared_unless_managed(services: None) -> None:
    """django-redis with ``REDIS_CLIENT_KWARGS={"single_connection_client": True}``: redis-py
    makes no pid check on that connection, so an unmanaged child talks on the master's."""
    from django_redis import get_redis_connection

    parent_id = get_redis_connection("single").client_id()
    child_id = run_in_child(lambda: get_redis_connection("single").client_id())
    assert child_id == parent_id  # the same connection, as the server sees it
    postfork.register(caches)
    child_id = run_in_child(lambda: get_redis_connection("single").client_id())
    assert child_id != parent_id
    assert get_redis_connection("single").client_id() == parent_id


def test_registered_proxy_and_wrapper(services: None, pg: Any) -> None:
    """``postfork.register(django.db.connection)`` resets the whole handler; a wrapper alone
    (``postfork.register(connections["default"])``) is reset too."""
    from django.db import connection

    postfork.register(connection)
    master = _pg_id("default")
    assert run_in_child(_pg_id, "default") != master
    assert _pg_id("default") == master and pg_alive(pg, master)
    postfork.unregister(connection)
    postfork.register(connections["default"])
    assert run_in_child(_pg_id, "default") != master
    assert _pg_id("default") == master


def _pg_id(alias: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def test_a_second_forced_reset_keeps_the_childs_own_connections(services: None) -> None:
    postfork.register(connections)
    postfork.register(caches)
    master = ids(probe(1))

    def twice() -> Any:
        first = ids(probe(2))
        postfork.reset_all(force=True)
        return first, ids(probe(3))

    first, second = run_in_child(twice)
    assert first["postgres"] != master["postgres"]
    assert second["postgres"] == first["postgres"] and second["mariadb"] == first["mariadb"]


# -- 3. the guard -------------------------------------------------------------------------------

def _line() -> int:
    return sys._getframe(1).f_lineno


def _findings_in_child() -> List[Dict[str, Any]]:
    try:
        report = postfork.reset_all()
    except postfork.ForkSafetyError as exc:
        report = exc.report
    return [f.as_dict() for f in report.findings if f.kind == "client"]


def test_guard_names_an_unmanaged_connection_and_cache(services: None, restore_guard: None) -> None:
    postfork.guard("warn")
    for handler in (connections, caches):  # built anew below, while the guard is on
        try:
            del handler["default"]
        except AttributeError:
            pass
    connections["default"].ensure_connection()
    db_line = _line() - 1
    caches["default"].set("postfork-guard", 1, 10)
    cache_line = _line() - 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = run_in_child(_findings_in_child)
    finally:
        # This test's unmanaged wrapper and cache must not outlive it: later tests of the
        # guard (any module) would find them as unmanaged clients of this process.
        connections["default"].close()
        for handler in (connections, caches):
            try:
                del handler["default"]
            except AttributeError:
                pass
        gc.collect()
    at = {(f["subject"], f["created_at"]) for f in found}
    assert ("django.DatabaseWrapper", f"{HERE}:{db_line}") in at, found
    assert ("django.RedisCache", f"{HERE}:{cache_line}") in at, found
    wrapper = [f for f in found if f["subject"] == "django.DatabaseWrapper"][0]
    assert "'postfork.integrations.django' to INSTALLED_APPS" in wrapper["fix"]
    assert f"pid {os.getpid()} (the master)" in wrapper["description"]

    postfork.register(connections)  # what the integration does
    postfork.register(caches)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = run_in_child(_findings_in_child)
    mine = [f for f in found if f["created_at"] and f["created_at"].startswith(f"{HERE}:")]
    assert mine == [], mine


# -- 4. the one line: INSTALLED_APPS ------------------------------------------------------------

def test_installed_app_registers_the_handlers_and_turns_the_guard_on() -> None:
    script = (
        "import json, os, sys\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "os.environ['DJANGO_SETTINGS_MODULE'] = 'django_app.settings'\n"
        "os.environ['POSTFORK_DJANGO_INTEGRATION'] = '1'\n"
        "import django\n"
        "django.setup()\n"
        "from django.apps import apps\n"
        "from postfork._registry import REGISTRY\n"
        "from postfork import _guard\n"
        "print(json.dumps({'names': REGISTRY.names(), 'guard': _guard.mode(),\n"
        "                  'app': type(apps.get_app_config('postfork')).__name__,\n"
        "                  'connected': 'django' in ' '.join(sys.modules) and\n"
        "                               any(m.startswith('psycopg') for m in sys.modules)}))\n"
    )
    result = fresh_interpreter(script)
    assert result == {"names": ["django.db.connections", "django.core.cache.caches"],
                      "guard": "warn", "app": "PostforkConfig",
                      "connected": False}  # setting up connects nothing, imports no driver


# -- 5. end to end: gunicorn --preload, Celery prefork -------------------------------------------

def _project_env(tmp_path: Path, integration: bool, **extra: str) -> Dict[str, str]:
    tag = f"pf-dj-{uuid.uuid4().hex[:10]}"
    return {"PYTHONPATH": str(TESTS), "DJANGO_SETTINGS_MODULE": "django_app.settings",
            "POSTFORK_DJANGO_TAG": tag, "DJANGO_CACHE_DB": str(CACHE_DB),
            "POSTFORK_DJANGO_INTEGRATION": "1" if integration else "0",
            "POSTFORK_EXAMPLE_DIR": str(tmp_path), **extra}


def _gunicorn(servers: List[Server], tmp_path: Path, integration: bool) -> Server:
    port = free_port()
    # --timeout bounds a worker that waits for a reply another process took (the hazard run)
    argv = [str(BIN / "gunicorn"), "--preload", "-w", "4", "-b", f"127.0.0.1:{port}",
            "-c", str(TESTS / "django_app" / "gunicorn_conf.py"), "--no-control-socket",
            "--timeout", "10" if integration else "4", "--graceful-timeout", "5",
            "django_app.wsgi:application"]
    server = Server(argv, tmp_path / f"gunicorn-{port}.log", port=port, cwd=TESTS,
                    env=_project_env(tmp_path, integration))
    servers.append(server)
    server.wait_for(lambda: (tmp_path / "master.jsonl").exists()
                    and len(_master_lines(tmp_path)) >= 5, 30, "the master to fork 4 workers")
    return server


def _master_lines(tmp_path: Path) -> List[Dict[str, Any]]:
    """The master's probes: at import (n=-1), then before each fork (pre_fork)."""
    text = (tmp_path / "master.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


def _get(server: Server, n: int) -> Dict[str, Any]:
    try:
        return server.get(f"/?n={n}", timeout=15)  # type: ignore[no-any-return]
    except Exception as exc:  # the hazard runs: a worker killed mid-request, a hung reply
        return {"pid": None, "n": n, "failed": f"{type(exc).__name__}: {exc}"[:200], "clients": {}}


def _hammer(server: Server, count: int, threads: int = 8) -> List[Dict[str, Any]]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda i: _get(server, i), range(count)))


def _tally(responses: List[Dict[str, Any]]) -> Dict[str, Any]:
    """wrong answers, errors, and which connection ids each worker used, per backend."""
    wrong: Counter = Counter()
    errors: Counter = Counter()
    used: Dict[str, Dict[int, Set[int]]] = {}
    for r in responses:
        if r.get("failed"):
            errors["request"] += 1
            continue
        for name, got in r["clients"].items():
            if got.get("error"):
                errors[name] += 1
            elif got["answer"] != r["n"]:
                wrong[name] += 1
            else:
                used.setdefault(name, {}).setdefault(r["pid"], set()).add(got["id"])
    return {"wrong": wrong, "errors": errors, "used": used}


def _master_again(server: Server, tmp_path: Path) -> Dict[str, Any]:
    """SIGTTIN: gunicorn forks one more worker, and the master runs its probe first."""
    count = len(_master_lines(tmp_path))
    os.kill(server.proc.pid, signal.SIGTTIN)
    server.wait_for(lambda: len(_master_lines(tmp_path)) > count, 20, "the master's probe")
    return _master_lines(tmp_path)[-1]


def test_gunicorn_preload_1000_requests_each_worker_its_own_backends(
        services: None, servers: List[Server], tmp_path: Path) -> None:
    server = _gunicorn(servers, tmp_path, integration=True)
    master = _master_lines(tmp_path)[0]
    assert master["pid"] == server.proc.pid and answers(master) == {
        name: (got["id"], True) for name, got in master["clients"].items()}

    responses = _hammer(server, 1000)

    tally = _tally(responses)
    assert not tally["wrong"] and not tally["errors"], (tally, server.describe())
    workers = {r["pid"] for r in responses}
    assert len(workers) == 4 and master["pid"] not in workers
    for name, by_worker in tally["used"].items():
        every = [i for s in by_worker.values() for i in s]
        assert len(every) == len(set(every)), f"{name}: workers share a connection: {by_worker}"
        assert master["clients"][name]["id"] not in every, f"{name}: a worker used the master's"
        if name != "pooled":  # a persistent connection per worker; the pool may open two
            assert all(len(s) == 1 for s in by_worker.values()), (name, by_worker)
    # The master's sessions: the same ones, still answering, after 1,000 requests.
    again = _master_again(server, tmp_path)
    assert again["pid"] == master["pid"]
    assert answers(again) == {name: (master["clients"][name]["id"], True)
                              for name in master["clients"] if name != "pooled"} | {
        "pooled": (again["clients"]["pooled"]["id"], True)}
    assert "postfork guard:" not in server.log and "ForkSafetyWarning" not in server.log, server.log
    assert "Traceback" not in server.log, server.describe()


def test_gunicorn_preload_unmanaged_hazard(services: None, servers: List[Server],
                                           tmp_path: Path) -> None:
    """The same project without the line in INSTALLED_APPS: measured, not assumed."""
    server = _gunicorn(servers, tmp_path, integration=False)
    master = _master_lines(tmp_path)[0]

    responses = _hammer(server, 200)

    tally = _tally(responses)
    shared = {name: sorted(pid for pid, s in tally["used"].get(name, {}).items()
                           if master["clients"][name]["id"] in s)
              for name in master["clients"]}
    again = _master_again(server, tmp_path)
    print(f"\nunmanaged Django under gunicorn --preload, 200 requests: wrong {dict(tally['wrong'])}, "
          f"errors {dict(tally['errors'])}, workers on the master's session {shared}, "
          f"master afterwards {answers(again)}")
    # Each worker's first query on the persistent connection it inherited went over the
    # master's session, and replies crossed between processes.
    assert shared["postgres"] or tally["wrong"]["postgres"] or tally["errors"]["postgres"], tally
    assert sum(tally["wrong"].values()) + sum(tally["errors"].values()) > 0, tally


BROKER_DB = 13  # as tests/test_celery.py: a database of its own, a queue per test


def test_celery_prefork_each_pool_process_its_own_backends(services: None, tmp_path: Path,
                                                           redis_url: str) -> None:
    celery = pytest.importorskip("celery")
    broker = urlunparse(urlparse(redis_url)._replace(path=f"/{BROKER_DB}"))
    queue = f"postfork-django-{uuid.uuid4().hex[:12]}"
    node = f"{queue}@localhost"
    env = _project_env(tmp_path, True, REDIS_URL=redis_url, CELERY_BROKER_URL=broker,
                       CELERY_RESULT_BACKEND=broker, POSTFORK_EXAMPLE_QUEUE=queue)
    argv = [str(BIN / "celery"), "-A", "django_app.celery_app", "worker", "--pool", "prefork",
            "--concurrency", "2", "-l", "info", "-Q", queue, "-n", node,
            "--without-gossip", "--without-mingle", "--without-heartbeat"]
    worker = Server(argv, tmp_path / "celery.log", env=env, cwd=TESTS, stop_signal=signal.SIGTERM)
    caller = celery.Celery("postfork_django_caller", broker=broker, backend=broker)
    try:
        worker.wait_for(lambda: " ready." in worker.log, 30, "the worker to be ready")
        pending = [caller.send_task("django_app.whoami", args=(i, 0.3), queue=queue)
                   for i in range(8)]
        results = [r.get(timeout=30) for r in pending]
        main = results[0]["main"]
        assert main["n"] == -2  # used again just before the fork: inherited live
        tally = _tally(results)
        assert not tally["wrong"] and not tally["errors"], (tally, worker.describe())
        pool_pids = {r["pid"] for r in results}
        assert len(pool_pids) == 2 and main["pid"] not in pool_pids, worker.describe()
        for name, by_process in tally["used"].items():
            every = [i for s in by_process.values() for i in s]
            assert len(every) == len(set(every)), f"{name}: pool processes share: {by_process}"
            assert main["clients"][name]["id"] not in every, f"{name}: the main process's"
        # The main process answers again on its own sessions (remote control runs there).
        replies = caller.control.broadcast("django_probe", arguments={"n": -7}, reply=True,
                                           destination=[node], timeout=10)
        again = replies[0][node]
        assert again["pid"] == main["pid"]
        assert answers(again) == {name: (main["clients"][name]["id"], True)
                                  for name in main["clients"] if name != "pooled"} | {
            "pooled": (again["clients"]["pooled"]["id"], True)}
        assert "postfork guard:" not in worker.log and "Traceback" not in worker.log, worker.log
    finally:
        caller.close()
        worker.stop()
