"""Regressions in postfork's own at-fork path, registry and answers (core hardening).

Each test here failed (hung, built a client, ran a callback twice, pointed at the wrong place)
before the fix it guards. The ones that could hang run in a subprocess with a time limit, so a
regression fails the test instead of hanging the suite.
"""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import textwrap
import warnings
from typing import Any, List

import pytest

import postfork
from postfork._lookup import type_name
from postfork.testing import run_in_child

pytestmark = pytest.mark.usefixtures("clean_registry")


def _run(code: str, timeout: float = 30.0, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("POSTFORK_")}
    full.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full,
                          capture_output=True, text=True, timeout=timeout)


# -- the at-fork path must not depend on import order ----------------------------------------

_LOGGING_LOCK_HELD_AT_FORK = """
    import os, sys, threading, time
    {first}
    logging.basicConfig()                     # a handler, whose lock a thread holds at fork
    class Client: pass
    def failing_reset(client): raise RuntimeError("this reset fails")
    client = postfork.register(Client(), reset=failing_reset)  # a failure is logged in the child
    handler = logging.getLogger().handlers[0]
    held, release = threading.Event(), threading.Event()
    def hold():
        with handler.lock:
            held.set()
            release.wait()
    threading.Thread(target=hold, daemon=True).start()
    held.wait()
    pid = os.fork()
    if pid == 0:
        os._exit(7)                           # reached only if the at-fork hook returned
    release.set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print("exit", os.waitstatus_to_exitcode(status))
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        print("hung")
"""


@pytest.mark.parametrize("first", ["import postfork\nimport logging", "import logging\nimport postfork",
                                   "import postfork\npostfork.after_fork(lambda: None)\nimport logging"],
                         ids=["postfork-first", "logging-first", "registered-before-logging"])
def test_failing_reset_logs_without_hanging_whatever_was_imported_first(first: str) -> None:
    # Regression: postfork imported before logging registered its at-fork hook first, so the
    # child logged the failure through a handler whose lock a parent thread held: it hung.
    done = _run(_LOGGING_LOCK_HELD_AT_FORK.format(first=first.replace("\n", "\n    ")))
    assert done.stdout.split() == ["exit", "7"], (done.stdout, done.stderr)
    assert "this reset fails" in done.stderr  # the failure was logged, in the child


def test_import_postfork_alone_imports_no_logging() -> None:
    # logging (and its traceback, string...) is most of what importing postfork would cost: it
    # comes with the at-fork hook, at the first registration or when the guard is switched on.
    done = _run("""
        import sys, postfork
        print("logging" in sys.modules)
        postfork.after_fork(lambda: None)
        print("logging" in sys.modules)
    """)
    assert done.stdout.split() == ["False", "True"], done.stderr


# -- no lock taken from a weakref callback or a finalizer --------------------------------------

def test_registering_again_while_a_weakref_callback_fires_does_not_deadlock() -> None:
    # Regression: add() dropped the old reset (which held the last reference to b) under the
    # non-reentrant registry lock; b's weakref callback took the same lock: hung forever.
    done = _run("""
        import gc, postfork
        class Obj: pass
        a, b = Obj(), Obj()
        postfork.register(b, reset=lambda o: None)
        postfork.register(a, reset=lambda o, b=b: None)   # the reset closes over b
        del b
        gc.collect()
        postfork.register(a, reset=lambda o: None)        # drops the last reference to b
        print("registered", postfork.registered(a), len(postfork.reset_all(force=True).entries))
    """, timeout=20)
    assert done.stdout.split() == ["registered", "True", "1"], done.stderr


def test_a_finalizer_may_unregister_during_registration() -> None:
    class Owner:
        def __del__(self) -> None:
            postfork.unregister(self.inner)  # runs inside the registry's own work

    class Inner:
        pass

    owner = Owner()
    owner.inner = postfork.register(Inner(), reset=lambda o: None)
    postfork.register(owner, reset=lambda o: None)
    postfork.register(Inner(), reset=lambda o, keep=owner: None)  # noqa: B008
    del owner
    gc.collect()
    postfork.register(Inner(), reset=lambda o: None)  # no deadlock, registry consistent
    assert all(obj is not None for obj in postfork._registry.REGISTRY.objects())


# -- the guard never builds a local --------------------------------------------------------

