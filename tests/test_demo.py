"""``make demo`` as a newcomer runs it: no server needed; the hazard first, then the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_shows_the_hazard_then_the_fix() -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "POSTGRES_DSN", "MONGO_URL") and not k.startswith("POSTFORK_")}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    without, _, with_ = done.stdout.partition("== 2. WITH postfork")
    # SQLite's connection is in-process: unmanaged, every worker queries the master's own
    assert "used the master's SQLite connection" in without, without
    assert "ForkSafetyWarning" in without  # and the guard named each unmanaged client
    assert "PROBLEMS" not in with_ and "0 wrong answers, every journal line intact" in with_, with_
    assert "failed" not in with_.replace("0 failed", "")
