"""pymemcache against the real memcached, forking for real.

The server says who is who: ``stats conns`` lists every connection memcached holds, by the
client's address, so each process's connection is its local port in that list. Keys are
prefixed with a tag of the test's own.
"""

from __future__ import annotations

import collections
import os
import select
import uuid
from typing import Any, Callable, Dict, List, Set, Tuple

import pytest

import postfork
from _gate import Gate
from _guard_findings import findings_in_a_child
from _locks import held_by_a_parent_thread
from postfork.testing import ChildError, fork_child, run_in_child

pymemcache = pytest.importorskip("pymemcache")
from pymemcache.client.base import Client, PooledClient  # noqa: E402
from pymemcache.client.hash import HashClient  # noqa: E402
from pymemcache.client.retrying import RetryingClient  # noqa: E402

Server = Tuple[str, int]
CHILDREN = 3
CALLS = 2000
BASE = 1_000_000  # process i's counter lives in [i * BASE, (i + 1) * BASE)


@pytest.fixture
def tag() -> str:
    return f"postfork-test:{uuid.uuid4().hex[:12]}"


def server_ports(server: Server) -> Set[int]:
    """The local ports of every client connection memcached holds now (``stats conns``),
    asked on a connection of the asking process's own."""
    observer = Client(server, timeout=5)
    try:
        conns = observer.stats("conns")
        own = observer.sock.getsockname()[1]
    finally:
        observer.close()
    ports = set()
    for key, value in conns.items():
        if key.endswith(b":addr") and value.startswith(b"tcp:"):
            port = int(value.rsplit(b":", 1)[1])
            if port != server[1] and port != own:
                ports.add(port)
    return ports


def port_of(client: Any) -> int:
    """The local port of the connection ``client`` (any pymemcache client) uses now."""
    if isinstance(client, RetryingClient):
        client = client._client
    if isinstance(client, HashClient):
        (client,) = client.clients.values()
    if isinstance(client, PooledClient):
        client = (client.client_pool.free + client.client_pool.used)[0]
    return int(client.sock.getsockname()[1])


# -- 1. one Client shared by parent and children -------------------------------------------
# Setup writes wait for memcached's reply (noreply=False, not pymemcache's default): a child's
# first read on a connection of its own could otherwise overtake them.


