"""A master *thread* inside SQLite at the instant of a fork can hang the child: SQLite's own
mutexes (its allocator's, its pcache's) are copied held, and nothing in the child releases them.
postfork cannot fix that (the mutexes are SQLite's, static, and not reachable from Python): keep
SQLite work out of master threads that run while the server forks. The soak app uses SQLite in
the master's main thread only, at import.

    python soak/sqlite_in_master_thread.py [FORKS]

forks FORKS children (default 100) while a thread keeps SQLite busy, lets each child run one
SQLite query with a 5 s limit, and prints how many hung. A child that hangs is killed.
Measured here: 16 of 100 hung; gdb on one shows it waiting in ``pthread_mutex_lock`` called from
``sqlite3Malloc`` (SQLite's allocator mutex) at its first ``sqlite3.connect``.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import threading
import time


def busy(stop: threading.Event) -> None:
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    while not stop.is_set():
        # sqlite3 releases the GIL inside SQLite: the main thread forks while this one is in it
        conn.executemany("INSERT OR REPLACE INTO t VALUES (?, ?)", ((i, "x" * 200) for i in range(2000)))
        conn.execute("SELECT count(*), max(length(v)) FROM t").fetchone()
        conn.commit()


def child() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE c (v TEXT)")
    conn.executemany("INSERT INTO c VALUES (?)", (("y" * 200,) for _ in range(200)))
    conn.execute("SELECT count(*) FROM c").fetchone()
    os._exit(0)


def main() -> int:
    forks = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    stop = threading.Event()
    thread = threading.Thread(target=busy, args=(stop,), daemon=True)
    thread.start()
    time.sleep(0.2)
    hung = 0
    for _ in range(forks):
        pid = os.fork()
        if pid == 0:
            child()
        deadline = time.monotonic() + 5
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                hung += 1
                break
            time.sleep(0.005)
    stop.set()
    print(f"{hung} of {forks} children hung in SQLite (a master thread was inside SQLite at fork)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
