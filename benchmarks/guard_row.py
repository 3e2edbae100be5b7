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
    return [Row(
        "6", f"guard: building {clients:,} `redis.Redis`, guard `warn` vs off",
        f"{d['off_us_per_client']:.1f} µs/client", f"{d['on_us_per_client']:.1f} µs/client",
        d["ratio"], f"≤ {d['target']}×", d["ratio"] <= d["target"],
        f"python benchmarks/guard_overhead.py --clients {clients} --repeat {repeat}",
        f"{repeat} interleaved batches each in one process, as guard_overhead.py measures them"
        + (f" (ratio of medians {d['median_ratio']:.3f}×)" if "median_ratio" in d else "")
        + "; the guard adds nothing to client calls, only to construction", d,
    )]
