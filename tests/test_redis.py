"""redis-py under fork, against the real Redis: each hazard shown unmanaged, then fixed.

Children are real forks (postfork.testing). The server says who is who: every process reports
its ``CLIENT ID`` and the local port of its socket, and ``CLIENT LIST`` (from an observer
connection of the parent) shows which connections exist, with their ids and subscriptions.
"""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

redis = pytest.importorskip("redis")
import redis.asyncio  # noqa: E402
from redis.backoff import NoBackoff  # noqa: E402
from redis.cluster import RedisCluster  # noqa: E402
from redis.retry import Retry  # noqa: E402

import postfork  # noqa: E402
from _gate import Gate  # noqa: E402
from _locks import held_by_a_parent_thread  # noqa: E402
from postfork.testing import ChildError, fork_child, run_in_child  # noqa: E402

REQUIRED = os.environ.get("POSTFORK_REQUIRE_SERVICES") == "1"

# -- helpers --------------------------------------------------------------------------------------


@pytest.fixture
def observer(redis_url: str) -> Iterator["redis.Redis"]:
    """A connection of the test's own, never forked into a child's hands, to ask the server."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def clients_by_port(observer: "redis.Redis") -> Dict[int, Dict[str, str]]:
    """CLIENT LIST keyed by the client's local port (``addr=127.0.0.1:PORT``)."""
    return {int(c["addr"].rsplit(":", 1)[1]): c for c in observer.client_list()}


def local_port(conn: Any) -> int:
    return int(conn._sock.getsockname()[1])


def open_socket_inodes() -> List[int]:
    """Inodes of the sockets open in this process: which connections it still holds."""
    inodes = []
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if stat.S_ISSOCK(st.st_mode):
            inodes.append(st.st_ino)
    return inodes


NL = b"\n"


def read_lines(fd: int, n: int, timeout: float = 30.0) -> List[str]:
    """``n`` newline-terminated messages written by children to pipe ``fd``."""
    buf = b""
    deadline = time.monotonic() + timeout
    while buf.count(b"\n") < n:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(left, 0))
        assert ready, f"only {buf.count(NL)} of {n} children reported"
        buf += os.read(fd, 4096)
    return buf.decode().split("\n")[:n]


# -- 1. single_connection_client: crossed replies -------------------------------------------------

GETS = 5000
CHILDREN = 3


def _hammer(client: "redis.Redis", key: str, value: bytes, gate: Gate) -> Tuple[int, int, int]:
    """GET own key GETS times; (crossed, missing, errors).

    Crossed: a reply that is another process's (its value, or the answer to its command); a
    missing key (``None``) is no such evidence and is counted apart, so that a flush of the
    database cannot pass for crossing."""
    gate.wait()
    crossed = missing = errors = 0
    for _ in range(GETS):
        try:
            reply = client.get(key)
        except redis.RedisError:  # a reply stolen by another process: we time out
            errors += 1
            continue
        if reply is None:
            missing += 1
        elif reply != value:
            crossed += 1
    return crossed, missing, errors


def _single_client(url: str) -> "redis.Redis":
    # Errors are not retried (and time out fast), so the unmanaged run is bounded and counted.
    return redis.Redis.from_url(url, single_connection_client=True, socket_timeout=2,
                                retry=Retry(NoBackoff(), 0))


def _setup_keys(observer: "redis.Redis", tag: str) -> List[Tuple[str, bytes]]:
    keys = [(f"{tag}:{i}", f"value-of-process-{i}".encode()) for i in range(CHILDREN + 1)]
    for key, value in keys:
        observer.set(key, value, ex=60)
    return keys


def test_single_connection_client_unmanaged_crosses_replies(redis_url: str,
                                                            observer: "redis.Redis") -> None:
    """The hazard: parent and 3 children share one socket; replies go to whoever reads."""
    keys = _setup_keys(observer, f"postfork-test:{uuid.uuid4().hex}")
    client = _single_client(redis_url)
    assert client.get(keys[0][0]) == keys[0][1]  # built and used in the parent
    gate = Gate()
    try:
        children = [fork_child(_hammer, client, *keys[i + 1], gate) for i in range(CHILDREN)]
        gate.open(CHILDREN)
        os.write(gate.w, b"x")  # the parent's own pass through the gate
        results = [_hammer(client, *keys[0], gate)] + [c.result(60) for c in children]
    finally:
        gate.close()
        client.close()
    crossed = sum(c for c, _, _ in results)
    assert crossed > 0, f"expected crossed replies on a shared socket, got {results}"


