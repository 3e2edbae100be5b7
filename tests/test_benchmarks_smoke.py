"""The benchmarks still run: the cheap rows with tiny counts (``--quick``), as a subprocess.

Speed is never asserted here (that is what ``benchmarks/`` reports); only that every row of
the chosen groups came out with figures and that the JSON is well formed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_cheap_benchmark_rows_run(redis_url: str, postgres_dsn: str) -> None:
    env = dict(os.environ, REDIS_URL=redis_url, POSTGRES_DSN=postgres_dsn)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--json",
         "hotpath", "reset", "import"],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["meta"]["errors"] == []
    keys = [row["key"] for row in out["rows"]]
    assert {"1a", "1b", "1c", "1d", "2-1", "2-mixed", "5a", "5b", "5c", "5d"} <= set(keys), keys
    for row in out["rows"]:
        assert row["command"].startswith("python benchmarks/run.py "), row
        assert any(ch.isdigit() for ch in row["postfork"]) or row["key"] == "5c", row
        if row["ratio"] is not None:
            assert row["ratio"] > 0, row
