"""``make soak``: the example-style soak app under gunicorn and uWSGI (workers recycled every 25
requests), Celery (pool processes recycled every 5 tasks), with the app's own Redis and
PostgreSQL restarted under load, and with workers killed (-9) under load.

Prints one table of figures to stdout (``--json`` for JSON), progress to stderr; exits 1 if a
scenario found a problem. ``--scale 0.1`` (or ``--short``) is the short form that
``tests/test_soak.py`` also runs; ``--only NAME`` runs some scenarios.

Services: Redis at ``REDIS_URL`` (database 11, the soak's own) and PostgreSQL at
``POSTGRES_DSN`` (a table of its own per scenario); the restarts scenario starts its own.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _soak import RSS_TOLERANCE_KIB, run_scenario, scenarios  # noqa: E402
from _services import workdir  # noqa: E402

COLUMNS = [
    ("scenario", lambda f: f["scenario"]),
    ("requests", lambda f: f["requests"]),
    ("answered", lambda f: f["answered"]),
    ("wrong", lambda f: f["wrong"]),
    ("failed", lambda f: f["failed"]),
    ("client err", lambda f: f["client_errors"]),
    ("kills", lambda f: f["kills"]),
    ("worker pids", lambda f: f["worker_pids"]),
    ("journal lines", lambda f: f"{f['journal']['lines']} ({f['journal']['bad']} bad)"),
    ("master fds", lambda f: f"{f.get('fds_start')}->{f.get('fds_end')}"),
    ("master RSS KiB", lambda f: f"{f.get('rss_kib_start')}->{f.get('rss_kib_end')}"),
    ("own conns", lambda f: f"{f['connections_before']}->{f.get('connections_after')}"),
    ("s", lambda f: f["seconds"]),
    ("problems", lambda f: len(f["problems"])),
]


def table(results: List[Dict[str, Any]]) -> str:
    rows = [[name for name, _ in COLUMNS]]
    for f in results:
        cells = []
        for _, cell in COLUMNS:
            try:
                cells.append(str(cell(f)))
            except KeyError:
                cells.append("-")
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"master RSS tolerance: +{RSS_TOLERANCE_KIB} KiB; master fds: equal; own conns: "
             "[redis CLIENT LIST by client name, pg_stat_activity by application_name] before start "
             "-> after shutdown"]
    for f in results:
        extra = {k: f[k] for k in ("errors_by_client", "requests_during_outages", "respawned_answered", "workers_survived", "workers_recovered",
                                   "master_checks", "master_checks_failed", "master_after_restart")
                 if k in f}
        if any(extra.values()):
            notes.append(f"{f['scenario']}: {extra}")
        for problem in f["problems"]:
            notes.append(f"PROBLEM {f['scenario']}: {problem}")
    return "\n".join(lines + [""] + notes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale", type=float, default=1.0, help="1 = full, 0.1 = short")
    parser.add_argument("--short", action="store_true", help="the same as --scale 0.1")
    parser.add_argument("--only", action="append", help="run this scenario (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    chosen = [s for s in scenarios(0.1 if args.short else args.scale)
              if not args.only or s.name in args.only]
    root = workdir()
    started = time.monotonic()
    results = []
    for sc in chosen:
        try:
            results.append(run_scenario(sc, root))
        except Exception as exc:
            results.append({"scenario": sc.name, "problems": [f"{type(exc).__name__}: {exc}"]})
    total = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps({"seconds": total, "scenarios": results}, indent=2, default=str))
    else:
        print(table(results))
        print(f"\n{len(results)} scenarios in {total} s; files in {root}")
    return 1 if any(f["problems"] for f in results) else 0


if __name__ == "__main__":
    sys.exit(main())
