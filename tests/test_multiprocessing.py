"""multiprocessing's fork Pool: every pool process is reset with no integration at all.

The pool processes are forked children, so postfork's ``os.register_at_fork`` hook resets
them. Each scenario runs in a fresh interpreter, so that nothing else the test session
imported (an integration, the guard) is in play.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = r'''
import json, multiprocessing, os, sys, time
import redis
import postfork

url = sys.argv[1]
# single_connection_client: redis-py does no pid check for it, the child would use the
# parent's connection as it is.
managed = postfork.register(redis.Redis.from_url(url, single_connection_client=True))
unmanaged = redis.Redis.from_url(url, single_connection_client=True, socket_timeout=5)
parent = {"pid": os.getpid(), "managed": managed.client_id(), "unmanaged": unmanaged.client_id()}

def managed_id(_):
    time.sleep(0.2)  # keep this process busy so that the others take the next items
    return os.getpid(), managed.client_id()

def unmanaged_id(_):
    return os.getpid(), unmanaged.client_id()

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(3) as pool:
        workers = pool.map(managed_id, range(6), chunksize=1)
    # the hazard, with one child only: it talks over the parent's own connection
    with ctx.Pool(1) as pool:
        hazard = pool.map(unmanaged_id, range(2))
    print(json.dumps({
        "parent": parent,
        "after": {"managed": managed.client_id(), "unmanaged": unmanaged.client_id()},
        "workers": workers,
        "hazard": hazard,
        "integrations": sorted(m for m in sys.modules if m.startswith("postfork.integrations")),
    }))
'''


def test_fork_pool_workers_reset_without_integration(redis_url) -> None:
    pytest.importorskip("redis")
    out = subprocess.run([sys.executable, "-c", SCRIPT, redis_url], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    parent = result["parent"]

    assert result["integrations"] == []
    by_pid = {}
    for pid, client_id in result["workers"]:
        by_pid.setdefault(pid, set()).add(client_id)
    assert len(by_pid) >= 2 and parent["pid"] not in by_pid
    ids = [i for s in by_pid.values() for i in s]
    assert len(ids) == len(by_pid) and len(set(ids)) == len(ids)  # one of its own each
    assert parent["managed"] not in ids
    # the parent's connection is untouched by its children
    assert result["after"]["managed"] == parent["managed"]

    # and the teeth: the unmanaged client in a pool process is the parent's connection
    assert {client_id for _, client_id in result["hazard"]} == {parent["unmanaged"]}
    assert result["after"]["unmanaged"] == parent["unmanaged"]
