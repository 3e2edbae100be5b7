"""The guard names, in each forked child, every client, thread and socket built before the fork
and left unmanaged, with the file and line that built it. Real Redis, real PyMongo against
MockupDB, real forks."""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import warnings
from typing import Any, Dict, List
from urllib.parse import urlparse

import pytest

import postfork
from postfork import _guard
from postfork.testing import FindingsError, run_in_child

redis = pytest.importorskip("redis")

HERE = os.path.relpath(__file__)  # how creation sites are written: relative to the cwd


pytestmark = pytest.mark.usefixtures("restore_guard")  # tests/conftest.py


def _line() -> int:
    """The line of the caller: ``obj = build(); line = _line() - 1``."""
    return sys._getframe(1).f_lineno


def _site(line: int) -> str:
    return f"{HERE}:{line}"


def _findings_in_child() -> List[Dict[str, Any]]:
    """The child's findings from the resets the at-fork hook ran (reset_all() repeats them)."""
    try:
        report = postfork.reset_all()
    except postfork.ForkSafetyError as exc:
        report = exc.report
    return [f.as_dict() for f in report.findings]


def _at(findings: List[Dict[str, Any]], line: int) -> List[Dict[str, Any]]:
    return [f for f in findings if f["created_at"] == _site(line)]


# -- 1. an unregistered redis client ---------------------------------------------------------

def test_warn_names_the_line_the_type_and_the_master_pid(redis_url: str) -> None:
    postfork.guard("warn")
    unmanaged = redis.Redis.from_url(redis_url)
    line = _line() - 1
    managed = postfork.register(redis.Redis.from_url(redis_url))
    managed_line = _line() - 1
    unmanaged.ping()
    managed.ping()
    try:
        with warnings.catch_warnings(record=True) as caught:  # the child inherits the recorder
            warnings.simplefilter("always")

            def in_child() -> List[Any]:
                return [(str(w.message), w.filename, w.lineno) for w in caught
                        if issubclass(w.category, postfork.ForkSafetyWarning)]

            seen = run_in_child(in_child)
    finally:
        postfork.unregister(managed)
    mine = [w for w in seen if f"{HERE}:{line}" in w[0]]
    assert len(mine) == 1, seen
    message, filename, lineno = mine[0]
    assert "redis.Redis" in message
    assert f"pid {os.getpid()} (the master)" in message
    assert "postfork.register(" in message and "postfork.local(" in message  # the fix
    # The warning points at the line that built the client, so Python shows that line.
    assert (os.path.relpath(filename), lineno) == (HERE, line)
    # The registered client produces nothing, nor does the pool each client built.
    assert not [w for w in seen if f"{HERE}:{managed_line}" in w[0]]
    assert not [w for w in seen if "ConnectionPool" in w[0] and f"{HERE}:" in w[0]]


def test_reset_mode_also_resets_it(redis_url: str) -> None:
    """The hazard first (warn: the child talks on the master's connection, same CLIENT ID on
    the server), then reset mode: the child gets its own connection."""
    for mode, same_connection in (("warn", True), ("reset", False)):
        postfork.guard(mode)
        client = redis.Redis.from_url(redis_url, single_connection_client=True)  # no pid check
        line = _line() - 1
        parent_id = client.client_id()

        def in_child() -> Any:
            return client.client_id(), _findings_in_child(), [
                (e.name, e.ok) for e in postfork.reset_all().entries]

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            child_id, findings, entries = run_in_child(in_child)
        assert [f["subject"] for f in _at(findings, line)] == ["redis.Redis"], [(f["subject"], f["created_at"], f["description"][:60]) for f in findings]
        assert (child_id == parent_id) is same_connection, (mode, child_id, parent_id)
        guard_resets = [e for e in entries if _site(line) in e[0]]
        assert guard_resets == ([] if mode == "warn" else [(guard_resets[0][0], True)])
        assert client.client_id() == parent_id  # the master's connection is untouched
        client.close()
        del client
        gc.collect()


