"""``make demo``: the example app under gunicorn --preload with 4 workers, first WITHOUT
postfork (the hazard: workers share the master's connections, read each other's replies),
then with it (each worker its own connections, 0 wrong answers).

Needs no server: the app's embedded default is SQLite (through SQLAlchemy), a journal file and
an ``http.client`` keep-alive connection to a small HTTP backend that the demo itself runs on
127.0.0.1 (``/echo?n=N`` answers N and names the connection it came on). With ``REDIS_URL``,
``POSTGRES_DSN`` or ``MONGO_URL`` set, those clients join in. For each run the demo starts
gunicorn on a free 127.0.0.1 port, sends requests from a few threads, prints one row per
worker (its pid, the identity of each connection it used, requests served, wrong answers,
errors), the postfork lines from gunicorn's log, and stops gunicorn, also on Ctrl-C or an
error. gunicorn's logs and the app's files stay in ``.demo/`` for a look afterwards.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set

EXAMPLES = Path(__file__).resolve().parent
WORK = EXAMPLES.parent / ".demo"
WORKERS = 4
REQUESTS = 400
UNMANAGED_REQUESTS = 120
THREADS = 4
NETWORK = {"redis": "REDIS_URL", "postgres": "POSTGRES_DSN", "mongo": "MONGO_URL"}
IDENTITY = {"sqlite": "SQLite connection", "backend": "backend connection", "redis": "redis CLIENT ID",
            "postgres": "pg backend pid", "mongo": "mongo peer port"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str, timeout: float = 10.0) -> Dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {path} answered {resp.status}: {body[:200]!r}")
        return json.loads(body)  # type: ignore[no-any-return]
    finally:
        conn.close()


class Backend:
    """The HTTP backend the app keeps one keep-alive connection to: ``/echo?n=N`` answers
    ``{"n": N, "connection": <the client's port as seen here>}``."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlsplit

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                query = parse_qs(urlsplit(self.path).query)
                time.sleep(0.001)  # a backend takes a moment: replies overlap, as in production
                body = json.dumps({"n": int(query.get("n", ["0"])[0]),
                                   "connection": self.client_address[1]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Gunicorn:
    """gunicorn in a session of its own (Ctrl-C reaches only the demo, which stops it)."""

    def __init__(self, port: int, log: Path, data: Path, backend: str, unmanaged: bool) -> None:
        self.port = port
        self.log = log
        env = dict(os.environ, POSTFORK_EXAMPLE_DIR=str(data), PYTHONUNBUFFERED="1",
                   BACKEND_URL=backend, POSTFORK_DEMO_UNMANAGED="1" if unmanaged else "0")
        argv = [sys.executable, "-m", "gunicorn", "-c", str(EXAMPLES / "gunicorn.conf.py"),
                "--preload", "-w", str(WORKERS), "-b", f"127.0.0.1:{port}", "--no-control-socket"]
        self._out = open(log, "wb")
        self.proc = subprocess.Popen(argv, cwd=EXAMPLES, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with code {self.proc.returncode}:\n{self.tail()}")
            try:
                return get(self.port, "/master", timeout=2)
            except (OSError, http.client.HTTPException):
                time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not answer within {timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)  # graceful: workers run worker_exit
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # anything left of its group
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(5)
            self._out.close()


def hammer(port: int, requests: int) -> List[Dict[str, Any]]:
    """``requests`` requests from THREADS threads, with a progress line."""
    done = 0
    lock = threading.Lock()
    tty = sys.stdout.isatty()

    def one(n: int) -> Dict[str, Any]:
        nonlocal done
        reply = get(port, f"/?n={n}")
        with lock:
            done += 1
            if tty:
                print(f"\r  sending {requests} requests from {THREADS} threads: {done}/{requests}",
                      end="", flush=True)
            elif done % 100 == 0:
                print(f"  {done}/{requests} requests answered", flush=True)
        return reply

    pool = ThreadPoolExecutor(THREADS)
    try:
        replies = list(pool.map(one, range(1, requests + 1)))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # on Ctrl-C: drop what is still queued
    if tty:
        print()
    return replies


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  " + "  ".join(str(c).rjust(w) if k and i else str(c).ljust(w)
                                      for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(master: Dict[str, Any], replies: List[Dict[str, Any]], journal: Path) -> bool:
    clients = [c for c in IDENTITY if c in master]
    served: Counter[int] = Counter(r["pid"] for r in replies)
    wrong: Counter[int] = Counter()
    errors: Counter[int] = Counter()
    ids: Dict[int, Dict[str, Set[Any]]] = defaultdict(lambda: defaultdict(set))
    for r in replies:
        for name, c in r["clients"].items():
            if c.get("error"):
                errors[r["pid"]] += 1
                continue
            ids[r["pid"]][name].add(c["id"])
            if c["answer"] is not None and c["answer"] != r["n"]:
                wrong[r["pid"]] += 1
    lines_by_pid = Counter(int(line.split()[0]) for line in journal.read_text().splitlines()
                           if line.strip())

    rows: List[List[str]] = [["worker pid", *(IDENTITY[c] for c in clients), "requests",
                              "wrong answers", "errors", "journal lines"]]
    rows.append([f"{master['pid']} (master)", *(str(master[c]) for c in clients), "-", "-", "-", "-"])
    for pid in sorted(served):
        rows.append([str(pid), *(", ".join(map(str, sorted(ids[pid][c], key=str))) for c in clients),
                     str(served[pid]), str(wrong[pid]), str(errors[pid]), str(lines_by_pid[pid])])
    print(table(rows))

    problems = []
    for c in clients:
        owners: Dict[Any, int] = {}
        for pid in served:
            for ident in ids[pid][c]:
                if ident == master[c]:
                    problems.append(f"worker {pid} used the master's {IDENTITY[c]} {ident}")
                elif owners.setdefault(ident, pid) != pid:
                    problems.append(f"workers {owners[ident]} and {pid} shared {IDENTITY[c]} {ident}")
    if sum(wrong.values()):
        problems.append(f"{sum(wrong.values())} wrong answers (another process's reply)")
    if sum(errors.values()):
        problems.append(f"{sum(errors.values())} client errors (a reply cut or stolen)")
    if any(lines_by_pid[pid] != served[pid] for pid in served):
        problems.append("the journal lost or duplicated lines")
    print()
    if problems:
        print("  PROBLEMS:\n    " + "\n    ".join(dict.fromkeys(problems)))
    else:
        print(f"  {len(served)} workers served {len(replies)} requests, each over connections of "
              f"its own (none is the master's), 0 wrong answers, every journal line intact.")
    return not problems


def run(title: str, backend: Backend, unmanaged: bool, requests: int) -> bool:
    """One run of the app under gunicorn; True when every worker used its own connections."""
    folder = WORK / ("unmanaged" if unmanaged else "managed")
    (folder / "data").mkdir(parents=True)
    port = free_port()
    print(f"\n== {title}: http://127.0.0.1:{port}/")
    server: Optional[Gunicorn] = None
    try:
        server = Gunicorn(port, folder / "gunicorn.log", folder / "data", backend.url, unmanaged)
        started = time.monotonic()
        master = server.wait_ready()
        print(f"  up in {time.monotonic() - started:.1f} s; the master (pid {master['pid']}) used "
              f"every client once, as a preloaded app does")
        replies = hammer(port, requests)
        print()
        ok = report(master, replies, folder / "data" / "journal.log")
        log = server.log.read_text(errors="replace")
    finally:
        if server is not None:
            server.stop()
    lines = [line for line in log.splitlines() if "postfork" in line or "ForkSafety" in line]
    if lines:
        print(f"\n  from gunicorn's log (.demo/{folder.name}/gunicorn.log):")
        for line in lines[:8]:
            print("   ", line if len(line) < 240 else line[:237] + "...")
        if len(lines) > 8:
            print(f"    ... and {len(lines) - 8} more")
    return ok


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    using = ["SQLite through SQLAlchemy", "an http.client keep-alive connection to a local backend",
             "a journal file"] + [f"{name} ({os.environ[env]})" for name, env in NETWORK.items()
                                  if os.environ.get(env)]
    print(f"postfork demo: examples/app.py under gunicorn --preload, {WORKERS} sync workers")
    print(f"  clients built in the master at import: {', '.join(using)}")
    if not any(os.environ.get(env) for env in NETWORK.values()):
        print("  (set REDIS_URL, POSTGRES_DSN or MONGO_URL to add those clients)")
    backend = Backend()
    try:
        hazard = not run("1. WITHOUT postfork (the clients are not registered)", backend,
                         unmanaged=True, requests=UNMANAGED_REQUESTS)
        ok = run("2. WITH postfork (each client registered; gunicorn -c python:postfork.integrations.gunicorn)",
                 backend, unmanaged=False, requests=REQUESTS)
    except KeyboardInterrupt:
        print("\n  interrupted")
        return 130
    finally:
        backend.stop()
    print()
    print("  without postfork: " + ("the workers shared the master's connections (above)." if hazard
                                    else "no hazard showed this time (it is a race)."))
    print("  with postfork:    " + ("every worker had its own connections, 0 wrong answers." if ok
                                    else "PROBLEMS (above)."))
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as exc:
        print(f"\n  demo failed: {exc}", file=sys.stderr)
        sys.exit(1)