@pytest.mark.parametrize("mode", ["off", "warn", "reset"])
def test_the_guard_never_builds_a_local(mode: str) -> None:
    # Regression: the guard walked Local objects through __getattr__, which builds the client:
    # in every child (network I/O at fork) and in the master from postfork.check().
    done = _run(f"""
        import os, sys, postfork
        postfork.guard({mode!r})
        built = []
        def factory():
            built.append(os.getpid())
            return object()
        resolved = postfork.local(factory, name="resolved")
        resolved()                                   # built in the master
        unbuilt = postfork.local(factory, name="unbuilt")
        postfork.check()                             # looks, builds nothing
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                 # never touches either local
            postfork.reset_all()
            postfork.check()
            os.write(w, str(len(built)).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        print(len(built), os.read(r, 10).decode())
    """)
    assert done.stdout.split() == ["1", "1"], done.stderr


# -- honest answers ------------------------------------------------------------------------

def test_after_fork_twice_is_one_entry_and_removable() -> None:
    calls: List[int] = []

    def reseed() -> None:
        calls.append(os.getpid())

    assert postfork.after_fork(reseed) is reseed
    postfork.after_fork(reseed)
    assert postfork.registered(reseed)
    assert run_in_child(lambda: len(calls)) == 1  # once, not twice
    assert postfork.unregister(reseed) is True
    assert not postfork.registered(reseed)
    assert run_in_child(lambda: len(calls)) == 0
    assert postfork.unregister(reseed) is False


def test_no_adapter_error_points_to_local_first_and_forbids_goodbyes() -> None:
    class Connection:
        pass

    with pytest.raises(TypeError) as info:
        postfork.register(Connection())
    message = str(info.value)
    assert message.index("postfork.local(lambda: Connection(...))") < message.index("reset=")
    assert "close()" in message and "master's connection" in message


def test_a_class_of_main_is_named_as_written() -> None:
    done = _run("""
        from postfork._lookup import type_name
        class Client: pass
        print(type_name(Client()))
    """)
    assert done.stdout.strip() == "__main__.Client", done.stderr
    assert type_name(logging.Logger("x")) == "logging.Logger"


def test_strict_mode_typo_is_an_error() -> None:
    done = _run("import postfork\npostfork.reset_all()", POSTFORK_STRICT="yes please")
    assert done.returncode == 1
    assert "POSTFORK_STRICT takes 1" in done.stderr and "'yes please'" in done.stderr
    for value in ("1", "true", "0", "off", ""):
        assert _run("import postfork\npostfork.reset_all()", POSTFORK_STRICT=value).returncode == 0


def test_thread_started_from_python_c_is_named_with_its_line() -> None:
    # Regression: frames of "<string>" counted as library code, so a thread started from
    # python -c was "(started before the guard was on)", and the warning pointed into postfork.
    done = _run("""
        import os, threading, time, postfork
        postfork.guard("warn")
        threading.Thread(target=time.sleep, args=(5,), name="sleeper", daemon=True).start()
        pid = os.fork()
        if pid == 0:
            postfork.reset_all()
            os._exit(0)
        os.waitpid(pid, 0)
    """)
    warning = [line for line in done.stderr.splitlines() if "sleeper" in line]
    assert warning, done.stderr
    assert warning[0].startswith("<string>:4: ForkSafetyWarning"), warning
    assert "started at <string>:4" in warning[0]
    assert "before the guard was on" not in done.stderr


def test_finding_without_a_site_points_outside_postfork() -> None:
    done = _run("""
        import os, threading, time
        threading.Thread(target=time.sleep, args=(5,), name="early", daemon=True).start()
        import postfork
        postfork.guard("warn")
        pid = os.fork()
        if pid == 0:
            postfork.reset_all()
            os._exit(0)
        os.waitpid(pid, 0)
    """)
    warning = [line for line in done.stderr.splitlines() if "'early'" in line]
    assert warning and "postfork" not in warning[0].split(":")[0], done.stderr
    assert "started before the guard was on" in warning[0]