def test_raise_mode_raises_after_every_reset_ran(redis_url: str) -> None:
    postfork.guard("raise")
    managed = postfork.register(redis.Redis.from_url(redis_url, single_connection_client=True))
    unmanaged = redis.Redis.from_url(redis_url)
    line = _line() - 1
    managed_parent_id = managed.client_id()
    unmanaged.ping()

    def in_child() -> Any:
        try:
            postfork.reset_all()
        except postfork.ForkSafetyError as exc:
            # The registered client's reset ran before the raise: it has its own connection.
            return (str(exc), [f.as_dict() for f in exc.findings],
                    [(e.name, e.ok) for e in exc.report.entries], managed.client_id())
        return None

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome = run_in_child(in_child, reset=False)
    finally:
        postfork.unregister(managed)
        managed.close()
    assert outcome is not None, "reset_all() did not raise ForkSafetyError"
    text, findings, entries, managed_child_id = outcome
    assert _site(line) in text and "redis.Redis" in text
    assert _at(findings, line)
    assert ("redis.Redis", True) in entries
    assert managed_child_id != managed_parent_id


def test_check_in_the_master_lists_what_a_worker_would_inherit(redis_url: str) -> None:
    postfork.guard("warn")
    unmanaged = redis.Redis.from_url(redis_url)
    line = _line() - 1
    local = postfork.local(lambda: redis.Redis.from_url(redis_url))
    local.ping()
    local_line = _line() - 2
    findings = [f for f in postfork.check() if f.kind == "client"]
    assert [f.subject for f in findings if f.created_at == _site(line)] == ["redis.Redis"]
    assert all(f.pid == os.getpid() for f in findings)
    assert not [f for f in findings if f.created_at in (_site(local_line), _site(local_line + 1))]
    del unmanaged


# -- 2. PyMongo: the client and its monitor threads ------------------------------------------

def test_mongo_client_and_its_threads(mockupdb: Any) -> None:
    pymongo = pytest.importorskip("pymongo")
    postfork.guard("warn")
    unmanaged = pymongo.MongoClient(mockupdb.uri, serverSelectionTimeoutMS=5000)
    line = _line() - 1
    unmanaged.admin.command("ping")
    managed = postfork.register(pymongo.MongoClient(mockupdb.uri, serverSelectionTimeoutMS=5000))
    managed_line = _line() - 1
    managed.admin.command("ping")
    alive = [t.name for t in threading.enumerate()]
    assert alive.count("pymongo_server_monitor_thread") >= 2  # both clients' monitors at fork
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            findings = run_in_child(_findings_in_child)
    finally:
        postfork.unregister(managed)
        unmanaged.close()
        managed.close()
    at_line = _at(findings, line)
    assert [f["subject"] for f in at_line if f["kind"] == "client"] == ["pymongo.MongoClient"]
    threads = [f for f in at_line if f["kind"] == "thread"]
    assert "pymongo_server_monitor_thread" in [f["subject"] for f in threads]
    assert all("pymongo.MongoClient" in f["description"] for f in threads)  # who started it
    assert all(f["pid"] == os.getpid() for f in at_line)
    # The registered client and the threads it owns produce nothing.
    assert _at(findings, managed_line) == []


# -- 3. an unknown client holding a raw socket ------------------------------------------------

class RawRedis:
    """A client postfork knows nothing about: one TCP connection, speaking RESP by hand."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.sendall(b"PING\r\n")
        assert self.sock.recv(64) == b"+PONG\r\n"


def test_inherited_socket_names_its_peer(redis_url: str) -> None:
    u = urlparse(redis_url)
    host, port = u.hostname or "127.0.0.1", u.port or 6379
    postfork.guard("warn")
    unknown = RawRedis(host, port)
    line = RawRedis.__init__.__code__.co_firstlineno + 1  # its socket.create_connection line
    registered = RawRedis(host, port)
    postfork.register(registered.sock)  # the child closes its copy: no finding for this one
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            findings = run_in_child(_findings_in_child)
    finally:
        postfork.unregister(registered.sock)
    sockets = [f for f in _at(findings, line) if f["kind"] == "socket"]
    assert len(sockets) == 1, findings
    assert sockets[0]["subject"] == f"{host}:{port}"
    assert f"connected to {host}:{port}" in sockets[0]["description"]
    assert f"fd {unknown.sock.fileno()} " in sockets[0]["description"]
    unknown.sock.close()
    registered.sock.close()


# -- what is and is not patched, bad input, the environment -----------------------------------

def test_only_construction_is_wrapped(redis_url: str) -> None:
    postfork.guard("warn")
    import redis.asyncio

    for cls in (redis.Redis, redis.ConnectionPool, redis.client.PubSub, redis.asyncio.Redis):
        wrapped = [name for name, value in vars(cls).items()
                   if getattr(getattr(value, "__func__", value), "__postfork_wrapped__", False)]
        assert wrapped == ["__new__"], (cls, wrapped)


_INVISIBLE = """
    import inspect, json, sys
    import redis, socket, sqlalchemy
    from sqlalchemy.engine.base import Engine
    classes = [redis.Redis, redis.ConnectionPool, Engine, socket.socket]
    def seen():
        return [[id(c.__dict__.get("__init__")), c.__init__.__code__.co_filename,
                 c.__init__.__code__.co_varnames, str(inspect.signature(c)),
                 str(inspect.signature(c.__init__))] for c in classes]
    before = seen()
    if sys.argv[1] != "none":
        import postfork
        postfork.guard(sys.argv[1])
    # SQLAlchemy routes create_engine()'s keywords by reading Engine.__init__.__code__
    engine = sqlalchemy.create_engine("sqlite://", echo=False, execution_options={}, logging_name="x",
                                      query_cache_size=10, hide_parameters=True)
    print(json.dumps({"same": seen() == before, "engine": type(engine).__name__}))
