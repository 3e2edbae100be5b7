"""What test_grpc.py's hazard test draws, measured: ``.venv/bin/python tests/_grpc_lottery.py N``.

Each round runs the four inherited-channel cases at once, as the test does (with and without
``GRPC_ENABLE_FORK_SUPPORT``, master idle and busy, 6 workers each), against a server of its
own on 127.0.0.1, and prints the outcomes; the last line is the tally per case and how many
rounds had all 12 default-settings workers succeed. No postfork is imported anywhere.
"""

from __future__ import annotations

import collections
import subprocess
import sys
from typing import Counter, Dict, Tuple

import test_grpc as t

CASES = {(False, False): "default, idle master", (False, True): "default, busy master",
         (True, False): "fork support, idle master", (True, True): "fork support, busy master"}


def main(rounds: int) -> None:
    server = subprocess.Popen([sys.executable, str(t.HERE / "_grpc_peer.py")],
                              stdout=subprocess.PIPE, text=True, env=t.environment(False))
    assert server.stdout is not None
    port = int(server.stdout.readline())
    tally: Dict[Tuple[bool, bool], Counter[str]] = {key: collections.Counter() for key in CASES}
    all_twelve = 0
    try:
        for i in range(rounds):
            runs = {key: t.start("inherited", port, key[1], 6, key[0]) for key in CASES}
            seen = {key: [t.kind(c, run["master"]) for c in run["children"]]
                    for key, run in ((key, t.result(p)) for key, p in runs.items())}
            for key, kinds in seen.items():
                tally[key].update(kinds)
            all_twelve += (seen[False, False] + seen[False, True]).count("own connection") == 12
            print(i + 1, {CASES[key]: dict(collections.Counter(k)) for key, k in seen.items()},
                  flush=True)
    finally:
        server.kill()
        server.wait()
    print({CASES[key]: dict(c) for key, c in tally.items()},
          f"rounds with all 12 default-settings workers succeeding: {all_twelve} of {rounds}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
