"""Guard overhead: building redis clients with the guard on vs off (target ≤ 1.05×).

    python benchmarks/guard_overhead.py             # one line: the ratio and both costs
    python benchmarks/guard_overhead.py --json      # the figures, for machines
    python benchmarks/guard_overhead.py --clients 1000 --repeat 9

The guard wraps only construction (``__init__`` of each tracked class): it records the pid, the
creation site and the owner. Each repetition builds ``--clients`` ``redis.Redis`` objects with
the guard off and then on (the order alternates between repetitions, so drift hits both alike),
in one process; the clients are dropped and garbage collected outside the timed region. Time is
this process's CPU time (``time.process_time``): the machine is shared, and wall time mostly
measured the other processes. The ratio is on / off of the best (minimum) batch of each, the
usual estimator of a cost under noise; the ratio of the medians is printed beside it. No
connection is made: ``Redis()`` connects lazily, so this is construction alone.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from typing import Any, Callable, Dict, List

COMMAND = "python benchmarks/guard_overhead.py"
TARGET = 1.05


def _redis() -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=6379)


def _pool() -> Any:
    import redis

    return redis.ConnectionPool(host="127.0.0.1", port=6379)


def _socket() -> Any:
    import socket

    return socket.socket()


def _build(n: int, make: Callable[[], Any] = _redis) -> float:
    clients: List[Any] = []
    started = time.process_time()
    for _ in range(n):
        clients.append(make())
    elapsed = time.process_time() - started
    del clients
    gc.collect()
    return elapsed


def _interleaved(clients: int, repeat: int, make: Callable[[], Any]) -> Dict[str, List[float]]:
    import postfork

    times: Dict[str, List[float]] = {"off": [], "warn": []}
    for mode in ("warn", "off"):  # patch the classes once and warm both paths, untimed
        postfork.guard(mode)
        _build(50, make)
    for rep in range(repeat):
        for mode in (("off", "warn") if rep % 2 == 0 else ("warn", "off")):
            postfork.guard(mode)
            times[mode].append(_build(clients, make))
    return times


def _added_us(times: Dict[str, List[float]], clients: int) -> float:
    return (min(times["warn"]) - min(times["off"])) / clients * 1e6


def measure(clients: int = 1000, repeat: int = 9) -> Dict[str, Any]:
    """CPU seconds per batch with the guard off and on, interleaved; best and median ratios.
    Also the guard's absolute cost per tracked construction, on cheap objects where it shows."""
    from postfork import _guard

    previous = _guard._mode
    try:
        times = _interleaved(clients, repeat, _redis)
        pool = _interleaved(clients * 2, repeat, _pool)
        sock = _interleaved(clients * 2, repeat, _socket)
    finally:
        _guard._set_mode(previous)
    off, on = min(times["off"]), min(times["warn"])
    return {
        "clients": clients,
        "repeat": repeat,
        "off_us_per_client": off / clients * 1e6,
        "on_us_per_client": on / clients * 1e6,
        "ratio": on / off,
        "median_ratio": statistics.median(times["warn"]) / statistics.median(times["off"]),
        "target": TARGET,
        "met": on / off <= TARGET,
        "added_us_per_connection_pool": _added_us(pool, clients * 2),
        "added_us_per_socket": _added_us(sock, clients * 2),
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
        print(f"guard overhead: building {args.clients} redis.Redis, best of {args.repeat} (CPU time): "
              f"off {result['off_us_per_client']:.1f} µs/client, on {result['on_us_per_client']:.1f} "
              f"µs/client, ratio {result['ratio']:.3f}× (medians {result['median_ratio']:.3f}×; "
              f"target ≤ {TARGET}×: {'met' if result['met'] else 'MISSED'}); the guard adds "
              f"{result['added_us_per_connection_pool']:.1f} µs per redis.ConnectionPool and "
              f"{result['added_us_per_socket']:.1f} µs per socket.socket built")
    return 0


if __name__ == "__main__":
    sys.exit(main())
