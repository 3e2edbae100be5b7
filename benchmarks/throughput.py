"""Row 4: throughput of the benchmark app under gunicorn (``--preload``, 4 sync workers), each
request one redis GET and one PostgreSQL SELECT 1, driven by wrk on loopback.

Three variants in alternating rounds (A/B/C, B/C/A, ...): postfork-registered clients, a
hand-written ``post_fork`` that rebuilds them, and unmanaged shared clients (whose wrong answers
and errors are counted beside its speed). Each run is a fresh server, a 1 s warm-up, then the
measured load; medians over rounds.
"""

from __future__ import annotations

from typing import Any, Dict, List

import _load
from _gunicorn import Server
from _table import Row, median, progress

COMMAND = "python benchmarks/run.py throughput"
VARIANTS = ("postfork", "handwritten", "unmanaged")


def measure(rounds: int, seconds: float, warmup: float) -> Dict[str, List[Dict[str, Any]]]:
    out: Dict[str, List[Dict[str, Any]]] = {v: [] for v in VARIANTS}
    for i in range(rounds):
        order = VARIANTS[i % 3:] + VARIANTS[:i % 3]
        for variant in order:
            with Server(variant) as server:
                server.wait_all_workers()
                if warmup:
                    _load.drive(server.url, warmup)
                result = _load.drive(server.url, seconds)
            out[variant].append(result.as_dict())
            progress(f"throughput: round {i + 1}/{rounds} {variant}: {result.rps:,.0f} req/s, "
                     f"{result.wrong} wrong, {result.errors} errors, {result.timeouts} timeouts")
    return out


def run(quick: bool = False) -> List[Row]:
    rounds, seconds, warmup = (1, 1.0, 0.0) if quick else (5, 5.0, 1.0)
    tool = _load.tool()
    if tool != "wrk":
        progress(f"throughput: {_load.WRK_HINT}; falling back to the Python load generator")
    res = measure(rounds, seconds, warmup)
    rps = {v: [r["rps"] for r in res[v]] for v in VARIANTS}
    med = {v: median(rps[v]) for v in VARIANTS}
    pairs_hand = [p / h for p, h in zip(rps["postfork"], rps["handwritten"])]
    pairs_unm = [p / u for p, u in zip(rps["postfork"], rps["unmanaged"])]
    wrong = {v: sum(r["wrong"] for r in res[v]) for v in VARIANTS}
    errors = {v: sum(r["errors"] + r["timeouts"] for r in res[v]) for v in VARIANTS}
    total = {v: sum(r["ok"] + r["wrong"] + r["errors"] for r in res[v]) for v in VARIANTS}
    fallback = "" if tool == "wrk" else f" FALLBACK load generator (Python threads), {_load.WRK_HINT};"
    note = (f"{tool}, 8 connections, {rounds} rounds × {seconds:g} s per variant after a "
            f"{warmup:g} s warm-up, fresh server each run;{fallback} req/s are medians, the "
            f"ratio is the median of the per-round ratios")
    r_hand, r_unm = median(pairs_hand), median(pairs_unm)
    return [
        Row("4a", "throughput, redis GET + SELECT 1 per request: postfork vs hand-written `post_fork`",
            f"{med['handwritten']:,.0f} req/s, {wrong['handwritten']} wrong",
            f"{med['postfork']:,.0f} req/s, {wrong['postfork']} wrong", r_hand, "≥ 0.98×",
            r_hand >= 0.98 and wrong["postfork"] == 0, COMMAND, note,
            {"runs": res, "paired_ratios": pairs_hand}),
        Row("4b", "throughput: postfork vs unmanaged shared clients (wrong answers beside speed)",
            f"{med['unmanaged']:,.0f} req/s, **{wrong['unmanaged']} wrong answers**, "
            f"{errors['unmanaged']} errors/timeouts of {total['unmanaged']:,}",
            f"{med['postfork']:,.0f} req/s, {wrong['postfork']} wrong, {errors['postfork']} errors "
            f"of {total['postfork']:,}", r_unm, "0 wrong", wrong["postfork"] == 0 and errors["postfork"] == 0,
            COMMAND, "unmanaged: the workers share the master's redis connection and pool; a wrong "
            "answer is a GET that returned another process's value",
            {"paired_ratios": pairs_unm}),
    ]