def _hammer_and_park(client: "redis.Redis", key: str, value: bytes, gate: Gate, tag: str,
                     parked_w: int, release: Gate) -> Tuple[Tuple[int, int, int], int]:
    counts = _hammer(client, key, value, gate)
    client_id = client.client_id()
    client.client_setname(f"{tag}-{os.getpid()}")
    os.write(parked_w, f"{client_id}\n".encode())
    release.wait()  # stay connected while the parent reads CLIENT LIST
    return counts, client_id


@pytest.mark.parametrize("explicit_reset", [True, False], ids=["reset_all", "at_fork_hook_only"])
def test_single_connection_client_registered_never_crosses(
        redis_url: str, observer: "redis.Redis", managed: Callable[[Any], Any],
        explicit_reset: bool) -> None:
    tag = f"postfork-test-{uuid.uuid4().hex[:12]}"
    keys = _setup_keys(observer, tag)
    client = managed(_single_client(redis_url))
    assert client.get(keys[0][0]) == keys[0][1]
    parent_id = client.client_id()
    gate, release = Gate(), Gate()
    parked_r, parked_w = os.pipe()
    try:
        children = [fork_child(_hammer_and_park, client, *keys[i + 1], gate, tag, parked_w, release,
                               reset=explicit_reset) for i in range(CHILDREN)]
        gate.open(CHILDREN)
        os.write(gate.w, b"x")
        parent_counts = _hammer(client, *keys[0], gate)
        client.client_setname(f"{tag}-{os.getpid()}")
        child_ids = [int(line) for line in read_lines(parked_r, CHILDREN)]
        # The server's view while all four are connected: four connections, four ids.
        named = {c["name"]: c for c in observer.client_list() if c["name"].startswith(tag)}
        release.open(CHILDREN)
        results = [c.result(60) for c in children]
    finally:
        for fd in (parked_r, parked_w):
            os.close(fd)
        gate.close()
        release.close()
    counts = [parent_counts] + [c for c, _ in results]
    assert [crossed for crossed, _, _ in counts] == [0] * (CHILDREN + 1), counts
    assert [errors for _, _, errors in counts] == [0] * (CHILDREN + 1), counts
    # Every GET found its key, so any crossed reply would have shown as another's value.
    assert [missing for _, missing, _ in counts] == [0] * (CHILDREN + 1), (
        f"keys of {tag} vanished from {redis_url} during the run (flushed?): {counts}")
    assert sorted(cid for _, cid in results) == sorted(child_ids)
    ids = [parent_id] + child_ids
    assert len(set(ids)) == CHILDREN + 1, ids
    assert client.client_id() == parent_id  # the parent's connection survived every child
    assert len(named) == CHILDREN + 1
    assert {int(c["id"]) for c in named.values()} == set(ids)
    assert len({c["addr"] for c in named.values()}) == CHILDREN + 1
    client.close()


# -- 2. PubSub ------------------------------------------------------------------------------------

MESSAGES = 200


def _drain(pubsub: Any, channel: str, want: int, quiet: float) -> List[str]:
    """Message payloads from ``channel`` until ``want`` arrived or nothing came for ``quiet`` s."""
    got: List[str] = []
    last = time.monotonic()
    while len(got) < want and time.monotonic() - last < quiet:
        try:
            msg = pubsub.get_message(timeout=0.2)
        except (redis.RedisError, OSError):  # a message torn by another reader of the socket
            continue
        if msg and msg["type"] == "message" and msg["channel"] == channel:
            got.append(msg["data"])
            last = time.monotonic()
    return got


def _pubsub_client(url: str) -> "redis.Redis":
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5,
                                retry=Retry(NoBackoff(), 0))


def _subscribed_pubsub(client: "redis.Redis", channel: str) -> Any:
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    msg = pubsub.get_message(timeout=5)
    assert msg and msg["type"] == "subscribe"
    return pubsub


