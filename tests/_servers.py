"""Start a real server (gunicorn, uWSGI, a Celery worker) as a subprocess, talk to it, stop it.

Every server runs in a session of its own on a free 127.0.0.1 port, its output goes to a log
file that failure messages quote, and :meth:`Server.stop` always ends the whole process group
(a polite signal first, SIGKILL after a timeout), so no worker outlives a test.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent


def with_db(url: str, db: int) -> str:
    """``url`` (redis://...) on Redis database ``db``: a test's own, never 0."""
    return urlunparse(urlparse(url)._replace(path=f"/{db}"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One server process group, its log, and (for HTTP servers) its port."""

    def __init__(self, argv: Sequence[str], log: Path, *, env: Optional[Mapping[str, str]] = None,
                 port: Optional[int] = None, cwd: Path = EXAMPLES,
                 stop_signal: int = signal.SIGTERM) -> None:
        self.argv = list(argv)
        self.log_path = log
        self.port = port
        self.stop_signal = stop_signal
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(self.argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                                     stdout=self._log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def describe(self) -> str:
        return f"$ {' '.join(self.argv)}\n--- log ({self.log_path}) ---\n{self.log}"

    def wait_for(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}) before {what}\n"
                                     + self.describe())
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n" + self.describe())

    def wait_http(self, timeout: float = 20.0) -> None:
        def answers() -> bool:
            try:
                self.get("/master", timeout=2)
                return True
            except (OSError, http.client.HTTPException):
                return False

        self.wait_for(answers, timeout, f"http://127.0.0.1:{self.port}/ to answer")

    def get(self, path: str, timeout: float = 10.0) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise AssertionError(f"GET {path}: {resp.status} {body[:200]!r}\n" + self.describe())
            return json.loads(body)
        finally:
            conn.close()

    def hammer(self, count: int, threads: int = 6) -> List[Dict[str, Any]]:
        """``count`` requests ``GET /?n=i`` from ``threads`` threads; every answer, in order."""
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(lambda i: self.get(f"/?n={i}"), range(count)))

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        """Stop politely, then kill the whole group; return the server's exit code."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(self.stop_signal)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # workers left behind, if any
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            self._log_file.close()
        return self.proc.returncode


def records(path: Path) -> List[Dict[str, Any]]:
    """The JSON lines a test app appended to ``path`` (none yet: an empty list)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


def wait_for_records(server: Server, path: Path, role: str, count: int,
                     timeout: float = 20.0) -> List[Dict[str, Any]]:
    """Wait until ``path`` holds ``count`` records of ``role``; return them."""
    server.wait_for(lambda: len([r for r in records(path) if r["role"] == role]) >= count,
                    timeout, f"{count} {role!r} records in {path}")
    return [r for r in records(path) if r["role"] == role]


def wrong_answers(responses: Sequence[Dict[str, Any]]) -> List[str]:
    """Every answer that is not the number the request asked for, described."""
    wrong = []
    for r in responses:
        for name, client in r["clients"].items():
            if client["answer"] is not None and client["answer"] != r["n"]:
                wrong.append(f"pid {r['pid']} {name}: asked {r['n']}, got {client['answer']}")
    return wrong


def identities(responses: Sequence[Dict[str, Any]], client: str) -> Dict[int, Set[Any]]:
    """worker pid -> the identities of ``client``'s connection it reported."""
    seen: Dict[int, Set[Any]] = {}
    for r in responses:
        seen.setdefault(r["pid"], set()).add(r["clients"][client]["id"])
    return seen


def fresh_interpreter(script: str) -> Any:
    """Run ``script`` in a new interpreter with no POSTFORK_GUARD/POSTFORK_STRICT set, require a
    clean exit with nothing on stderr, and return the one JSON document it printed."""
    env = {k: v for k, v in os.environ.items() if k not in ("POSTFORK_GUARD", "POSTFORK_STRICT")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=30, env=env)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return json.loads(out.stdout)  # and nothing else on stdout
