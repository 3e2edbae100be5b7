"""Row 4: throughput of the benchmark app under gunicorn (``--preload``, 4 sync workers), each
request one redis GET and one PostgreSQL ``SELECT %s::int`` (SELECT 1 carrying the number its
reply must show), driven by wrk on loopback.

Three variants: postfork-registered clients (as the gunicorn integration runs them, guard on in
warn mode, and again with the guard off), a hand-written ``post_fork`` that rebuilds them, and
unmanaged shared clients (whose wrong answers and errors are counted beside its speed). The
servers run at once (idle sync workers cost nothing) and the load alternates between them
in short runs, A/B/C/D, B/C/D/A, ..., so that the noise of this shared machine falls on all
alike; each server is warmed up first. Medians over rounds; the ratio is the median of the
per-round ratios.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Dict, List

import _load
from _gunicorn import Server
from _table import Row, median, progress

COMMAND = "python benchmarks/run.py throughput"
# name -> (server variant, extra environment). "postfork-guard-off" separates the guard, which
# the gunicorn integration switches on in warn mode, from the rest of postfork.
CASES = {
    "postfork": ("postfork", {}),
    "handwritten": ("handwritten", {}),
    "unmanaged": ("unmanaged", {}),
    "postfork-guard-off": ("postfork", {"POSTFORK_GUARD": "off"}),
}
VARIANTS = tuple(CASES)


def measure(rounds: int, seconds: float, warmup: float) -> Dict[str, List[Dict[str, Any]]]:
    """Per variant, the load runs in order; the warm-up run is stored under ``"<variant>-warmup"``
    (the unmanaged variant gives most of its wrong answers there, in its first seconds)."""
    out: Dict[str, List[Dict[str, Any]]] = {v: [] for v in VARIANTS}
    with ExitStack() as stack:
        servers = {name: stack.enter_context(Server(variant, env=env, name=name))
                   for name, (variant, env) in CASES.items()}
        for variant, server in servers.items():
            server.wait_all_workers()
            if warmup:
                result = _load.drive(server.url, warmup)
                out[f"{variant}-warmup"] = [result.as_dict()]
                progress(f"throughput: warm-up {variant}: {result.rps:,.0f} req/s, "
                         f"{result.wrong} wrong, {result.errors} errors, {result.timeouts} timeouts")
        for i in range(rounds):
            n = len(VARIANTS)
            for variant in VARIANTS[i % n:] + VARIANTS[:i % n]:
                result = _load.drive(servers[variant].url, seconds)
                out[variant].append(result.as_dict())
                progress(f"throughput: round {i + 1}/{rounds} {variant}: {result.rps:,.0f} req/s, "
                         f"{result.wrong} wrong, {result.errors} errors, {result.timeouts} timeouts")
    return out


def run(quick: bool = False) -> List[Row]:
    rounds, seconds, warmup = (1, 1.0, 0.0) if quick else (9, 3.0, 2.0)
    tool = _load.tool()
    if tool != "wrk":
        progress(f"throughput: {_load.WRK_HINT}; falling back to the Python load generator")
    res = measure(rounds, seconds, warmup)
    rps = {v: [r["rps"] for r in res[v]] for v in VARIANTS}
    med = {v: median(rps[v]) for v in VARIANTS}
    pairs_hand = [p / h for p, h in zip(rps["postfork"], rps["handwritten"])]
    pairs_unm = [p / u for p, u in zip(rps["postfork"], rps["unmanaged"])]
    # Answers are counted over each server's whole life under load, warm-up included.
    every = {v: res[v] + res.get(f"{v}-warmup", []) for v in VARIANTS}
    wrong = {v: sum(r["wrong"] for r in every[v]) for v in VARIANTS}
    errors = {v: sum(r["errors"] + r["timeouts"] for r in every[v]) for v in VARIANTS}
    total = {v: sum(r["ok"] + r["wrong"] + r["errors"] for r in every[v]) for v in VARIANTS}
    early = sum(r["wrong"] for r in res.get("unmanaged-warmup", []))
    w_redis = sum(r["wrong_redis"] for r in every["unmanaged"])
    w_pg = sum(r["wrong_pg"] for r in every["unmanaged"])
    fallback = "" if tool == "wrk" else f" FALLBACK load generator (Python threads), {_load.WRK_HINT};"
    note = (f"{tool}, 8 connections; the four servers up at once, {rounds} rounds × "
            f"{seconds:g} s per variant in rotating order after a {warmup:g} s warm-up each;"
            f"{fallback} req/s are medians, the ratio is the median of the per-round ratios")
    pairs_off = [p / h for p, h in zip(rps["postfork-guard-off"], rps["handwritten"])]
    r_hand, r_unm, r_off = median(pairs_hand), median(pairs_unm), median(pairs_off)
    return [
        Row("4a", "throughput, redis GET + PostgreSQL SELECT per request: postfork vs hand-written `post_fork`",
            f"{med['handwritten']:,.0f} req/s, {wrong['handwritten']} wrong",
            f"{med['postfork']:,.0f} req/s, {wrong['postfork']} wrong", r_hand, "≥ 0.98×",
            r_hand >= 0.98 and wrong["postfork"] == 0, COMMAND, note,
            {"runs": res, "paired_ratios": pairs_hand}),
        Row("4b", "throughput: postfork vs unmanaged shared clients (wrong answers beside speed)",
            f"{med['unmanaged']:,.0f} req/s, **{wrong['unmanaged']} wrong answers**, "
            f"{errors['unmanaged']} errors/timeouts of {total['unmanaged']:,}",
            f"{med['postfork']:,.0f} req/s, {wrong['postfork']} wrong, {errors['postfork']} errors "
            f"of {total['postfork']:,}", r_unm, "0 wrong", wrong["postfork"] == 0 and errors["postfork"] == 0,
            COMMAND, "unmanaged: the workers share the master's redis connection and PostgreSQL "
            "pool; a wrong answer is a reply that belonged to another process's request: "
            f"{w_redis} from redis, {w_pg} from PostgreSQL, {early} of them in the first "
            f"{warmup:g} s (the warm-up); answers counted over the warm-up and all rounds",
            {"paired_ratios": pairs_unm}),
        Row("4c", "throughput: postfork with the guard off (`POSTFORK_GUARD=off`) vs hand-written",
            f"{med['handwritten']:,.0f} req/s, {wrong['handwritten']} wrong",
            f"{med['postfork-guard-off']:,.0f} req/s, {wrong['postfork-guard-off']} wrong", r_off,
            "≥ 0.98×", r_off >= 0.98 and wrong["postfork-guard-off"] == 0, COMMAND,
            "the same servers and rounds as 4a: the difference between 4a and 4c is the guard's "
            "cost per request (its wrapper of `socket.socket`, built by every `accept()`: row 6c)",
            {"paired_ratios": pairs_off}),
    ]
