"""Run postfork's benchmarks and print the results table.

    python benchmarks/run.py                      # every row
    python benchmarks/run.py hotpath reset        # chosen rows
    python benchmarks/run.py --json               # machine-readable
    python benchmarks/run.py --write-readme       # refresh the table in benchmarks/README.md
    python benchmarks/run.py --quick hotpath      # tiny counts: checks the scripts run, not speed

Rows: hotpath (1), reset (2), boot (3), throughput (4), import (5), guard (6), families (7). Progress goes to
stderr, the table (or JSON) to stdout. Every ratio is measured side by side in one run: this
machine is shared and noisy, so absolute figures move between runs and ratios much less.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _table import Row, as_json, markdown, progress, write_readme  # noqa: E402

ROWS = ("hotpath", "reset", "boot", "throughput", "import", "guard", "families")


# row -> the module that measures it (each has run(quick) -> rows)
_MODULES = {"hotpath": "hotpath", "reset": "reset_cost", "boot": "boot",
            "throughput": "throughput", "import": "import_memory", "guard": "guard_row",
            "families": "families"}


def _runner(name: str) -> Callable[[bool], List[Row]]:
    # Imported on demand so that one row's missing dependency does not stop the others.
    return importlib.import_module(_MODULES[name]).run  # type: ignore[no-any-return]


def _meta(started: float, quick: bool) -> Dict[str, Any]:
    import postfork

    versions: Dict[str, str] = {}
    for lib in ("redis", "psycopg", "sqlalchemy", "pymongo", "gunicorn"):
        try:
            versions[lib] = __import__(lib).__version__
        except Exception:  # noqa: BLE001 - a missing library only leaves its version out
            pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "postfork": postfork.__version__,
        "libraries": versions,
        "quick": quick,
        "duration_s": round(time.monotonic() - started, 1),
    }


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="*", choices=[[], *ROWS], metavar="ROW",
                        help=f"rows to run ({', '.join(ROWS)}); default: all")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--write-readme", action="store_true",
                        help="also write the table into benchmarks/README.md between its markers")
    parser.add_argument("--quick", action="store_true",
                        help="tiny counts: proves the scripts run; the figures mean nothing")
    args = parser.parse_args(argv)
    chosen = args.rows or list(ROWS)
    started = time.monotonic()
    rows: List[Row] = []
    errors: List[str] = []
    for name in chosen:
        progress(f"== {name}")
        try:
            rows.extend(_runner(name)(args.quick))
        except Exception as exc:  # noqa: BLE001 - one broken row must not hide the others
            import traceback

            traceback.print_exc()
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    meta = _meta(started, args.quick)
    meta["errors"] = errors
    if args.json:
        print(as_json(rows, meta))
    else:
        print(markdown(rows))
        for err in errors:
            print(f"ERROR in row {err}")
    if args.write_readme:
        header = (f"Measured {meta['date']} on {meta['machine']}, CPython {meta['python']}; "
                  f"{', '.join(f'{k} {v}' for k, v in meta['libraries'].items())}. "
                  f"Run took {meta['duration_s']} s.")
        write_readme(HERE / "README.md", rows, header)
        progress("wrote benchmarks/README.md")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
