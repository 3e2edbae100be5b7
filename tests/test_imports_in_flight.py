"""A master thread importing a module at the moment of fork: the child's import of it hangs
for ever without postfork (the module lock belongs to a thread the child does not have), and
goes through with it, on every CPython this machine has. The guard names the module and the
thread.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parent.parent

REPRO = """
    import os, sys, threading, time
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    mode = sys.argv[1]
    if mode != "plain":
        import postfork
        postfork.guard("warn")
    with open(os.path.join(here, "slowmod.py"), "w") as f:
        f.write("import __main__, time\\n__main__.inside.set()\\ntime.sleep(1.0)\\nVALUE = 42\\n")
    inside = threading.Event()            # set by slowmod's body: its import lock is held
    def importer():
        import slowmod
    threading.Thread(target=importer, name="lazy-importer", daemon=True).start()
    inside.wait()                         # the thread is executing slowmod's body now
    if mode == "hookless":                # a fork with no at-fork hook, as uWSGI's
        from postfork.testing import _fork_without_hooks
        pid = _fork_without_hooks()
    else:
        pid = os.fork()
    if pid == 0:
        if mode != "plain":
            report = postfork.reset_all()  # what an integration calls (a no-op after the hook)
            found = [f for f in postfork.check() if f.kind == "import"]
            os.write(1, f"released {report.imports[0][0]} {report.imports[0][2]} "
                        f"{found[0].subject} {'lazy-importer' in found[0].description}\\n".encode())
        import slowmod                    # waits for ever on the vanished thread's lock
        os.write(1, f"child imported {slowmod.VALUE}\\n".encode())
        os._exit(0)
    deadline = time.monotonic() + 3.5      # slowmod takes 1 s; a working import is done by then
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print("exit", os.waitstatus_to_exitcode(status))
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        print("hung")
"""


def _pythons() -> List[str]:
    found = {f"{sys.version_info.major}.{sys.version_info.minor}": sys.executable}
    for path in sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[0-9].*/bin/python3"))):
        version = path.split("/versions/")[1].rsplit(".", 1)[0]
        found.setdefault(version, path)
    return [found[v] for v in sorted(found, key=lambda v: tuple(map(int, v.split("."))))]


def _run(python: str, mode: str, tmp_path: Path) -> List[str]:
    script = tmp_path / "repro.py"
    script.write_text(textwrap.dedent(REPRO))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("POSTFORK_GUARD", None)
    done = subprocess.run([python, "-W", "ignore", str(script), mode], capture_output=True, text=True,
                          timeout=60, env=env)
    return done.stdout.split("\n")[:-1] or [done.stderr]


@pytest.mark.parametrize("python", _pythons(), ids=lambda p: p.split("/versions/")[-1].split("/")[0]
                         if "/versions/" in p else "this")
def test_child_import_hangs_without_postfork_and_goes_through_with_it(python: str, tmp_path: Path) -> None:
    assert _run(python, "plain", tmp_path) == ["hung"]  # the hazard, measured on this Python
    assert _run(python, "postfork", tmp_path) == [
        "released slowmod True slowmod True", "child imported 42", "exit 0"]


def test_hookless_fork_is_repaired_by_the_integration_call(tmp_path: Path) -> None:
    assert _run(sys.executable, "hookless", tmp_path) == [
        "released slowmod True slowmod True", "child imported 42", "exit 0"]


def test_the_master_keeps_its_own_threads_imports(tmp_path: Path) -> None:
    # reset_all() in the master (no fork) must not take a live thread's lock away
    code = textwrap.dedent("""
        import os, sys, threading, time
        sys.path.insert(0, sys.argv[1])
        with open(os.path.join(sys.argv[1], "slowmod2.py"), "w") as f:
            f.write("import __main__, time\\n__main__.inside.set()\\ntime.sleep(0.6)\\nVALUE = 7\\n")
        import postfork
        inside = threading.Event()  # set by slowmod2's body: the thread is importing it
        t = threading.Thread(target=lambda: __import__("slowmod2"))
        t.start(); inside.wait()
        print(postfork.reset_all().imports, "slowmod2" in sys.modules)
        t.join()
        import slowmod2
        print(slowmod2.VALUE)
    """)
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.stdout.split() == ["[]", "True", "7"], done.stderr
