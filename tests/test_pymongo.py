"""PyMongo against MockupDB, in real forked children (issue 2, items 4 and 5).

PyMongo >= 4.3 resets its clients from an ``os.register_at_fork`` hook; uWSGI (without
``--py-call-osafterfork``) runs no at-fork hook at all, so there only postfork's reset, called
from uWSGI's post-fork hook, stands between the worker and the master's client. To reproduce
that without uWSGI, :func:`fork_without_hooks` forks with a bare ``fork(2)`` from libc, as
uWSGI's master does: CPython's ``PyOS_AfterFork_Child`` (which runs every at-fork hook,
PyMongo's and postfork's) is *not* called, exactly as in uWSGI's ``uwsgi_python_post_fork``
without that option. The child then calls ``postfork.reset_all()`` as the integration would.

Every check is made on the server's side: MockupDB records, for each ping, the TCP port it
came from (``request.client_port``) and its session id (``lsid``), from a ``tag`` field the
test adds to the ping command.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections import defaultdict
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import pytest

import postfork
from _locks import held_by_a_parent_thread
from postfork.testing import Child, ChildError, fork_child, run_in_child

pymongo = pytest.importorskip("pymongo")

FORK_WARNING = "MongoClient opened before fork"


# -- a fork like uWSGI's -----------------------------------------------------------------------

def fork_without_hooks(func: Callable[..., Any], *args: Any) -> Child:
    """Fork with libc's fork(): no at-fork hook runs in the child (neither PyMongo's nor
    postfork's), as under uWSGI; the child calls what it needs itself."""
    return fork_child(func, *args, reset=False, hooks=False)


def quiet(baseline: int) -> None:
    """Wait until MockupDB's per-connection threads of earlier children have ended.

    A fork without hooks does not re-create the threading module's locks in the child: forked
    while a MockupDB thread of this process was starting or ending (holding threading's
    internal lock), a child that starts a thread (PyMongo's monitors) waits forever. Children
    that connect are therefore forked one at a time, when no such thread is on its way."""
    deadline = time.monotonic() + 10
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.01)


# -- MockupDB, seen from the server ------------------------------------------------------------


class Seen:
    """What MockupDB received: each tagged ping's client port and session id, and every
    endSessions (the goodbye a MongoClient sends on close())."""

    def __init__(self) -> None:
        self.pings: Dict[str, List[Tuple[int, Optional[bytes]]]] = defaultdict(list)
        self.end_sessions: List[int] = []

    def handle(self, request: Any) -> bool:
        name = getattr(request, "command_name", None)
        if name == "ping":
            lsid = request.doc.get("lsid")
            self.pings[request.doc.get("tag", "")].append(
                (request.client_port, bytes(lsid["id"]) if lsid else None)
            )
            return bool(request.ok())
        if name == "endSessions":
            self.end_sessions.append(request.client_port)
            return bool(request.ok())
        return False

    def ports(self, tag: str) -> Set[int]:
        return {port for port, _ in self.pings[tag]}

    def lsids(self, tag: str) -> Set[Optional[bytes]]:
        return {lsid for _, lsid in self.pings[tag]}


@pytest.fixture
def mongo(mockupdb: Any) -> Iterator[Tuple[Any, Seen]]:
    """MockupDB advertising sessions (so each ping carries an ``lsid``), recording pings."""
    hello = dict(
        ismaster=True, isWritablePrimary=True, maxWireVersion=17, minWireVersion=0,
        logicalSessionTimeoutMinutes=30,
    )
    mockupdb.autoresponds("ismaster", **hello)
    mockupdb.autoresponds("hello", **hello)
    seen = Seen()
    mockupdb.autoresponds(seen.handle)
    yield mockupdb, seen


pytestmark = pytest.mark.usefixtures("clean_registry")


@pytest.fixture
def client(mongo: Tuple[Any, Seen]) -> Iterator[Any]:
    server, _ = mongo
    c = pymongo.MongoClient(server.uri, serverSelectionTimeoutMS=10_000, socketTimeoutMS=10_000)
    try:
        yield c
    finally:
        c.close()


