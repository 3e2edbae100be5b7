"""Start the benchmark app under gunicorn (``--preload``, sync workers), wait until every worker
answers, read the workers' memory, stop everything.

Shared by the boot, throughput and memory rows so that all three measure the same server.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

HERE = Path(__file__).resolve().parent
VARIANTS = ("postfork", "handwritten", "unmanaged")

__all__ = ["Server", "VARIANTS", "free_port", "proc_status_kib"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status_kib(pid: int, field: str) -> Optional[int]:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``) or ``smaps_rollup`` (``Pss``)."""
    for name in ("status", "smaps_rollup"):
        try:
            with open(f"/proc/{pid}/{name}") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1])
        except OSError:
            return None
    return None


class Server:
    """One gunicorn master with ``workers`` workers serving ``bench_app`` in ``variant``."""

    def __init__(self, variant: str, workers: int = 4, log: Optional[Path] = None,
                 seed: Optional[int] = None, env: Optional[Dict[str, str]] = None,
                 name: Optional[str] = None) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        tmp = Path(os.environ.get("TMPDIR", "/tmp"))
        self.log = log or tmp / f"postfork-bench-{name or variant}.log"  # gunicorn's output
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.started = 0.0
        self.worker_pids: Set[int] = set()
        self.seed = seed  # seeds the master's random module (see bench_app)
        self.extra_env = env or {}

    def start(self) -> None:
        env = dict(os.environ, POSTFORK_BENCH_VARIANT=self.variant, PYTHONUNBUFFERED="1")
        env.pop("POSTFORK_STRICT", None)
        env.update(self.extra_env)
        if self.seed is not None:
            env["POSTFORK_BENCH_SEED"] = str(self.seed)
        cmd = [
            sys.executable, "-m", "gunicorn", "bench_app:application",
            "-c", str(HERE / "gunicorn" / f"{self.variant}.conf.py"),
            "--pythonpath", str(HERE),
            "--preload", "--workers", str(self.workers), "--worker-class", "sync",
            "--bind", f"127.0.0.1:{self.port}", "--log-level", "warning",
            "--timeout", "20", "--graceful-timeout", "2",
        ]
        self.started = time.perf_counter()
        with open(self.log, "wb") as logf:
            # A session of its own: stop() can end the master and any straggling worker by
            # that one process-group id.
            self.proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def request(self, query: str = "", timeout: float = 5.0) -> Tuple[int, int]:
        """(status, worker pid) of one GET; raises OSError when nobody answers."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", "/" + (f"?{query}" if query else ""))
            resp = conn.getresponse()
            return resp.status, int(resp.read() or 0)
        finally:
            conn.close()

    def wait_all_workers(self, timeout: float = 60.0, probes: int = 6) -> float:
        """Seconds from :meth:`start` until ``workers`` distinct worker pids have answered.

        ``probes`` threads poll at once; each request sleeps 20 ms in the worker after its
        redis GET and SELECT, so a busy worker cannot take every probe and each worker gets
        one in turn."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        seen: Set[int] = set()
        done = threading.Event()
        finished: List[float] = []
        lock = threading.Lock()

        def poll() -> None:
            while not done.is_set() and time.monotonic() < deadline:
                try:
                    _, pid = self.request("sleep=0.02", timeout=5)
                except (OSError, http.client.HTTPException, ValueError):
                    time.sleep(0.005)
                    continue
                with lock:
                    seen.add(pid)
                    if len(seen) >= self.workers and not done.is_set():
                        finished.append(time.perf_counter())
                        done.set()

        threads = [threading.Thread(target=poll, daemon=True) for _ in range(probes)]
        for t in threads:
            t.start()
        while not done.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                done.set()
                for t in threads:
                    t.join(10)
                raise RuntimeError(
                    f"gunicorn ({self.variant}) did not bring up {self.workers} workers "
                    f"(seen {sorted(seen)}, exit code {self.proc.poll()}); see {self.log}"
                )
        for t in threads:
            t.join(10)
        self.worker_pids = seen
        return finished[0] - self.started

    def memory(self) -> Dict[int, Dict[str, Optional[int]]]:
        """VmRSS and Pss (KiB) of every worker that answered."""
        return {pid: {"VmRSS": proc_status_kib(pid, "VmRSS"), "Pss": proc_status_kib(pid, "Pss")}
                for pid in sorted(self.worker_pids)}

    def stop(self) -> None:
        """Quick shutdown (SIGINT: workers get SIGQUIT), then SIGKILL of the whole process
        group if anything is left after 10 s. Always reaps the master."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers (a worker hung in a shared socket)
        except ProcessLookupError:
            pass
        proc.wait(10)
        self.proc = None

    def __enter__(self) -> "Server":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
