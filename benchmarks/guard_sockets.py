"""The guard's cost on ``socket.socket`` construction, which it tracks like a client.

Run by ``guard_row.py`` in a process of its own (switching the guard on patches the class).
Two measures, each interleaved off/warn over repetitions, min per mode: building and closing
a socket, and a loopback connection accepted by a listening socket, which is what a gunicorn
sync worker does once per request (``accept()`` builds a ``socket.socket``).

    python benchmarks/guard_sockets.py [--number N] [--repeat R]     # prints JSON
"""

from __future__ import annotations

import _socket
import argparse
import json
import socket
import sys
import timeit
from typing import Dict, List


def measure(number: int, repeat: int) -> Dict[str, Dict[str, float]]:
    import postfork

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1024)
    address = server.getsockname()

    def build() -> None:
        socket.socket().close()

    def accept() -> None:
        # The client end is the C type, which the guard does not see (in production it is the
        # load generator's): only the worker's side, accept(), is tracked.
        conn = _socket.socket()
        conn.connect(address)
        peer, _ = server.accept()
        peer.close()
        conn.close()

    best: Dict[str, Dict[str, float]] = {"build": {}, "accept": {}}
    for rep in range(repeat):
        modes: List[str] = ["off", "warn"] if rep % 2 == 0 else ["warn", "off"]
        for mode in modes:
            postfork.guard(mode)
            for name, fn in (("build", build), ("accept", accept)):
                t = timeit.timeit(fn, number=number) / number
                best[name][mode] = min(best[name].get(mode, float("inf")), t)
    postfork.guard("off")
    server.close()
    return best


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.number, args.repeat)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
