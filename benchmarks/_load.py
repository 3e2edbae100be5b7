"""Drive HTTP load at a URL for a few seconds: wrk when installed, else a small Python fallback.

Both count responses by status: 200 (right answers), 409 and 422 (a wrong redis or PostgreSQL
answer: another process's reply), other statuses and socket errors/timeouts. wrk is Debian's package
(``apt-get update && apt-get install -y wrk``); the fallback is a thread pool of blocking
``http.client`` requests, much slower than wrk, so its figures are comparable with each other
(ratios) but not with wrk's.
"""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, Optional
from urllib.parse import urlparse

__all__ = ["LoadResult", "drive", "tool", "WRK_HINT"]

HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE / "wrk_counts.lua"
WRK_HINT = "wrk is not installed: apt-get update && apt-get install -y wrk (Debian's package)"


class LoadResult:
    """What one load run measured."""

    def __init__(self, tool: str, seconds: float, ok: int, wrong_redis: int, wrong_pg: int,
                 errors: int, timeouts: int, rps: float,
                 latency_p50_ms: Optional[float] = None) -> None:
        self.tool = tool
        self.seconds = seconds
        self.ok = ok
        self.wrong_redis = wrong_redis
        self.wrong_pg = wrong_pg
        self.wrong = wrong_redis + wrong_pg
        self.errors = errors  # 5xx and other non-200/409 statuses, connect/read/write errors
        self.timeouts = timeouts
        self.rps = rps  # all completed responses per second, as the tool reports it
        self.latency_p50_ms = latency_p50_ms

    @property
    def good_rps(self) -> float:
        """Right answers per second: what the users of the app actually got."""
        return self.ok / self.seconds if self.seconds else 0.0

    def as_dict(self) -> Dict[str, object]:
        return dict(vars(self), good_rps=self.good_rps)


def tool() -> str:
    return "wrk" if shutil.which("wrk") else "python"


def drive(url: str, seconds: float, connections: int = 8) -> LoadResult:
    return _wrk(url, seconds, connections) if tool() == "wrk" else _python(url, seconds, connections)


def _wrk(url: str, seconds: float, connections: int) -> LoadResult:
    # One wrk thread: the two cores are needed by the four gunicorn workers.
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "2s", "--latency",
           "-s", str(WRK_SCRIPT), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    counts = re.search(r"POSTFORK_COUNTS ok=(\d+) wrong=(\d+) wrongpg=(\d+) other=(\d+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if counts is None or rps is None:
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    ok, wrong, wrong_pg, other = (int(x) for x in counts.groups())
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    sock_errors = sum(int(x) for x in sock.groups()[:3]) if sock else 0
    timeouts = int(sock.group(4)) if sock else 0
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    latency = None
    if p50:
        latency = float(p50.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[p50.group(2)]
    return LoadResult("wrk", seconds, ok, wrong, wrong_pg, other + sock_errors, timeouts,
                      float(rps.group(1)), latency)


def _python(url: str, seconds: float, connections: int) -> LoadResult:
    u = urlparse(url)
    counts = {"ok": 0, "wrong": 0, "wrongpg": 0, "errors": 0, "timeouts": 0}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        mine = dict.fromkeys(counts, 0)
        while time.monotonic() < stop:
            conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=2)
            try:
                conn.request("GET", u.path or "/")
                resp = conn.getresponse()
                resp.read()
                key = {200: "ok", 409: "wrong", 422: "wrongpg"}.get(resp.status, "errors")
            except TimeoutError:
                key = "timeouts"
            except (OSError, http.client.HTTPException):
                key = "errors"
            finally:
                conn.close()
            mine[key] += 1
        with lock:
            for k, v in mine.items():
                counts[k] += v

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 10)
    elapsed = time.monotonic() - t0
    done = counts["ok"] + counts["wrong"] + counts["wrongpg"] + counts["errors"]
    return LoadResult("python", elapsed, counts["ok"], counts["wrong"], counts["wrongpg"],
                      counts["errors"], counts["timeouts"], done / elapsed)