def test_pubsub_unmanaged_child_steals_parent_messages(redis_url: str,
                                                       observer: "redis.Redis") -> None:
    channel = f"postfork-test:{uuid.uuid4().hex}"
    client = _pubsub_client(redis_url)
    pubsub = _subscribed_pubsub(client, channel)
    ready_r, ready_w = os.pipe()

    def child() -> int:
        os.write(ready_w, b"ready\n")
        return len(_drain(pubsub, channel, MESSAGES, quiet=2.0))

    try:
        kid = fork_child(child)
        read_lines(ready_r, 1)
        for i in range(MESSAGES):
            observer.publish(channel, str(i))
        parent_got = _drain(pubsub, channel, MESSAGES, quiet=1.0)
        child_got = kid.result(30)
    finally:
        os.close(ready_r)
        os.close(ready_w)
        pubsub.close()
        client.close()
    assert child_got > 0 and len(parent_got) < MESSAGES, (child_got, len(parent_got))


def test_pubsub_registered_parent_keeps_every_message(
        redis_url: str, observer: "redis.Redis", managed: Callable[[Any], Any]) -> None:
    """The child's copy re-subscribes on its own connection; the parent's is untouched."""
    channel, other = (f"postfork-test:{uuid.uuid4().hex}" for _ in range(2))
    client = _pubsub_client(redis_url)
    pubsub = managed(_subscribed_pubsub(client, channel))
    parent_port = local_port(pubsub.connection)
    parent_entry = clients_by_port(observer)[parent_port]
    assert parent_entry["sub"] == "1"
    ready_r, ready_w = os.pipe()

    def child() -> Tuple[List[str], List[str]]:
        pubsub.subscribe(other)  # first use: its own connection, `channel` subscribed again
        confirmed = set()
        while len(confirmed) < 2:
            msg = pubsub.get_message(timeout=5)
            assert msg is not None, "no subscribe confirmation"
            if msg["type"] == "subscribe":
                confirmed.add(msg["channel"])
        os.write(ready_w, f"{local_port(pubsub.connection)}\n".encode())
        return _drain(pubsub, channel, MESSAGES, quiet=5.0), _drain(pubsub, other, 1, quiet=5.0)

    try:
        kid = fork_child(child)
        child_port = int(read_lines(ready_r, 1)[0])
        by_port = clients_by_port(observer)
        assert by_port[child_port]["id"] != parent_entry["id"]
        assert by_port[child_port]["sub"] == "2"
        assert by_port[parent_port]["id"] == parent_entry["id"]  # same connection, still
        assert by_port[parent_port]["sub"] == "1"  # subscribed to its channel only
        assert observer.pubsub_numsub(channel) == [(channel, 2)]
        for i in range(MESSAGES):
            observer.publish(channel, str(i))
        observer.publish(other, "for the child")
        parent_got = _drain(pubsub, channel, MESSAGES, quiet=5.0)
        child_got, child_other = kid.result(30)
    finally:
        os.close(ready_r)
        os.close(ready_w)
    expected = [str(i) for i in range(MESSAGES)]
    assert parent_got == expected  # every message, in order, none taken by the child
    assert child_got == expected  # the child got its own copies, on its own connection
    assert child_other == ["for the child"]
    assert pubsub.get_message(timeout=0.2) is None  # nothing of the child's reached the parent
    assert clients_by_port(observer)[parent_port]["id"] == parent_entry["id"]
    pubsub.close()
    client.close()


# -- 3. a lock held by a parent thread at fork ----------------------------------------------------


def _locked_client(url: str, kind: str) -> Tuple["redis.Redis", Any]:
    """A used client, and the lock a parent thread will hold at fork."""
    if kind == "single":
        client = redis.Redis.from_url(url, single_connection_client=True, socket_timeout=5)
        client.ping()
        return client, client.single_connection_lock
    blocking = kind.startswith("blocking")
    pool_class = redis.BlockingConnectionPool if blocking else redis.ConnectionPool
    client = redis.Redis(connection_pool=pool_class.from_url(url, socket_timeout=5))
    client.ping()
    lock_name = "_fork_lock" if kind.endswith("_fork_lock") else "_lock"
    return client, getattr(client.connection_pool, lock_name)


LOCK_CASES = ["pool._lock", "pool._fork_lock", "blocking._lock", "single"]


