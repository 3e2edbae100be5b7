"""Row 5: ``import postfork`` in a fresh interpreter (time, RSS), what it imports, and the RSS
of gunicorn workers with and without postfork.

Each import measure is a new ``python -c`` process (so nothing is cached in the interpreter),
alternating with a baseline process that measures the same way but imports nothing; medians.
``-X importtime`` gives CPython's own account of the same import.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any, Dict, List, Tuple

from _gunicorn import Server
from _table import Row, fmt_ms, median, progress

COMMAND = "python benchmarks/run.py import"
# Client libraries and servers postfork must never import by itself.
FORBIDDEN = ("redis", "pymongo", "bson", "sqlalchemy", "psycopg", "psycopg2", "psycopg_pool",
             "gunicorn", "celery", "kombu", "uwsgi", "uwsgidecorators", "mockupdb")

_PROBE = r"""
import sys, time
{pre}
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
before_mods = set(sys.modules)
r0 = rss()
c0 = time.process_time()
t0 = time.perf_counter()
{stmt}
t1 = time.perf_counter()
c1 = time.process_time()
r1 = rss()
new = sorted(set(sys.modules) - before_mods)
forbidden = sorted(m for m in sys.modules if m.split(".")[0] in {forbidden!r})
print(repr((t1 - t0, c1 - c0, r1 - r0, new, forbidden)))
"""


# As an installed package runs: with its bytecode cached (pip compiles at install). The
# environment of this machine sets PYTHONDONTWRITEBYTECODE, which would make every run compile.
_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _probe(stmt: str, pre: str = "") -> Tuple[float, float, int, List[str], List[str]]:
    code = _PROBE.format(stmt=stmt, pre=pre, forbidden=FORBIDDEN)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60, env=_ENV).stdout
    return eval(out)  # noqa: S307 - our own probe's repr of a tuple of numbers and strings


def _importtime() -> Dict[str, Any]:
    """CPython's ``-X importtime`` account of ``import postfork``: its cumulative time and the
    modules imported under it, each (name, self µs, cumulative µs)."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", "import postfork"],
                         capture_output=True, text=True, check=True, timeout=60, env=_ENV).stderr
    rows = []
    for line in err.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((m.group(4), int(m.group(1)), int(m.group(2)), len(m.group(3))))
    end = max(i for i, r in enumerate(rows) if r[0] == "postfork")
    start = end
    while start > 0 and rows[start - 1][3] > rows[end][3]:  # children are printed first, deeper
        start -= 1
    return {"cumulative_us": rows[end][2], "modules": [r[:3] for r in rows[start:end + 1]]}