def ping(client: Any, tag: str) -> None:
    client.admin.command({"ping": 1, "tag": tag})


def reset_and_ping(client: Any, tag: str) -> Dict[str, Any]:
    """In the child: what a uWSGI post-fork hook does (reset_all), then the first use."""
    started = time.perf_counter()
    report = postfork.reset_all()
    seconds = time.perf_counter() - started
    opened_before_use = client._topology._opened
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ping(client, tag)
    return {
        "ok": report.ok,
        "reset": [e.name for e in report.entries],
        "seconds": seconds,
        "opened_before_use": opened_before_use,
        "warnings": [str(w.message) for w in caught],
    }


# -- item 4: each child its own connection, the parent keeps its own ---------------------------


def test_each_hookless_child_pings_over_its_own_connection(mongo: Tuple[Any, Seen], client: Any) -> None:
    _, seen = mongo
    ping(client, "parent")
    postfork.register(client)

    baseline = threading.active_count()
    results = []
    for i in range(3):  # one at a time: see quiet()
        quiet(baseline)
        results.append(fork_without_hooks(reset_and_ping, client, f"child-{i}").result(30))
    ping(client, "parent-after")

    parent_ports = seen.ports("parent")
    child_ports = [seen.ports(f"child-{i}") for i in range(3)]
    for i, (ports, result) in enumerate(zip(child_ports, results)):
        assert result["ok"] and "pymongo.MongoClient" in result["reset"], result
        assert ports and ports.isdisjoint(parent_ports), f"child {i} used the parent's socket"
        for j in range(i):
            assert ports.isdisjoint(child_ports[j]), f"children {j} and {i} shared a socket"
        # Its own server session too: two processes on one lsid is one session to MongoDB.
        assert seen.lsids(f"child-{i}").isdisjoint(seen.lsids("parent"))
        # Monitors restart lazily: nothing was opened by the reset itself.
        assert result["opened_before_use"] is False
        assert not [w for w in result["warnings"] if FORK_WARNING in w]
    assert seen.ports("parent-after") <= parent_ports  # the parent kept its connection
    assert seen.lsids("parent-after") == seen.lsids("parent")
    assert seen.end_sessions == []  # no child said goodbye for the parent


def test_hazard_an_unmanaged_hookless_child_shares_the_parents_session(
    mongo: Tuple[Any, Seen], client: Any
) -> None:
    """Without postfork (and with no at-fork hook, as under uWSGI) the child takes the
    parent's pooled server session: parent and child then send the same ``lsid``, which MongoDB
    treats as one session (a retryable write of one can be taken as a retry of the other's)."""
    _, seen = mongo
    ping(client, "parent")
    fork_without_hooks(ping, client, "child").result(30)
    assert seen.lsids("child") == seen.lsids("parent") != {None}


def test_inherited_sockets_are_closed_in_the_child_only(mongo: Tuple[Any, Seen], client: Any) -> None:
    _, seen = mongo
    ping(client, "parent")
    postfork.register(client)
    server = next(iter(client._topology._servers.values()))
    inherited = list(server.pool.conns) + list(server._monitor._pool.conns)
    assert inherited

    def child() -> List[Tuple[bool, int]]:
        postfork.reset_all()
        return [(conn.closed, conn.conn.fileno()) for conn in inherited]

    assert fork_without_hooks(child).result(30) == [(True, -1)] * len(inherited)
    assert all(not conn.closed and conn.conn.fileno() >= 0 for conn in inherited)
    ping(client, "parent-after")
    assert seen.ports("parent-after") <= seen.ports("parent")
    assert seen.end_sessions == []


# -- item 5: a lock held by a parent thread at fork --------------------------------------------


def _lock(client: Any, which: str) -> Any:
    if which == "topology":
        return client._topology._lock  # Topology.select_servers() takes it
    server = next(iter(client._topology._servers.values()))
    return server.pool.lock  # Pool._get_conn() takes it (its pid check resets the pool)