@pytest.mark.parametrize("kind", LOCK_CASES)
def test_lock_held_at_fork_registered(redis_url: str, redis_key: str, managed: Callable[[Any], Any],
                                      kind: str) -> None:
    client, lock = _locked_client(redis_url, kind)
    managed(client)
    client.set(redis_key, "v", ex=60)

    def child() -> Tuple[float, bool, bool, bytes, int]:
        report = postfork.reset_all()  # the at-fork hook's report
        return report.seconds, report.ok, client.ping(), client.get(redis_key), client.client_id()

    with held_by_a_parent_thread(lock):
        seconds, ok, pong, value, child_id = run_in_child(child, timeout=20)
    assert ok and seconds < 2.0, seconds
    assert pong is True and value == b"v"
    assert child_id != client.client_id()
    client.close()


# redis-py 8.2 renews a pool's ``_lock`` in the child itself (``ConnectionPool.reset()`` when the
# pid differs: "a parent thread may have held the lock at fork time"); before, the child hung.
POOL_RENEWS_ITS_LOCK = tuple(int(p) for p in redis.__version__.split(".")[:2]) >= (8, 2)


def test_lock_held_at_fork_unmanaged_blocks_the_child(redis_url: str) -> None:
    """Without postfork each child hangs on the lock (bounded here: killed after 2 s), or, for
    ``_fork_lock``, redis-py gives up after 5 s with ChildDeadlockedError. All run at once.
    Since redis-py 8.2 a pool's ``_lock`` is renewed by redis-py: those children answer."""
    setups = [_locked_client(redis_url, kind) for kind in LOCK_CASES]

    def child(client: "redis.Redis") -> str:
        try:
            client.ping()
        except redis.exceptions.ChildDeadlockedError as exc:
            return type(exc).__name__
        return "pong"

    try:
        with held_by_a_parent_thread(*(lock for _, lock in setups)):
            kids = [fork_child(child, client) for client, _ in setups]
            started = time.monotonic()
            outcomes: Dict[str, str] = {}
            for kind, kid in zip(LOCK_CASES, kids):  # all wait at once: one deadline each
                deadline = started + (8 if kind == "pool._fork_lock" else 2)
                try:
                    outcomes[kind] = kid.result(max(deadline - time.monotonic(), 0.01))
                except ChildError as exc:
                    assert "did not finish" in str(exc), exc
                    outcomes[kind] = "hung"
    finally:
        for client, _ in setups:
            client.close()
    pool_lock = "pong" if POOL_RENEWS_ITS_LOCK else "hung"
    assert outcomes == {"pool._lock": pool_lock, "pool._fork_lock": "ChildDeadlockedError",
                        "blocking._lock": pool_lock, "single": "hung"}


# -- 4. pools registered directly -----------------------------------------------------------------


@pytest.mark.parametrize("what", ["redis", "pool", "blocking_pool"])
def test_pool_child_gets_own_connection(redis_url: str, observer: "redis.Redis",
                                        managed: Callable[[Any], Any], what: str) -> None:
    if what == "redis":
        client = managed(redis.Redis.from_url(redis_url))
    else:
        blocking = what == "blocking_pool"
        pool_class = redis.BlockingConnectionPool if blocking else redis.ConnectionPool
        client = redis.Redis(connection_pool=managed(pool_class.from_url(redis_url)))
    parent_id = client.client_id()
    pool = client.connection_pool
    conn = pool._connections[0] if what == "blocking_pool" else pool._available_connections[0]
    parent_port = local_port(conn)
    parent_inode = os.fstat(conn._sock.fileno()).st_ino

    def child() -> Tuple[bool, int]:
        inherited_open = parent_inode in open_socket_inodes()  # right after the resets
        return inherited_open, int(client.client_id())

    results = [fork_child(child, reset=reset).result(30) for reset in (True, False)]
    assert [inherited_open for inherited_open, _ in results] == [False, False]
    child_ids = [child_id for _, child_id in results]
    assert parent_id not in child_ids and len(set(child_ids)) == 2
    assert client.client_id() == parent_id
    assert clients_by_port(observer)[parent_port]["id"] == str(parent_id)
    client.close()
    client.connection_pool.disconnect()


