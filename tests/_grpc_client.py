"""The grpc side of tests/test_grpc.py, run as a subprocess: grpc reads GRPC_ENABLE_FORK_SUPPORT
when it is imported, and its native threads must never be in the forking test process.

``python tests/_grpc_client.py SCENARIO PORT BUSY CHILDREN`` prints one JSON document:

- ``inherited``: no postfork at all. The master makes an RPC, then forks CHILDREN workers that
  each make one RPC over the inherited channel (BUSY=1: a master thread makes RPCs the whole
  time). Each child's outcome: ``ok <peer>``, ``error <code>: <details>``, or ``hung`` (no
  answer within the deadline: killed). Children that answer exit normally (their finalizers
  run).
- ``registered``: the channel is ``postfork.register``-ed, a generated ``HealthStub`` built on
  it in the master, and a ``postfork.local`` channel used in the master too. Each child tries
  the inherited stub, the inherited channel, a stub built on it, ``close()``, then its own
  channel through the local; it exits normally.

Every RPC carries ``x-who`` metadata (``master``, ``child-<pid>``), so the server's record says
who called on which connection.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import threading
import time
from typing import Any, Dict, List

import grpc

DEADLINE = 6.0  # seconds the parent waits for all its children together
OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


def who(channel: Any, tag: str) -> str:
    call = channel.unary_unary("/postfork.Test/Who")
    return str(json.loads(call(b"", timeout=3, metadata=(("x-who", tag),)))["peer"])


def outcome(func: Any) -> str:
    try:
        return f"ok {func()}"
    except grpc.RpcError as exc:
        return f"error {exc.code()}: {exc.details()}"  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - the child reports whatever happened
        return f"raised {type(exc).__module__}.{type(exc).__name__}: {exc}"


def fork_children(count: int, work: Any) -> List[Any]:
    """Fork ``count`` children running ``work()`` (a JSON-able result); wait for all of them
    together for DEADLINE seconds; a child that has not answered by then is killed: "hung"."""
    children: Dict[int, int] = {}
    for _ in range(count):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            with os.fdopen(write_fd, "w") as out:
                out.write(json.dumps(work()))
            sys.exit(0)  # a normal exit: finalizers and atexit run in the child
        os.close(write_fd)
        children[read_fd] = pid
    results: Dict[int, Any] = {}
    deadline = time.monotonic() + DEADLINE
    pending = dict(children)
    while pending and time.monotonic() < deadline:
        ready, _, _ = select.select(list(pending), [], [], max(0.0, deadline - time.monotonic()))
        for fd in ready:
            data = b""
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                data += chunk
            results[fd] = json.loads(data) if data else "died"
            del pending[fd]
    for fd, pid in pending.items():
        os.kill(pid, signal.SIGKILL)
        results[fd] = "hung"
    for fd, pid in children.items():
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        if results[fd] == "died":
            results[fd] = f"died (wait status {status})"
    return [results[fd] for fd in children]


def busy_thread(channel: Any) -> threading.Event:
    """A master thread making RPCs back to back until the returned event is set; it has made
    one before this returns, so the forks that follow find it inside the next."""
    stop, going = threading.Event(), threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                who(channel, "master")
            except grpc.RpcError:
                pass
            going.set()

    threading.Thread(target=loop, daemon=True).start()
    going.wait(30)
    return stop


def inherited(target: str, busy: bool, count: int) -> Dict[str, Any]:
    channel = grpc.insecure_channel(target)
    master = who(channel, "master")
    stop = busy_thread(channel) if busy else None
    children = fork_children(count, lambda: outcome(lambda: who(channel, f"child-{os.getpid()}")))
    if stop is not None:
        stop.set()
    return {"master": master, "children": children, "after": outcome(lambda: who(channel, "master"))}


def registered(target: str, busy: bool, count: int) -> Dict[str, Any]:
    import postfork
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = postfork.register(grpc.insecure_channel(target))
    stub = health_pb2_grpc.HealthStub(channel)
    stub.Check(health_pb2.HealthCheckRequest(), timeout=3, metadata=(("x-who", "master"),))
    master = who(channel, "master")
    mine = postfork.local(lambda: grpc.insecure_channel(target, options=OPTIONS))
    master_local = who(mine(), "master")
    stop = busy_thread(channel) if busy else None

    def child() -> Dict[str, str]:
        tag = f"child-{os.getpid()}"
        check = health_pb2.HealthCheckRequest()
        return {
            "stub": outcome(lambda: stub.Check(check, timeout=3, metadata=(("x-who", tag),))),
            "future": outcome(lambda: stub.Check.future(check, timeout=3).result()),
            "channel": outcome(lambda: who(channel, tag)),
            "new_stub": outcome(lambda: health_pb2_grpc.HealthStub(channel)),
            "close": outcome(channel.close),
            "local": outcome(lambda: who(mine(), tag)),
        }

    children = fork_children(count, child)
    if stop is not None:
        stop.set()
    return {"master": master, "master_local": master_local, "children": children,
            "after": outcome(lambda: who(channel, "master")),
            "after_stub": outcome(lambda: stub.Check(health_pb2.HealthCheckRequest(), timeout=3))}


if __name__ == "__main__":
    scenario, port, busy_flag, count = sys.argv[1:5]
    run = {"inherited": inherited, "registered": registered}[scenario]
    print(json.dumps(run(f"127.0.0.1:{port}", busy_flag == "1", int(count))), flush=True)
    os._exit(0)  # the master: grpc's exit is not what is measured
