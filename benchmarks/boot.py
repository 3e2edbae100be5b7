"""Row 3: worker boot. gunicorn ``--preload``, 4 sync workers: seconds from starting gunicorn
until all 4 workers have answered a request (each a redis GET and a SELECT, so each worker's
first use of its clients is inside the measure), with postfork's ``post_fork`` against a
hand-written one that rebuilds the same clients. Alternating runs, medians.
"""

from __future__ import annotations

from typing import Dict, List

from _gunicorn import Server
from _table import Row, fmt_ms, median, progress

COMMAND = "python benchmarks/run.py boot"
# name -> (server variant, extra environment). "postfork-guard-off" shows how much of
# postfork's figure is the guard, which the gunicorn integration switches on in warn mode.
CASES = {
    "handwritten": ("handwritten", {}),
    "postfork": ("postfork", {}),
    "postfork-guard-off": ("postfork", {"POSTFORK_GUARD": "off"}),
}


def measure(runs: int) -> Dict[str, List[float]]:
    names = list(CASES)
    out: Dict[str, List[float]] = {name: [] for name in names}
    for i in range(runs):
        for name in names[i % 3:] + names[:i % 3]:
            variant, env = CASES[name]
            with Server(variant, seed=i, env=env, name=name) as server:
                out[name].append(server.wait_all_workers())
            progress(f"boot: run {i + 1}/{runs} {name}: {out[name][-1] * 1e3:.0f} ms")
    return out


def run(quick: bool = False) -> List[Row]:
    runs = 1 if quick else 15
    times = measure(runs)
    hand, pf = median(times["handwritten"]), median(times["postfork"])
    pairs = [b / a for a, b in zip(times["handwritten"], times["postfork"])]
    ratio = median(pairs)
    off = median(b / a for a, b in zip(times["handwritten"], times["postfork-guard-off"]))
    return [Row(
        "3", "worker boot: gunicorn `--preload`, 4 workers, start → all 4 answered",
        fmt_ms(hand, 0) + " (hand-written `post_fork`)", fmt_ms(pf, 0), ratio, "≤ 1.05×",
        ratio <= 1.05, COMMAND,
        f"{runs} runs each in rotating order, medians; ratio = median of the paired ratios; both runs "
        f"of a pair give gunicorn's master the same random seed, so its random 0-100 ms pauses "
        f"between worker spawns are the same on both sides; each probe is a full request (redis "
        f"GET + SELECT), so every worker's first use is inside; with the guard off "
        f"(`POSTFORK_GUARD=off`) the ratio is {off:.3f}×",
        {"seconds": times, "paired_ratios": pairs},
    )]