@pytest.mark.parametrize("blocking", [False, True], ids=["pool", "blocking_pool"])
def test_single_connection_stays_counted_by_its_pool(redis_url: str, managed: Callable[[Any], Any],
                                                     blocking: bool) -> None:
    """In the child the dedicated connection is still one of the pool's: max_connections holds
    and close() hands it back, as in the parent."""
    pool_class = redis.BlockingConnectionPool if blocking else redis.ConnectionPool
    pool = pool_class.from_url(redis_url, max_connections=2, **({"timeout": 1} if blocking else {}))
    client = managed(redis.Redis(connection_pool=pool, single_connection_client=True))
    client.ping()

    def child() -> Tuple[str, bool]:
        conn = client.connection
        client.ping()
        second = redis.Redis(connection_pool=pool, single_connection_client=True)
        try:
            redis.Redis(connection_pool=pool, single_connection_client=True)
            third = "allowed"
        except redis.ConnectionError as exc:
            third = str(exc)
        client.close()
        second.close()
        idle = list(pool.pool.queue) if blocking else pool._available_connections
        return third, conn in idle

    third, returned = run_in_child(child)
    assert third == ("No connection available." if blocking else "Too many connections")
    assert returned
    client.close()
    pool.disconnect()


# -- 5. asyncio -----------------------------------------------------------------------------------


def _async_setup(url: str, single: bool
                 ) -> Tuple[asyncio.AbstractEventLoop, "redis.asyncio.Redis", int, Any]:
    """An asyncio client used on a parent loop that stays open across the fork."""
    loop = asyncio.new_event_loop()
    client = redis.asyncio.Redis.from_url(url, single_connection_client=single, socket_timeout=2,
                                          retry=Retry(NoBackoff(), 0))
    parent_id = loop.run_until_complete(client.client_id())
    conn = client.connection if single else client.connection_pool._available_connections[0]
    return loop, client, parent_id, conn._writer.get_extra_info("socket")


def _async_child(client: "redis.asyncio.Redis", key: str, fd: int) -> Tuple[Any, Any, str]:
    async def use() -> Tuple[Any, Any]:
        try:
            return await client.client_id(), await client.get(key)
        except Exception as exc:  # noqa: BLE001 - the unmanaged child's failure is the point
            return type(exc).__name__, None

    client_id, value = asyncio.run(use())
    family = socket.socket(fileno=os.dup(fd)).family.name  # what the parent's fd number is here
    return client_id, value, family


def _unsolicited(sock: Any) -> bool:
    """Bytes waiting on the parent's socket that the parent never asked for."""
    return bool(select.select([sock.fileno()], [], [], 0.5)[0])


@pytest.mark.parametrize("single", [False, True], ids=["pool", "single_connection"])
def test_asyncio_unmanaged_child_writes_on_parent_socket(redis_url: str, redis_key: str,
                                                         single: bool) -> None:
    """asyncio does no pid check: the child's command goes out on the parent's connection, and
    the reply lands in the parent's socket (its next command then fails)."""
    loop, client, parent_id, sock = _async_setup(redis_url, single)
    try:
        child_id, _, _ = run_in_child(_async_child, client, redis_key, sock.fileno(), timeout=20)
        assert child_id == "RuntimeError"  # a future of the parent's loop
        assert _unsolicited(sock), "the child's command did not reach the parent's connection"
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()


@pytest.mark.parametrize("single", [False, True], ids=["pool", "single_connection"])
@pytest.mark.parametrize("explicit_reset", [True, False], ids=["reset_all", "at_fork_hook_only"])
def test_asyncio_registered_child_runs_own_loop(redis_url: str, redis_key: str,
                                                managed: Callable[[Any], Any], single: bool,
                                                explicit_reset: bool) -> None:
    loop, client, parent_id, sock = _async_setup(redis_url, single)
    managed(client)
    loop.run_until_complete(client.set(redis_key, "from-parent", ex=60))
    try:
        child_id, value, family = fork_child(_async_child, client, redis_key, sock.fileno(),
                                             reset=explicit_reset).result(20)
        assert isinstance(child_id, int) and child_id != parent_id
        assert value == b"from-parent"
        # The parent's socket is no longer open in the child; its number is a dead socket.
        assert family == "AF_UNIX"
        assert not _unsolicited(sock)
        assert loop.run_until_complete(client.client_id()) == parent_id  # same connection
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()


