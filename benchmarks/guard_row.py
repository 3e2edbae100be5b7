"""Row 6: the guard's cost on client construction, from ``benchmarks/guard_overhead.py``.

That script (the guard's own benchmark) runs in a process of its own: switching the guard on
patches the client classes, which must not leak into the rows measured in the runner's process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import List

from _table import Row, progress

HERE = Path(__file__).resolve().parent


def run(quick: bool = False) -> List[Row]:
    clients, repeat = (100, 3) if quick else (1000, 15)
    script = HERE / "guard_overhead.py"
    if not script.exists():
        raise RuntimeError(f"{script} is missing (written with the guard)")
    progress(f"guard: {repeat} interleaved batches of {clients:,} redis.Redis, guard off vs warn")
    out = subprocess.run([sys.executable, str(script), "--json", "--clients", str(clients),
                          "--repeat", str(repeat)], capture_output=True, text=True, check=True,
                         timeout=600).stdout
    d = json.loads(out)
    progress("guard: socket.socket construction and accept(), guard off vs warn")
    number, srepeat = (100, 2) if quick else (2000, 10)
    sock = json.loads(subprocess.run(
        [sys.executable, str(HERE / "guard_sockets.py"), "--number", str(number), "--repeat",
         str(srepeat)], capture_output=True, text=True, check=True, timeout=600).stdout)
    build, acc = sock["build"], sock["accept"]
    sock_cmd = f"python benchmarks/guard_sockets.py --number {number} --repeat {srepeat}"
    return [Row(
        "6", f"guard: building {clients:,} `redis.Redis`, guard `warn` vs off",
        f"{d['off_us_per_client']:.1f} µs/client", f"{d['on_us_per_client']:.1f} µs/client",
        d["ratio"], f"≤ {d['target']}×", d["ratio"] <= d["target"],
        f"python benchmarks/guard_overhead.py --clients {clients} --repeat {repeat}",
        f"{repeat} interleaved batches each in one process, as guard_overhead.py measures them"
        + (f" (ratio of medians {d['median_ratio']:.3f}×)" if "median_ratio" in d else "")
        + "; the guard adds nothing to client calls, only to construction", d,
    ), Row(
        "6b", "guard: `socket.socket()` + `close()` (a tracked family), guard `warn` vs off",
        f"{build['off'] * 1e6:.1f} µs", f"{build['warn'] * 1e6:.1f} µs",
        build["warn"] / build["off"], "≤ 1.10×", build["warn"] / build["off"] <= 1.10, sock_cmd,
        f"min of {srepeat} interleaved repetitions of {number:,}", sock,
    ), Row(
        "6c", "guard: a loopback connection accepted (what a gunicorn sync worker does per request)",
        f"{acc['off'] * 1e6:.1f} µs", f"{acc['warn'] * 1e6:.1f} µs", acc["warn"] / acc["off"],
        "—", None, sock_cmd,
        "connect (an untracked C socket, the load generator's end) + `accept()` + close both; "
        "`accept()` builds a `socket.socket` in the accepting process, as a gunicorn sync worker "
        "does for every request (rows 4a/4c)",
    )]
