"""Row 3: worker boot. gunicorn ``--preload``, 4 sync workers: seconds from starting gunicorn
until all 4 workers have answered a request (each a redis GET and a SELECT 1, so each worker's
first use of its clients is inside the measure), with postfork's ``post_fork`` against a
hand-written one that rebuilds the same clients. Alternating runs, medians.
"""

from __future__ import annotations

from typing import Dict, List

from _gunicorn import Server
from _table import Row, fmt_ms, median, progress

COMMAND = "python benchmarks/run.py boot"
PAIR = ("handwritten", "postfork")


def measure(runs: int) -> Dict[str, List[float]]:
    out: Dict[str, List[float]] = {v: [] for v in PAIR}
    for i in range(runs):
        order = PAIR if i % 2 == 0 else tuple(reversed(PAIR))
        for variant in order:
            with Server(variant) as server:
                out[variant].append(server.wait_all_workers())
            progress(f"boot: run {i + 1}/{runs} {variant}: {out[variant][-1] * 1e3:.0f} ms")
    return out


def run(quick: bool = False) -> List[Row]:
    runs = 1 if quick else 9
    times = measure(runs)
    hand, pf = median(times["handwritten"]), median(times["postfork"])
    pairs = [b / a for a, b in zip(times["handwritten"], times["postfork"])]
    ratio = median(pairs)
    return [Row(
        "3", "worker boot: gunicorn `--preload`, 4 workers, start → all 4 answered",
        fmt_ms(hand, 0) + " (hand-written `post_fork`)", fmt_ms(pf, 0), ratio, "≤ 1.05×",
        ratio <= 1.05, COMMAND,
        f"{runs} alternating runs each, medians; ratio = median of the paired ratios; each "
        f"probe is a full request (redis GET + SELECT 1), so every worker's first use is inside",
        {"seconds": times, "paired_ratios": pairs},
    )]