async def _adrain(pubsub: Any, channel: str, want: int, quiet: float) -> List[str]:
    got: List[str] = []
    last = time.monotonic()
    while len(got) < want and time.monotonic() - last < quiet:
        msg = await pubsub.get_message(timeout=0.2)
        if msg and msg["type"] == "message" and msg["channel"] == channel:
            got.append(msg["data"])
            last = time.monotonic()
    return got


def test_asyncio_pubsub_registered_parent_keeps_every_message(
        redis_url: str, observer: "redis.Redis", managed: Callable[[Any], Any]) -> None:
    channel, other = (f"postfork-test:{uuid.uuid4().hex}" for _ in range(2))
    loop = asyncio.new_event_loop()
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5)
    pubsub = client.pubsub()

    async def subscribe() -> None:
        await pubsub.subscribe(channel)
        msg = await pubsub.get_message(timeout=5)
        assert msg and msg["type"] == "subscribe"

    loop.run_until_complete(subscribe())
    managed(pubsub)
    parent_port = pubsub.connection._writer.get_extra_info("sockname")[1]
    parent_entry = clients_by_port(observer)[parent_port]
    ready_r, ready_w = os.pipe()

    async def in_child() -> List[str]:
        await pubsub.subscribe(other)  # its own connection; `channel` subscribed again
        confirmed = set()
        while len(confirmed) < 2:
            msg = await pubsub.get_message(timeout=5)
            assert msg is not None, "no subscribe confirmation"
            if msg["type"] == "subscribe":
                confirmed.add(msg["channel"])
        port = pubsub.connection._writer.get_extra_info("sockname")[1]
        os.write(ready_w, f"{port}\n".encode())
        return await _adrain(pubsub, channel, MESSAGES, quiet=5.0)

    try:
        kid = fork_child(lambda: asyncio.run(in_child()))
        child_port = int(read_lines(ready_r, 1)[0])
        by_port = clients_by_port(observer)
        child_entry, parent_now = by_port[child_port], by_port[parent_port]
        assert child_entry["id"] != parent_entry["id"] and child_entry["sub"] == "2"
        assert parent_now["id"] == parent_entry["id"] and parent_now["sub"] == "1"
        for i in range(MESSAGES):
            observer.publish(channel, str(i))
        parent_got = loop.run_until_complete(_adrain(pubsub, channel, MESSAGES, quiet=5.0))
        child_got = kid.result(30)
    finally:
        os.close(ready_r)
        os.close(ready_w)
        loop.run_until_complete(pubsub.aclose())
        loop.run_until_complete(client.aclose())
        loop.close()
    expected = [str(i) for i in range(MESSAGES)]
    assert parent_got == expected and child_got == expected


# -- 6. RedisCluster (a real cluster-mode redis-server) -------------------------------------------