@pytest.mark.parametrize("which", ["topology", "pool"])
def test_lock_held_at_fork_does_not_block_the_child(
    mongo: Tuple[Any, Seen], client: Any, which: str
) -> None:
    _, seen = mongo
    ping(client, "parent")
    postfork.register(client)
    with held_by_a_parent_thread(_lock(client, which)):
        result = fork_without_hooks(reset_and_ping, client, "child").result(30)
    assert result["ok"], result
    assert result["seconds"] < 2.0  # the liveness bound; it takes milliseconds
    assert seen.ports("child") and seen.ports("child").isdisjoint(seen.ports("parent"))
    ping(client, "parent-after")
    assert seen.ports("parent-after") <= seen.ports("parent")


@pytest.mark.parametrize("which", ["topology", "pool"])
def test_hazard_lock_held_at_fork_blocks_an_unmanaged_child(
    mongo: Tuple[Any, Seen], client: Any, which: str
) -> None:
    _, seen = mongo
    ping(client, "parent")
    with held_by_a_parent_thread(_lock(client, which)):
        child = fork_without_hooks(ping, client, "child")
        with pytest.raises(ChildError, match="did not finish"):
            child.result(2)  # a ping takes milliseconds; the child waits for the lock forever
    assert not seen.pings["child"]


# -- with PyMongo's own at-fork hook (os.fork, gunicorn, multiprocessing) ----------------------


@pytest.mark.parametrize("managed", [True, False], ids=["registered", "pymongo-alone"])
def test_plain_fork_runs_both_resets_harmlessly(
    mongo: Tuple[Any, Seen], client: Any, managed: bool
) -> None:
    """os.fork() runs PyMongo's hook and postfork's (and reset_all() runs again, a no-op).
    Both children use a new connection; only the registered one is marked as this process's
    own, so PyMongo's "opened before fork" warning is gone."""
    _, seen = mongo
    ping(client, "parent")
    if managed:
        postfork.register(client)
    result = run_in_child(reset_and_ping, client, "child", timeout=30)
    assert result["ok"]
    assert ("pymongo.MongoClient" in result["reset"]) is managed
    assert seen.ports("child") and seen.ports("child").isdisjoint(seen.ports("parent"))
    assert seen.lsids("child").isdisjoint(seen.lsids("parent"))
    fork_warnings = [w for w in result["warnings"] if FORK_WARNING in w]
    assert bool(fork_warnings) is not managed


_ORDER_SCRIPT = """
import os, sys, warnings
{imports}
from postfork.testing import run_in_child
client = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=10000, socketTimeoutMS=10000)
client.admin.command({{"ping": 1, "tag": "parent"}})
postfork.register(client)
def child():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client.admin.command({{"ping": 1, "tag": "child"}})
    return [str(w.message) for w in caught]
print(run_in_child(child, timeout=30))
client.close()
"""


@pytest.mark.parametrize("imports", ["import pymongo\nimport postfork", "import postfork\nimport pymongo"],
                         ids=["pymongo-hook-first", "postfork-hook-first"])
def test_either_hook_order_gives_a_working_child(mongo: Tuple[Any, Seen], imports: str) -> None:
    """At-fork hooks run in the order they were installed, i.e. the import order."""
    server, seen = mongo
    script = textwrap.dedent(_ORDER_SCRIPT).format(imports=imports)
    out = subprocess.run([sys.executable, "-c", script, server.uri], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert FORK_WARNING not in out.stdout and FORK_WARNING not in out.stderr
    assert seen.ports("child") and seen.ports("child").isdisjoint(seen.ports("parent"))


def test_a_closed_client_stays_closed_in_the_child(mongo: Tuple[Any, Seen]) -> None:
    server, _ = mongo
    closed = pymongo.MongoClient(server.uri, serverSelectionTimeoutMS=10_000, socketTimeoutMS=10_000)
    ping(closed, "parent")
    closed.close()
    postfork.register(closed)

    def child() -> str:
        assert postfork.reset_all().ok
        try:
            ping(closed, "child")
        except pymongo.errors.InvalidOperation as exc:
            return str(exc)
        return "usable"

    assert "after close" in fork_without_hooks(child).result(30)