"""


@pytest.mark.parametrize("mode", ["none", "off", "warn", "reset", "raise"])
def test_tracking_is_invisible_to_the_library(mode: str) -> None:
    # Regression: the guard replaced Engine.__init__ with a (*args, **kwargs) wrapper, and
    # create_engine(url, echo=False) raised "Invalid argument(s) 'echo'".
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_INVISIBLE), mode],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"same": True, "engine": "Engine"}


def test_bad_mode_names_the_valid_ones() -> None:
    before = _guard.mode()
    for bad in ("loud", "", None, 1):
        with pytest.raises(ValueError) as info:
            postfork.guard(bad)  # type: ignore[arg-type]
        assert "'off', 'warn', 'reset', 'raise'" in str(info.value)
    assert _guard.mode() == before


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "POSTFORK_GUARD"}
    full.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True,
                          text=True, timeout=60)


def test_environment_variable_and_integration_default() -> None:
    code = """
        import postfork
        from postfork import _guard
        a = _guard.mode()
        _guard.guard_default("warn")     # what a server integration calls
        b = _guard.mode()
        postfork.guard("off")            # an explicit call wins over the environment
        print(a, b, _guard.mode())
    """
    assert _python(code, POSTFORK_GUARD="raise").stdout.split() == ["raise", "raise", "off"]
    assert _python(code, POSTFORK_GUARD="off").stdout.split() == ["off", "off", "off"]
    assert _python(code).stdout.split() == ["off", "warn", "off"]
    # A typo is an error from the first call that registers anything (or asks the guard),
    # never a silent "off"; importing postfork alone does not raise.
    for line in ("postfork.local(dict)", "postfork.register(object(), reset=id)",
                 "postfork.after_fork(print)", "postfork.check()"):
        bad = _python(f"import postfork\n{line}", POSTFORK_GUARD="loud")
        assert bad.returncode != 0
        assert ("ConfigError: the environment variable POSTFORK_GUARD takes one of 'off', 'warn', "
                "'reset', 'raise'; got 'loud'") in bad.stderr, bad.stderr
    for line in ("postfork.local(dict)", "postfork.reset_all()"):
        bad = _python(f"import postfork\n{line}", POSTFORK_STRICT="sometimes")
        assert "ConfigError: the environment variable POSTFORK_STRICT takes 1" in bad.stderr, bad.stderr


# -- postfork.testing: a child that runs the resets and asserts no findings ------------------

def test_run_in_child_check_raises_with_the_findings(redis_url: str) -> None:
    postfork.guard("warn")
    unmanaged = redis.Redis.from_url(redis_url)
    line = _line() - 1
    unmanaged.ping()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FindingsError) as info:
            run_in_child(os.getpid, check=True)
    assert _site(line) in str(info.value)
    assert [f.subject for f in info.value.findings if f.created_at == _site(line)] == ["redis.Redis"]


def test_assert_fork_safe_passes_for_a_managed_app(redis_url: str) -> None:
    """In a fresh interpreter (this test process holds other tests' connections): registered
    and local clients, used in the master, give no finding; an unmanaged one fails it."""
    code = f"""
        import os, sys, postfork, redis
        from postfork.testing import assert_fork_safe, run_in_child, FindingsError
        postfork.guard("warn")
        managed = postfork.register(redis.Redis.from_url({redis_url!r}, single_connection_client=True))
        per_process = postfork.local(lambda: redis.Redis.from_url({redis_url!r}))
        managed.ping(); per_process.ping()
        assert_fork_safe()
        pid, cid = run_in_child(lambda: (os.getpid(), managed.client_id()), check=True)
        assert pid != os.getpid() and cid != managed.client_id()
        unmanaged = redis.Redis.from_url({redis_url!r}); unmanaged.ping()
        try:
            assert_fork_safe()
        except FindingsError as exc:
            print("FOUND", [f.subject for f in exc.findings])
        else:
            print("MISSED")
    """
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "FOUND ['redis.Redis']", done.stdout + done.stderr


# -- a real prefork server: gunicorn --preload ----------------------------------------------

def _gunicorn(app: str, tmp_path: Any, redis_url: str, postgres_dsn: str, cwd: str) -> Any:
    from _servers import BIN, Server, free_port

    port = free_port()
    return Server([str(BIN / "gunicorn"), "-c", "python:postfork.integrations.gunicorn", "--preload",
                   "--workers", "2", "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "2", app],
                  tmp_path / "gunicorn.log", port=port, cwd=cwd,  # type: ignore[arg-type]
                  env={"REDIS_URL": redis_url, "POSTGRES_DSN": postgres_dsn,
                       "POSTFORK_EXAMPLE_DIR": str(tmp_path), "PYTHONPATH": cwd})


def _resets(log: str) -> List[str]:
    return [line for line in log.splitlines() if "postfork: reset" in line]


def test_managed_app_under_gunicorn_has_no_finding(tmp_path: Any, redis_url: str, postgres_dsn: str) -> None:
    """The example app (redis, psycopg_pool with its threads, SQLAlchemy, a file) under gunicorn
    --preload, the guard switched on by the integration: no finding in any worker, not even in
    one respawned after kill -9, when gunicorn's own control-socket thread is alive in the master
    and its listening sockets are inherited."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, "examples", "app.py")):
        pytest.skip("examples/app.py is not there")
    server = _gunicorn("app:application", tmp_path, redis_url, postgres_dsn, os.path.join(root, "examples"))
    try:
        server.wait_for(lambda: len(_resets(server.log)) >= 2, 30, "both workers reset")
        victim = server.get("/?n=1")["pid"]
        os.kill(victim, 9)
        server.wait_for(lambda: len(_resets(server.log)) >= 3, 30, "the respawned worker reset")
        assert server.get("/?n=2")["clients"]["redis"]["answer"] == 2
    finally:
        server.stop()
    log = server.log
    assert len(_resets(log)) >= 3
    if "Control socket listening" in log:  # gunicorn >= 24: a thread of the master, alive at fork
        assert log.index("Control socket listening") < log.index(_resets(log)[2]), server.describe()
    assert not [line for line in _resets(log) if "guard finding" in line], server.describe()
    assert "ForkSafetyWarning" not in log, server.describe()


def test_unmanaged_client_under_gunicorn_is_named(tmp_path: Any, redis_url: str, postgres_dsn: str) -> None:
    apps = os.path.join(os.path.dirname(os.path.abspath(__file__)), "doctor_apps")
    server = _gunicorn("unsafe_app:application", tmp_path, redis_url, postgres_dsn, apps)
    try:
        server.wait_for(lambda: len(_resets(server.log)) >= 2, 30, "both workers reset")
    finally:
        server.stop()
    log = server.log
    assert all("3 guard findings" in line for line in _resets(log)), server.describe()
    client_site = _marked("unsafe_app.py")[0]
    assert log.count(f"{client_site}: ForkSafetyWarning: postfork guard: redis.Redis built at "
                     f"{client_site}") == 2, server.describe()


# -- uWSGI and Celery: the server's own sockets and threads are never findings -----------------

def _findings_lines(log: str) -> List[str]:
    return [line for line in log.splitlines() if "ForkSafetyWarning" in line]


def _marked(app: str) -> List[str]:
    """``app.py:LINE`` of each line of a doctor_apps module marked ``# finding: ...``."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "doctor_apps", app)
    with open(path) as f:
        return [f"{app}:{n}" for n, line in enumerate(f, 1) if "# finding:" in line]


def test_uwsgi_names_exactly_the_app_findings(tmp_path: Any, redis_url: str) -> None:
    """uWSGI runs no at-fork hook: no snapshot before fork. The unmanaged client, the app's
    thread and the raw socket are still named, and nothing of uWSGI's own."""
    from _servers import BIN, Server, free_port

    apps = os.path.join(os.path.dirname(os.path.abspath(__file__)), "doctor_apps")
    port = free_port()
    server = Server([str(BIN / "uwsgi"), "--master", "--processes", "2", "--module", "unsafe_app:application",
                     "--import", "postfork.integrations.uwsgi", "--http-socket", f"127.0.0.1:{port}",
                     "--die-on-term"], tmp_path / "uwsgi.log", port=port, cwd=apps,  # type: ignore[arg-type]
                    env={"REDIS_URL": redis_url, "PYTHONPATH": apps})
    try:
        server.wait_for(lambda: len(_resets(server.log)) >= 2, 30, "both workers reset")
    finally:
        server.stop()
    log = server.log
    assert all("3 guard findings" in line for line in _resets(log)), server.describe()
    sites = sorted({line.split(": ForkSafetyWarning")[0] for line in _findings_lines(log)})
    assert sites == _marked("unsafe_app.py"), server.describe()


def test_celery_prefork_names_only_the_unmanaged_client(tmp_path: Any, redis_url: str) -> None:
    """Pool processes forked after the consumer connected to the broker (recycled by
    --max-tasks-per-child 1) inherit Celery's connection, kombu's clients and threads: none of
    them is a finding; the app's unmanaged client is, in every pool process."""
    from _servers import BIN, Server

    apps = os.path.join(os.path.dirname(os.path.abspath(__file__)), "doctor_apps")
    queue = f"postfork-guard-{os.getpid()}"
    env = {"REDIS_URL": redis_url, "PYTHONPATH": apps, "POSTFORK_TEST_QUEUE": queue}
    server = Server([str(BIN / "celery"), "-A", "celery_app", "worker", "--pool", "prefork",
                     "--concurrency", "2", "--max-tasks-per-child", "1", "-Q", queue,
                     "--loglevel", "info", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                    tmp_path / "celery.log", cwd=apps, env=env)  # type: ignore[arg-type]
    try:
        server.wait_for(lambda: "ready." in server.log, 40, "the worker to be ready")
        client = subprocess.run(
            [sys.executable, "-W", "ignore", "-c",
             "from celery_app import whoami\n"
             "print([whoami.delay().get(timeout=20) for _ in range(3)])"],
            cwd=apps, env={**os.environ, **env, "POSTFORK_GUARD": "off"}, capture_output=True, text=True,
            timeout=60)
        assert client.returncode == 0, client.stderr
        server.wait_for(lambda: len(_resets(server.log)) >= 4, 30, "recycled pool processes to reset")
    finally:
        server.stop()
    log = server.log
    resets = _resets(log)
    assert len(resets) >= 4
    assert all("1 guard finding" in line and "0 failed" in line for line in resets), server.describe()
    sites = {line.split(": ForkSafetyWarning")[0].rsplit("] ", 1)[-1] for line in _findings_lines(log)}
    assert sites == set(_marked("celery_app.py")), server.describe()


def test_the_guard_never_evaluates_a_proxy() -> None:
    """A proxy answers ``isinstance`` through its ``__class__``, which evaluates it: Celery's own
    tests trap ``current_app`` so ("Test depends on current_app"), Django's ``SimpleLazyObject``
    would run its setup. The guard reads real types only: a trap held in a module global and
    by a client is never sprung, in the master's check or in a child's."""
    code = textwrap.dedent("""
        import http.client, os, sys, postfork
        postfork.guard("warn")
        sprung = []
        class Trap:
            @property
            def __class__(self):
                sprung.append(os.getpid())
                raise RuntimeError("Test depends on current_app")
        TRAP = Trap()                      # a module global, as `from celery import current_app`
        client = http.client.HTTPConnection("127.0.0.1", 9)  # a tracked client holding one
        client.trap = TRAP
        def child():
            report = postfork.reset_all()
            os._exit(0 if not sprung and not report.failed else 3)
        postfork.check()
        pid = os.fork()
        if pid == 0:
            child()
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), sprung)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFORK_")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.split() == ["0", "[]"], (done.stdout, done.stderr)
    assert "the guard failed" not in done.stderr, done.stderr