def _free_cluster_port() -> int:
    """A port P with P and the cluster bus port P + 10000 both free on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    """A one-node Redis Cluster owning all 16384 slots, started for this module."""
    server = shutil.which("redis-server")
    if server is None:
        msg = "redis-server is not on PATH (needed to start a cluster-mode node)"
        if REQUIRED:
            pytest.fail(msg + "; POSTFORK_REQUIRE_SERVICES=1 requires it", pytrace=False)
        pytest.skip(msg)
    workdir = tempfile.mkdtemp(prefix="postfork-cluster-")
    port = _free_cluster_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
         "--cluster-config-file", os.path.join(workdir, "nodes.conf"), "--dir", workdir,
         "--save", "", "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        admin = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                admin.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "node did not start"
                time.sleep(0.05)
        admin.execute_command("CLUSTER ADDSLOTSRANGE", 0, 16383)
        while admin.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
            assert time.monotonic() < deadline, "cluster_state never became ok"
            time.sleep(0.05)
        admin.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _node_pool(cluster: RedisCluster, key: str) -> Any:
    return cluster.get_redis_connection(cluster.get_node_from_key(key)).connection_pool


def _cluster_child(cluster: RedisCluster, key: str,
                   parent_inode: int = -1) -> Tuple[int, bytes, bool]:
    inherited_open = parent_inode in open_socket_inodes()  # right after the resets
    return _node_client_id(cluster, key), cluster.get(key), inherited_open


def _node_client_id(cluster: RedisCluster, key: str) -> int:
    return int(cluster.get_redis_connection(cluster.get_node_from_key(key)).client_id())


@pytest.mark.parametrize("explicit_reset", [True, False], ids=["reset_all", "at_fork_hook_only"])
def test_cluster_registered_child_gets_own_node_connections(
        cluster_url: str, managed: Callable[[Any], Any], explicit_reset: bool) -> None:
    cluster = managed(RedisCluster.from_url(cluster_url, socket_timeout=5))
    key = f"postfork-test:{uuid.uuid4().hex}"
    cluster.set(key, "v")
    parent_id = _node_client_id(cluster, key)
    parent_sock = _node_pool(cluster, key)._available_connections[0]._sock
    parent_inode = os.fstat(parent_sock.fileno()).st_ino
    # A parent thread inside the nodes manager at fork: without the reset, the child's first
    # command would wait for this lock forever.
    with held_by_a_parent_thread(cluster.nodes_manager._lock):
        child_id, value, inherited_open = fork_child(
            _cluster_child, cluster, key, parent_inode, reset=explicit_reset).result(20)
    assert value == b"v" and child_id != parent_id and not inherited_open
    assert _node_client_id(cluster, key) == parent_id and cluster.get(key) == b"v"
    cluster.close()


def test_cluster_unmanaged_lock_held_at_fork_blocks_the_child(cluster_url: str) -> None:
    cluster = RedisCluster.from_url(cluster_url, socket_timeout=5)
    key = f"postfork-test:{uuid.uuid4().hex}"
    cluster.set(key, "v")
    try:
        with held_by_a_parent_thread(cluster.nodes_manager._lock):
            with pytest.raises(ChildError, match="did not finish"):
                run_in_child(_cluster_child, cluster, key, timeout=2)
    finally:
        cluster.close()


# -- the reset itself -----------------------------------------------------------------------------


def test_reset_sends_nothing_and_keeps_parent_connection(
        redis_url: str, observer: "redis.Redis", managed: Callable[[Any], Any]) -> None:
    """A child that resets and exits without using the client: the parent's connection is the
    same one (no shutdown, no QUIT reached the server) and has nothing unread."""
    client = managed(redis.Redis.from_url(redis_url, single_connection_client=True))
    parent_id = client.client_id()
    port = local_port(client.connection)
    assert run_in_child(lambda: postfork.reset_all().ok) is True
    assert not select.select([client.connection._sock], [], [], 0.2)[0]
    assert clients_by_port(observer)[port]["id"] == str(parent_id)
    assert client.client_id() == parent_id
    client.close()


def test_reset_is_idempotent_in_one_process(redis_url: str, managed: Callable[[Any], Any]) -> None:
    """Forcing the resets again in the child keeps the child's own new connection."""
    client = managed(redis.Redis.from_url(redis_url, single_connection_client=True))
    pool_client = managed(redis.Redis.from_url(redis_url))
    client.ping()
    pool_client.ping()

    def child() -> Tuple[bool, bool]:
        first, first_pool = client.client_id(), pool_client.client_id()
        postfork.reset_all(force=True)
        return client.client_id() == first, pool_client.client_id() == first_pool

    assert run_in_child(child) == (True, True)
    client.close()
    pool_client.close()


@pytest.mark.usefixtures("clean_registry")
def test_reset_keeps_redis_rule_on_a_parent_connection_released_in_the_child(redis_url: str) -> None:
    # redis-py's own rule (its tests/test_multiprocessing.py): a connection the parent checked
    # out, released in a child, is ignored by the child's pool. Regression: the reset set
    # conn.pid to the child's pid, so the child's pool took the parent's connection. (A
    # BlockingConnectionPool raises queue.Full there, with or without postfork: redis-py's.)
    pool = postfork.register(redis.ConnectionPool.from_url(redis_url))
    parent_conn = pool.get_connection()
    try:
        def child() -> Tuple[bool, bool, int]:
            pool.release(parent_conn)
            again = pool.get_connection()  # the child's own, new connection
            return (parent_conn.pid != os.getpid(), again is parent_conn,
                    redis.Redis(connection_pool=pool).client_id())

        foreign, reused, child_id = run_in_child(child)
        assert foreign and not reused
        assert child_id != redis.Redis(connection_pool=pool).client_id()
    finally:
        pool.release(parent_conn)
        pool.disconnect()
