"""Guard overhead: building redis clients with the guard on vs off (target ≤ 1.05×).

    python benchmarks/guard_overhead.py             # one line: the ratio and both costs
    python benchmarks/guard_overhead.py --json      # the figures, for machines
    python benchmarks/guard_overhead.py --clients 1000 --repeat 9

The guard wraps only construction (``__init__`` of each tracked class): it records the pid, the
creation site and the owner. Each repetition builds ``--clients`` ``redis.Redis`` objects with
the guard off and then on (the order alternates between repetitions, so drift and noise from the
other core hit both alike), in one process; the clients are dropped and garbage collected
outside the timed region. The figure is the median over repetitions of each; the ratio is
on / off. No connection is made: ``Redis()`` connects lazily, so this is construction alone.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from typing import Any, Dict, List

COMMAND = "python benchmarks/guard_overhead.py"
TARGET = 1.05


def _build(n: int) -> float:
    import redis

    clients: List[Any] = []
    started = time.perf_counter()
    for _ in range(n):
        clients.append(redis.Redis(host="127.0.0.1", port=6379))
    elapsed = time.perf_counter() - started
    del clients
    gc.collect()
    return elapsed


def measure(clients: int = 1000, repeat: int = 9) -> Dict[str, Any]:
    """Seconds per batch with the guard off and on, interleaved; the medians and their ratio."""
    import postfork
    from postfork import _guard

    previous = _guard._mode
    times: Dict[str, List[float]] = {"off": [], "warn": []}
    try:
        postfork.guard("warn")  # patch the classes once, outside the timings
        _build(50)
        postfork.guard("off")
        _build(50)  # warm both paths
        for rep in range(repeat):
            order = ("off", "warn") if rep % 2 == 0 else ("warn", "off")
            for mode in order:
                postfork.guard(mode)
                times[mode].append(_build(clients))
    finally:
        _guard._set_mode(previous)
    off, on = statistics.median(times["off"]), statistics.median(times["warn"])
    return {
        "clients": clients,
        "repeat": repeat,
        "off_us_per_client": off / clients * 1e6,
        "on_us_per_client": on / clients * 1e6,
        "ratio": on / off,
        "target": TARGET,
        "met": on / off <= TARGET,
        "off_batches_s": times["off"],
        "on_batches_s": times["warn"],
        "command": COMMAND,
    }


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="clients built per batch (1000)")
    parser.add_argument("--repeat", type=int, default=9, help="interleaved repetitions (9)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    result = measure(args.clients, args.repeat)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"guard overhead: building {args.clients} redis.Redis, median of {args.repeat}: "
              f"off {result['off_us_per_client']:.1f} µs/client, on {result['on_us_per_client']:.1f} "
              f"µs/client, ratio {result['ratio']:.3f}× (target ≤ {TARGET}×: "
              f"{'met' if result['met'] else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
