"""Row 1: the hot path. What does resolving a ``postfork.local`` client cost per access?

Micro-benchmarks with :mod:`timeit`, interleaved (every statement once per repetition, so a
burst of noise from the other core hits all of them alike), min over repetitions, minus the
cost of the empty loop. The baseline is one ``os.getpid()`` call: the check redis-py's pool makes
on every command, i.e. what a "check the pid on every access" design would pay.

Then a real round trip against Redis: GETs through a ``local`` redis client against a plain one,
in alternating rounds A/B/A/B, median throughput of each.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import timeit
from pathlib import Path
from typing import Any, Dict, List

from _table import Row, fmt_ns, median, progress

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
COMMAND = "python benchmarks/run.py hotpath"

# name -> statement; the names are what the table shows.
STATEMENTS = {
    "empty loop": "pass",
    "os.getpid()": "os.getpid()",
    "direct attribute (holder.client)": "holder.client",
    "local.get()": "lc.get()",
    "local()": "lc()",
    "plain client.ping (bound method)": "client.ping",
    "local.ping (forwarded)": "lc.ping",
}


class _Holder:
    """Where an application keeps a client it built itself: a plain attribute."""

    client: Any = None


class _StandIn:
    """Used only where redis-py is not installed (other interpreters than the venv's)."""

    def ping(self) -> bool:
        return True


def micro(repeat: int, number: int) -> Dict[str, float]:
    """Seconds per operation of each statement, min over ``repeat`` interleaved repetitions."""
    import postfork

    try:
        import redis

        client: Any = redis.Redis.from_url(REDIS_URL)  # never connected: attribute access only
    except ImportError:
        client = _StandIn()
    lc = postfork.local(lambda: client, name="bench-hotpath")
    lc.get()  # built: the hot path is the built case
    holder = _Holder()
    holder.client = client
    env = {"os": os, "lc": lc, "client": client, "holder": holder}
    timers = {name: timeit.Timer(stmt, globals=env) for name, stmt in STATEMENTS.items()}
    best: Dict[str, float] = {name: float("inf") for name in timers}
    for _ in range(repeat):
        for name, timer in timers.items():
            best[name] = min(best[name], timer.timeit(number) / number)
    postfork.unregister(lc)
    return best


def round_trip(rounds: int, gets: int) -> Dict[str, List[float]]:
    """GETs per second, per round, through a plain client and through ``local``; alternating."""
    import redis

    import postfork

    plain = redis.Redis.from_url(REDIS_URL)
    lc = postfork.local(lambda: redis.Redis.from_url(REDIS_URL), name="bench-roundtrip")
    key = f"postfork:bench:hotpath:{os.getpid()}"
    plain.set(key, b"x" * 64)
    plain.get(key)
    lc.get(key)  # both connected before timing

    def plain_round() -> float:
        get = plain.get
        t0 = time.perf_counter()
        for _ in range(gets):
            get(key)
        return gets / (time.perf_counter() - t0)

    def local_round() -> float:
        # As application code writes it: ``cache.get(key)`` (Local.get with arguments is the
        # instance's own get), resolving the instance on every call.
        t0 = time.perf_counter()
        for _ in range(gets):
            lc.get(key)
        return gets / (time.perf_counter() - t0)

    out: Dict[str, List[float]] = {"plain": [], "local": []}
    for i in range(rounds):
        # A/B then B/A: neither side always runs first after a pause.
        order = [("plain", plain_round), ("local", local_round)]
        for name, fn in order if i % 2 == 0 else reversed(order):
            out[name].append(fn())
    plain.delete(key)
    plain.close()
    lc().close()
    postfork.unregister(lc)
    return out


def other_pythons(repeat: int, number: int) -> Dict[str, Dict[str, float]]:
    """The same micro-benchmark under the other CPythons found on this machine (pyenv), for
    the forwarding row: its cost is CPython's ``__getattr__`` fallback, which changed in 3.12."""
    found: Dict[str, Dict[str, float]] = {}
    root = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
    repo = Path(__file__).resolve().parent.parent
    for exe in sorted(root.glob("3.1[2-9]*/bin/python")):
        code = (f"import json, sys; sys.path[:0] = [{str(repo)!r}, {str(Path(__file__).parent)!r}]; "
                f"import hotpath; print(json.dumps(hotpath.micro({repeat}, {number})))")
        try:
            out = subprocess.run([str(exe), "-c", code], capture_output=True, text=True, timeout=120,
                                 check=True).stdout
            found[exe.parent.parent.name] = json.loads(out)
        except (subprocess.SubprocessError, ValueError, OSError) as exc:
            progress(f"hotpath: {exe} skipped ({exc})")
    return found


def _net(t: Dict[str, float]) -> Dict[str, float]:
    return {name: max(0.0, v - t["empty loop"]) for name, v in t.items()}


def _forwarding_extra(net: Dict[str, float]) -> float:
    return max(0.0, net["local.ping (forwarded)"] - net["plain client.ping (bound method)"])


def run(quick: bool = False) -> List[Row]:
    repeat, number = (3, 2_000) if quick else (15, 200_000)
    rounds, gets = (2, 50) if quick else (40, 1_000)
    progress(f"hotpath: timeit, {repeat} interleaved repetitions of {number:,} loops")
    t = micro(repeat, number)
    net = _net(t)
    getpid = net["os.getpid()"]
    extra_fwd = _forwarding_extra(net)
    others = {} if quick else other_pythons(repeat, number // 4)
    elsewhere = "; ".join(
        f"CPython {v}: extra {fmt_ns(_forwarding_extra(_net(o)))} vs `os.getpid()` "
        f"{fmt_ns(_net(o)['os.getpid()'])}" for v, o in others.items()
    )
    data = {"seconds_per_op_raw": t, "seconds_per_op_net": net, "repeat": repeat, "number": number,
            "other_pythons_raw": others}
    rows = [
        Row("1a", "resolve `local.get()` vs one `os.getpid()`", fmt_ns(getpid),
            fmt_ns(net["local.get()"]), net["local.get()"] / getpid, "≤ 1.0×",
            net["local.get()"] <= getpid, COMMAND,
            f"ns/op net of the empty loop ({fmt_ns(t['empty loop'])}), min of {repeat} interleaved "
            f"repetitions of {number:,}; a direct attribute read costs "
            f"{fmt_ns(net['direct attribute (holder.client)'])}",
            data),
        Row("1b", "resolve `local()` vs one `os.getpid()`", fmt_ns(getpid), fmt_ns(net["local()"]),
            net["local()"] / getpid, "≤ 1.0×", net["local()"] <= getpid, COMMAND),
        Row("1c", "attribute forwarding `local.ping`, extra over `client.ping`, vs one `os.getpid()`",
            fmt_ns(getpid), fmt_ns(extra_fwd), extra_fwd / getpid, "≤ 1.0×", extra_fwd <= getpid,
            COMMAND, f"`client.ping` {fmt_ns(net['plain client.ping (bound method)'])}, "
            f"`local.ping` {fmt_ns(net['local.ping (forwarded)'])}"
            + (f"; same benchmark on {elsewhere}" if elsewhere else "")),
    ]
    progress(f"hotpath: Redis GET round trips, {rounds} alternating rounds of {gets:,}")
    rt = round_trip(rounds, gets)
    pairs = [b / a for a, b in zip(rt["plain"], rt["local"])]
    plain, loc, ratio = median(rt["plain"]), median(rt["local"]), median(pairs)
    rows.append(
        Row("1d", "Redis GET round trip: `local.get(k)` vs plain `client.get(k)` (throughput)",
            f"{plain:,.0f} GET/s", f"{loc:,.0f} GET/s", ratio, "≥ 0.98×", ratio >= 0.98, COMMAND,
            f"{rounds} alternating rounds of {gets:,} GETs (A/B, B/A, ...), one connection each; "
            f"throughputs are medians, the ratio is the median of the {rounds} paired ratios; "
            f"from 1b alone the expected ratio is {1 / (1 + net['local()'] * plain):.4f}",
            {"gets_per_second": rt, "paired_ratios": pairs})
    )
    return rows