def _incr_hammer(client: Any, key: str, me: int, gate: Gate) -> Dict[str, int]:
    """INCR our own counter CALLS times: replies are bare numbers, so one that answered
    another process's INCR is silently taken for ours; its range says whose it was."""
    gate.wait()
    out: Dict[str, int] = collections.Counter()
    for _ in range(CALLS):
        try:
            value = client.incr(key, 1)
        except Exception as exc:  # noqa: BLE001 - a reply taken by another process: timeout
            out[f"error {type(exc).__name__}"] += 1
            continue
        out["own" if value is not None and value // BASE == me else "other process's"] += 1
    return dict(out)


def _get_hammer(client: Any, keys: List[Tuple[str, bytes]], gate: Gate) -> Dict[str, int]:
    """GET our own keys: a VALUE line names its key, and pymemcache refuses (KeyError) a
    reply for a key it did not ask for, then closes its copy of the socket."""
    gate.wait()
    out: Dict[str, int] = collections.Counter()
    for n in range(CALLS):
        key, value = keys[n % len(keys)]
        try:
            got = client.get(key)
        except Exception as exc:  # noqa: BLE001
            out[f"error {type(exc).__name__}"] += 1
            continue
        out["own" if got == value else f"wrong {got!r}"] += 1
    return dict(out)


def _run_shared(client: Any, hammer: Callable[..., Dict[str, int]],
                args: Callable[[int], Tuple[Any, ...]], reset: bool
                ) -> List[Dict[str, int]]:
    """The parent and CHILDREN children run ``hammer`` at once on ``client``; their tallies."""
    gate = Gate()
    try:
        children = [fork_child(hammer, client, *args(i + 1), gate, reset=reset)
                    for i in range(CHILDREN)]
        gate.open(CHILDREN + 1)
        results = [hammer(client, *args(0), gate)] + [c.result(120) for c in children]
    finally:
        gate.close()
    return results


def _counters(client: Any, tag: str) -> Callable[[int], Tuple[str, int]]:
    for i in range(CHILDREN + 1):
        client.set(f"{tag}:n{i}", str(i * BASE), expire=120, noreply=False)
    return lambda i: (f"{tag}:n{i}", i)


def _key_sets(client: Any, tag: str) -> Callable[[int], Tuple[List[Tuple[str, bytes]]]]:
    keys = {i: [(f"{tag}:k{i}:{j}", f"{i}:{j}".encode()) for j in range(20)]
            for i in range(CHILDREN + 1)}
    for pairs in keys.values():
        client.set_many(dict(pairs), expire=120, noreply=False)
    return lambda i: (keys[i],)


def test_unmanaged_client_answers_incr_with_other_processes_counters(
        memcached_server: Server, tag: str) -> None:
    """The hazard, silent: a parent and 3 children INCR their own counter on one inherited
    socket; replies go to whoever reads first."""
    client = Client(memcached_server, timeout=1)
    results = _run_shared(client, _incr_hammer, _counters(client, tag), reset=False)
    client.close()
    crossed = sum(r.get("other process's", 0) for r in results)
    assert crossed > 0, results  # measured: 1,300-7,500 of 8,000 were another process's


def test_unmanaged_client_gets_fail_on_replies_for_other_keys(
        memcached_server: Server, tag: str) -> None:
    """GET replies carry their key: pymemcache notices a reply for another process's key
    (KeyError, or a timeout when another process took ours) and drops its connection."""
    client = Client(memcached_server, timeout=1)
    results = _run_shared(client, _get_hammer, _key_sets(client, tag), reset=False)
    client.close()
    errors = sum(n for r in results for what, n in r.items() if what.startswith("error"))
    assert errors > 0, results


@pytest.mark.parametrize("explicit_reset", [True, False], ids=["reset_all", "at_fork_hook_only"])
def test_registered_client_never_crosses(memcached_server: Server, tag: str,
                                         managed: Callable[[Any], Any],
                                         explicit_reset: bool) -> None:
    client = managed(Client(memcached_server, timeout=5))
    incr = _run_shared(client, _incr_hammer, _counters(client, tag), explicit_reset)
    gets = _run_shared(client, _get_hammer, _key_sets(client, tag), explicit_reset)
    assert incr == [{"own": CALLS}] * (CHILDREN + 1)
    assert gets == [{"own": CALLS}] * (CHILDREN + 1)
    # every counter was incremented by its own process only
    for i in range(CHILDREN + 1):
        assert int(client.get(f"{tag}:n{i}")) == i * BASE + CALLS
    client.close()


# -- 2. each family: a connection of the child's own, the parent's untouched ---------------


def _build(kind: str, server: Server) -> Any:
    if kind == "Client":
        return Client(server, timeout=5)
    if kind == "PooledClient":
        return PooledClient(server, timeout=5, max_pool_size=4)
    if kind == "HashClient":
        return HashClient([server], timeout=5, use_pooling=True)
    return RetryingClient(Client(server, timeout=5), attempts=2)


@pytest.mark.parametrize("kind", ["Client", "PooledClient", "HashClient", "RetryingClient"])
def test_registered_child_has_its_own_connection(memcached_server: Server, tag: str,
                                                 managed: Callable[[Any], Any], kind: str) -> None:
    client = managed(_build(kind, memcached_server))
    client.set(f"{tag}:k", b"from-parent", expire=60, noreply=False)
    parent_port = port_of(client)
    assert parent_port in server_ports(memcached_server)

    def child() -> Tuple[bytes, int, Set[int]]:
        value = client.get(f"{tag}:k")
        return value, port_of(client), server_ports(memcached_server)

    results = [run_in_child(child) for _ in range(2)]
    for value, port, seen in results:
        assert value == b"from-parent"
        assert port != parent_port
        assert port in seen and parent_port in seen  # both connections, at once, on the server
    assert results[0][1] != results[1][1]
    assert client.get(f"{tag}:k") == b"from-parent"
    assert port_of(client) == parent_port  # the parent's connection is the same one ...
    assert parent_port in server_ports(memcached_server)  # ... and memcached still holds it
    client.close()


def test_reset_sends_nothing_on_the_inherited_socket(memcached_server: Server,
                                                     managed: Callable[[Any], Any]) -> None:
    """The child's reset, its use of its own connection and its exit leave nothing on the
    parent's connection (no ``quit``, no reply to read) and memcached still holds it."""
    client = managed(Client(memcached_server, timeout=5))
    client.version()
    sock = client.sock
    parent_port = sock.getsockname()[1]
    run_in_child(lambda: (client.version(), client.close()))
    assert not select.select([sock], [], [], 0.3)[0]  # no unsolicited bytes
    assert client.sock is sock and client.version()
    assert parent_port in server_ports(memcached_server)
    client.close()


def test_pool_lock_held_by_a_parent_thread_at_fork(memcached_server: Server, tag: str) -> None:
    registered = postfork.register(PooledClient(memcached_server, timeout=5))
    unmanaged = PooledClient(memcached_server, timeout=5)
    registered.set(f"{tag}:k", b"v", expire=60, noreply=False)
    unmanaged.set(f"{tag}:k", b"v", expire=60, noreply=False)
    try:
        with held_by_a_parent_thread(registered.client_pool._lock, unmanaged.client_pool._lock):
            assert run_in_child(lambda: registered.get(f"{tag}:k"), timeout=20) == b"v"
            # Without the reset the child's first get waits forever on the parent's lock.
            with pytest.raises(ChildError, match="did not finish"):
                run_in_child(lambda: unmanaged.get(f"{tag}:k"), timeout=2)
    finally:
        postfork.unregister(registered)
        registered.close()
        unmanaged.close()


# -- 3. the guard ----------------------------------------------------------------------------


def test_guard_names_an_unmanaged_client_and_its_line(memcached_server: Server,
                                                      restore_guard: None) -> None:
    postfork.guard("warn")
    unmanaged = PooledClient(memcached_server, timeout=5); line = _line()  # noqa: E702
    managed_client = postfork.register(Client(memcached_server, timeout=5)); mline = _line()  # noqa: E702
    unmanaged.version()
    managed_client.version()

    try:
        found = findings_in_a_child()
    finally:
        postfork.unregister(managed_client)
        unmanaged.close()
        managed_client.close()
    here = os.path.relpath(__file__)
    assert ("client", "pymemcache.PooledClient", f"{here}:{line}") in found, found
    assert not [f for f in found if f[2] == f"{here}:{mline}"]  # the managed one: nothing


def _line() -> int:
    import sys

    return sys._getframe(1).f_lineno