def test_native_threads_are_named_with_their_library() -> None:
    # A thread the kernel lists but Python's threading module does not (C libraries start them:
    # librdkafka's are named "rdk:..."): named, with its owner, answering 3.12's
    # "This process is multi-threaded, use of fork() may lead to deadlocks" warning.
    done = _run("""
        import _thread, ctypes, os, time, postfork
        libc = ctypes.CDLL(None)
        ready = []
        def native():
            libc.prctl(15, b"rdk:main", 0, 0, 0)   # PR_SET_NAME: the kernel's thread name
            ready.append(1)
            time.sleep(5)
        _thread.start_new_thread(native, ())
        while not ready:
            time.sleep(0.01)
        postfork.guard("warn")
        import warnings
        warnings.simplefilter("ignore")
        pid = os.fork()
        if pid == 0:
            report = postfork.reset_all()
            print([(f.kind, f.subject) for f in report.findings])
            print([f.description for f in report.findings if f.subject == "rdk:main"][0])
            os._exit(0)
        os.waitpid(pid, 0)
    """)
    lines = done.stdout.splitlines()
    assert lines[0] == "[('thread', 'rdk:main')]", done.stdout + done.stderr
    assert "native thread 'rdk:main' (librdkafka (confluent-kafka))" in lines[1]
    assert "multi-threaded, use of fork()" in lines[1]


_MP_HOOKS = """
    import multiprocessing, multiprocessing.util, os, sys, postfork, warnings
    warnings.simplefilter("ignore")
    postfork.guard("warn")
    class Engine: pass
    engine = Engine()
    def dispose(obj):                      # the widely copied recipe
        os.write(1, f"dispose ran in {'child' if os.getpid() != MASTER else 'master'}\\n".encode())
    MASTER = os.getpid()
    multiprocessing.util.register_after_fork(engine, dispose)
    if sys.argv[1] == "opt-in":
        postfork.after_fork(postfork.multiprocessing_after_fork)
    if sys.argv[1] == "multiprocessing":
        ctx = multiprocessing.get_context("fork")
        p = ctx.Process(target=lambda: os.write(1, f"findings {[f.kind for f in postfork.check()]}\\n".encode()))
        p.start(); p.join()
    else:
        pid = os.fork()                    # gunicorn, uWSGI and RQ fork this way
        if pid == 0:
            report = postfork.reset_all()
            os.write(1, f"findings {[f.kind for f in report.findings]}\\n".encode())
            os._exit(0)
        os.waitpid(pid, 0)
"""


@pytest.mark.parametrize("mode, expected", [
    ("plain", ["findings ['hook']"]),                                  # never runs: named
    ("opt-in", ["dispose ran in child", "findings []"]),               # runs, once
    ("multiprocessing", ["dispose ran in child", "findings []"]),      # multiprocessing's own: once
])
def test_register_after_fork_handlers_are_named_or_run_with_the_opt_in(mode: str, expected: List[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_MP_HOOKS), mode], capture_output=True, text=True,
        timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("POSTFORK_")})
    assert done.stdout.splitlines() == expected, done.stdout + done.stderr


def test_an_unregistered_file_written_by_the_app_is_named(tmp_path: Any) -> None:
    app = tmp_path / "journal_app.py"
    app.write_text(textwrap.dedent(f"""
        import postfork
        journal = open({str(tmp_path / 'journal.log')!r}, "a")      # unmanaged: a finding
        kept = postfork.register(open({str(tmp_path / 'kept.log')!r}, "a"))
        readme = open({str(app)!r})                                   # read only: not one
    """))
    done = _run(f"""
        import os, sys, warnings
        sys.path.insert(0, {str(tmp_path)!r})
        warnings.simplefilter("ignore")
        import postfork
        postfork.guard("warn")
        import journal_app
        pid = os.fork()
        if pid == 0:
            for f in postfork.reset_all().findings:
                print(f.kind, f.subject, "journal_app.journal" in f.description, "register(journal)" in f.fix)
            os._exit(0)
        os.waitpid(pid, 0)
    """)
    assert done.stdout.splitlines() == [f"file {tmp_path / 'journal.log'} True True"], done.stderr


def test_an_asyncio_client_and_loop_of_the_master_are_named(redis_url: str) -> None:
    done = _run(f"""
        import asyncio, os, warnings
        warnings.simplefilter("ignore")
        import postfork
        postfork.guard("warn")
        import redis.asyncio
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)                 # the master's loop, still current at fork
        client = redis.asyncio.Redis.from_url({redis_url!r})
        loop.run_until_complete(client.ping())       # a connection on the master's loop
        pid = os.fork()
        if pid == 0:
            for f in postfork.reset_all().findings:
                print(f.kind, "bound to the master's event loop" in f.description)
            os._exit(0)
        os.waitpid(pid, 0)
    """)
    # CPython 3.12+ forgets the policy's loop in a forked child by itself (asyncio.events.on_fork)
    loop = ["loop False"] if sys.version_info < (3, 12) else []
    assert sorted(done.stdout.splitlines()) == ["client True", *loop], done.stdout + done.stderr