def imports(runs: int) -> Dict[str, Any]:
    """Alternating fresh interpreters: nothing, ``import postfork``, and ``import postfork``
    after the standard modules it needs that every supported client library and server imports
    anyway (``typing``, ``threading``, ``weakref``: redis-py, SQLAlchemy, PyMongo, psycopg and
    gunicorn all do), i.e. postfork's marginal cost in a real application."""
    _probe("import postfork")  # writes the bytecode caches if the sources changed
    cases = {"baseline": ("pass", ""), "postfork": ("import postfork", ""),
             "after_typing": ("import postfork", "import typing, threading, weakref")}
    out: Dict[str, Any] = {f"{c}_{k}": [] for c in cases for k in ("s", "cpu_s", "rss_kib")}
    for _ in range(runs):
        for case, (stmt, pre) in cases.items():
            t, cpu, r, new, forbidden = _probe(stmt, pre)
            out[f"{case}_s"].append(t)
            out[f"{case}_cpu_s"].append(cpu)
            out[f"{case}_rss_kib"].append(r)
            if case == "postfork":
                out["new_modules"], out["forbidden"] = new, forbidden
    itime = [_importtime() for _ in range(max(3, runs // 4))]
    out["importtime_us"] = [i["cumulative_us"] for i in itime]
    out["importtime_modules"] = itime[-1]["modules"]
    return out


def worker_memory(runs: int) -> Dict[str, List[Dict[int, Dict[str, Any]]]]:
    out: Dict[str, List[Dict[int, Dict[str, Any]]]] = {"handwritten": [], "postfork": []}
    for i in range(runs):
        for variant in ("handwritten", "postfork") if i % 2 == 0 else ("postfork", "handwritten"):
            with Server(variant) as server:
                server.wait_all_workers()
                out[variant].append(server.memory())
    return out


def run(quick: bool = False) -> List[Row]:
    runs = 3 if quick else 31
    progress(f"import: {runs} fresh interpreters each, alternating with a baseline")
    d = imports(runs)
    # CPU time of the importing process: on this shared 2-core machine the wall clock also
    # counts the time other processes held the CPU. Wall-clock medians are in the note.
    t = median(d["postfork_cpu_s"]) - median(d["baseline_cpu_s"])
    t_typed = median(d["after_typing_cpu_s"]) - median(d["baseline_cpu_s"])
    wall = median(d["postfork_s"]) - median(d["baseline_s"])
    wall_typed = median(d["after_typing_s"]) - median(d["baseline_s"])
    rss = (median(d["postfork_rss_kib"]) - median(d["baseline_rss_kib"])) / 1024
    rss_typed = (median(d["after_typing_rss_kib"]) - median(d["baseline_rss_kib"])) / 1024
    itime = median(d["importtime_us"]) / 1e6
    heavy = sorted(d["importtime_modules"], key=lambda m: -m[1])[:5]
    rows = [
        Row("5a", "`import postfork` in a fresh interpreter: CPU time", "0 (nothing imported)",
            fmt_ms(t), None, "≤ 5 ms", t <= 0.005, COMMAND,
            f"median of {runs} processes minus the baseline's ({fmt_ms(median(d['baseline_cpu_s']), 3)}); "
            f"wall clock {fmt_ms(wall)} (fastest {fmt_ms(min(d['postfork_s']))}); "
            f"`-X importtime` says {fmt_ms(itime)} cumulative; largest self times: "
            + ", ".join(f"{name} {us / 1e3:.2f} ms" for name, us, _c in heavy)
            + f"; with `typing`, `threading` and `weakref` already imported (redis-py, "
            f"SQLAlchemy, PyMongo, psycopg and gunicorn all import them): {fmt_ms(t_typed)} CPU, "
            f"{fmt_ms(wall_typed)} wall",
            d),
        Row("5b", "`import postfork`: RSS growth", "0 (nothing imported)", f"{rss:.2f} MiB", None,
            "≤ 1 MiB", rss <= 1.0, COMMAND,
            f"VmRSS before/after the import, median of {runs}; with `typing`, `threading` and "
            f"`weakref` already imported {rss_typed:.2f} MiB; modules it adds: "
            + ", ".join(d["new_modules"])),
        Row("5c", "`import postfork` imports no client library or server", "—",
            "none" if not d["forbidden"] else ", ".join(d["forbidden"]), None,
            "none of " + "/".join(FORBIDDEN[:6]) + "/…", not d["forbidden"], COMMAND,
            "checked in `sys.modules` after the import: " + ", ".join(FORBIDDEN)),
    ]
    mruns = 1 if quick else 3
    progress(f"import: gunicorn worker memory, {mruns} runs of each variant")
    mem = worker_memory(mruns)

    def per_worker(variant: str, field: str) -> float:
        return median(v[field] for run_ in mem[variant] for v in run_.values() if v[field]) / 1024

    hand, pf = per_worker("handwritten", "VmRSS"), per_worker("postfork", "VmRSS")
    hand_pss, pf_pss = per_worker("handwritten", "Pss"), per_worker("postfork", "Pss")
    rows.append(Row(
        "5d", "RSS per gunicorn worker (after boot + first requests), postfork vs hand-written",
        f"{hand:.1f} MiB", f"{pf:.1f} MiB", pf / hand, "Δ ≤ 1 MiB", pf - hand <= 1.0, COMMAND,
        f"VmRSS median over {mruns}×4 workers (Δ {pf - hand:+.2f} MiB); Pss (shared pages split "
        f"among the processes sharing them) {hand_pss:.1f} → {pf_pss:.1f} MiB; the postfork "
        f"variant also runs the guard in warn mode (the gunicorn integration's default)",
        {"runs": json.loads(json.dumps(mem))},
    ))
    return rows
