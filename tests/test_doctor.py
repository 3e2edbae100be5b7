"""``postfork doctor``: imports an app as a preloading master would, forks a probe worker, and
reports what it inherited. Run as users run it, in a subprocess, against real Redis/PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Dict, List

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPS = os.path.join(ROOT, "tests", "doctor_apps")
APPS_REL = os.path.join("tests", "doctor_apps")
SCRIPT = os.path.join(os.path.dirname(sys.executable), "postfork")


def doctor(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("POSTFORK_")}
    full["PYTHONPATH"] = APPS
    full.update(env)
    return subprocess.run([sys.executable, "-m", "postfork", "doctor", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=60)


def markers(name: str) -> Dict[str, str]:
    """``finding: KIND`` comments in an app -> the site its line must be reported at."""
    found = {}
    with open(os.path.join(APPS, name)) as f:
        for number, line in enumerate(f, 1):
            m = re.search(r"# (finding: \w+|managed)", line)
            if m:
                found[m.group(1)] = f"{APPS_REL}/{name}:{number}"
    return found


def test_unsafe_app_exits_1_and_names_every_site(redis_url: str) -> None:
    done = doctor("unsafe_app", REDIS_URL=redis_url)
    assert done.returncode == 1, done.stdout + done.stderr
    sites = markers("unsafe_app.py")
    out = done.stdout
    for what in ("finding: client", "finding: socket", "finding: thread", "managed"):
        assert sites[what] in out, (what, out)
    assert re.search(r"UNMANAGED\s+redis\.Redis\s+" + re.escape(sites["finding: client"]), out), out
    assert re.search(r"managed\s+redis\.Redis\s+" + re.escape(sites["managed"]), out), out
    assert re.search(r"UNMANAGED\s+ticker\s+" + re.escape(sites["finding: thread"]), out), out
    assert "fix: postfork.register(client)" in out
    assert out.rstrip().splitlines()[-1].startswith("✗ not fork-safe: 3 findings, 0 failed resets")
    assert "\x1b[" not in out  # no colour when stdout is not a terminal
    assert done.stderr == ""  # progress only on a terminal; the probe's warnings stay quiet


def test_unsafe_app_json(redis_url: str) -> None:
    done = doctor("unsafe_app", "--json", REDIS_URL=redis_url)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)  # one valid document
    sites = markers("unsafe_app.py")
    findings = {f["kind"]: f for f in report["findings"]}
    assert sorted(findings) == ["client", "socket", "thread"]
    for kind in findings:
        assert findings[kind]["created_at"] == sites[f"finding: {kind}"]
        assert findings[kind]["pid"] == report["master_pid"]
        assert findings[kind]["fix"]
    assert findings["socket"]["subject"].endswith(":" + redis_url.rsplit(":", 1)[1].split("/")[0])
    assert {"type": "redis.Redis", "created_at": sites["managed"], "managed": True,
            "pid": report["master_pid"]} in report["clients"]
    assert [r["name"] for r in report["resets"] if r["ok"]] == ["redis.Redis"]
    assert report["ok"] is False and report["exit_code"] == 1
    assert report["child_pid"] not in (None, report["master_pid"])


def test_clean_app_exits_0(redis_url: str) -> None:
    done = doctor("clean_app:application", REDIS_URL=redis_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "✓ fork-safe: 0 findings, 0 failed resets" in done.stdout
    assert "UNMANAGED" not in done.stdout and "OPEN" not in done.stdout
    # The local's instance the master built stays referenced in the worker, unused, and its
    # connection is dropped there too (so no finalizer can ever talk on it).
    assert len(re.findall(r"closed\s+fd \d+\s+127.0.0.1:", done.stdout)) == 2, done.stdout
    assert "kept" not in done.stdout


def test_example_app_is_clean(redis_url: str, postgres_dsn: str) -> None:
    if not os.path.exists(os.path.join(ROOT, "examples", "app.py")):
        pytest.skip("examples/app.py is not there")
    done = doctor("examples.app:application", "--json", REDIS_URL=redis_url, POSTGRES_DSN=postgres_dsn,
                  POSTFORK_EXAMPLE_DIR=os.path.join(ROOT, ".pytest_cache", "doctor-example"))
    report = json.loads(done.stdout)
    assert done.returncode == 0, (report["findings"], report["resets"], done.stderr)
    types = {c["type"]: c for c in report["clients"]}
    assert {"sqlalchemy.Engine", "redis.Redis", "psycopg_pool.ConnectionPool"} <= set(types)
    assert all(c["managed"] and c["created_at"].startswith("examples/app.py:") for c in report["clients"])
    # The pool's worker threads were alive at fork, owned by the registered pool: no finding.
    assert [t for t in report["threads_at_fork"] if not t["managed"]] == []
    assert report["sockets"] and not [s for s in report["sockets"] if s["open_after_resets"]]


def test_failed_reset_exits_1() -> None:
    done = doctor("failing_reset_app")
    assert done.returncode == 1
    assert re.search(r"FAILED\s+legacy-client\s+RuntimeError: cannot reconnect", done.stdout), done.stdout
    assert "0 findings, 1 failed reset" in done.stdout


@pytest.mark.parametrize("target, message", [
    ("nosuch_app", "postfork doctor: no module named 'nosuch_app'"),
    ("broken_app", "postfork doctor: importing 'broken_app' raised KeyError: 'DATABASE_URL' at "
                   f"{APPS_REL}/broken_app.py:4"),
    ("clean_app:nope", "postfork doctor: module 'clean_app' has no attribute 'nope'"),
    ("not a module", "postfork doctor: 'not a module' is not MODULE[:ATTR]"),
])
def test_bad_target_exits_2_with_one_line(target: str, message: str) -> None:
    done = doctor(target)
    assert done.returncode == 2
    lines: List[str] = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), done.stderr
    assert done.stdout == ""


def test_console_script_help_and_version() -> None:
    if not os.path.exists(SCRIPT):
        pytest.skip("the postfork console script is not installed in this environment")
    version = subprocess.run([SCRIPT, "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and re.fullmatch(r"postfork \d+\.\d+\.\d+\S*\n", version.stdout)
    helped = subprocess.run([SCRIPT, "doctor", "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and "MODULE[:ATTR]" in helped.stdout and "--json" in helped.stdout


def test_retired_client_is_not_fork_safe(postgres_dsn: str) -> None:
    # Regression: a registered bare psycopg.Connection is dead in every worker, yet the doctor
    # printed "✓ fork-safe" and the log "0 failed".
    done = doctor("retired_app", POSTGRES_DSN=postgres_dsn)
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"RETIRED\s+psycopg\.Connection\s+unusable in workers", done.stdout), done.stdout
    assert "✗ not fork-safe" in done.stdout
    assert "1 client retired in every worker (build it per process with postfork.local)" in done.stdout
    report = json.loads(doctor("retired_app", "--json", POSTGRES_DSN=postgres_dsn).stdout)
    assert [r["retired"] for r in report["resets"]] == [True] and report["ok"] is False


@pytest.mark.parametrize("variable, value", [("POSTFORK_GUARD", "loud"), ("POSTFORK_STRICT", "maybe")])
def test_bad_environment_exits_2_with_one_line(variable: str, value: str) -> None:
    done = doctor("clean_app", **{variable: value})
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"postfork doctor: the environment variable {variable} takes"), done.stderr
    assert repr(value) in lines[0] and done.stdout == ""
