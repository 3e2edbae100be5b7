"""kombu against the real RabbitMQ (py-amqp transport) and the real Redis (redis transport),
forking for real.

The hazard first: a child's ``release()`` -- and kombu's own after-fork ``collect()``, which
ends in py-amqp's ``sock.shutdown()`` -- ends the master's broker connection; kombu.pools'
own after-fork cleanup (run in a ``multiprocessing`` child) does the same to the master's
pooled connections; on the redis transport a child draining events reads the reply to the
master's BRPOP and takes its messages. Then the fix: registered, the child's first publish
opens its own connection, the master's connection is the same one afterwards (RabbitMQ's
``list_connections``, Redis's ``CLIENT LIST``), received nothing from the children, and still
publishes and consumes.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import socket
import sys
import time
import uuid
import warnings
from typing import Any, Callable, Dict, List, Tuple

import pytest

import postfork
from _alarm import StillWaiting, alarm
from _locks import held_by_a_parent_thread
from _polling import wait_until
from postfork.testing import fork_child, run_in_child

kombu = pytest.importorskip("kombu")
import kombu.pools  # noqa: E402

Listing = Callable[[], Dict[int, Dict[str, Any]]]
HERE = os.path.relpath(__file__)
REDIS_DB = 12  # a database of its own: nothing another test flushes


def amqp_port(conn: Any) -> int:
    """The client's port of a py-amqp connection: RabbitMQ lists it as ``peer_port``."""
    return int(conn.connection._transport.sock.getsockname()[1])


def redis_port(conn: Any) -> int:
    """The client's port of the redis connection a kombu redis channel consumes on."""
    return int(conn.default_channel.client.connection._sock.getsockname()[1])


def redis_ports(conn: Any) -> List[int]:
    """The client's ports of every redis connection a kombu redis channel holds."""
    channel = conn.default_channel
    conns = [getattr(channel.client, "connection", None)]
    for pool in (channel._pool, channel._async_pool):
        if pool is not None:
            conns += list(pool._available_connections) + list(pool._in_use_connections)
    return sorted({c._sock.getsockname()[1] for c in conns if c is not None and c._sock is not None})


def a_queue(prefix: str = "postfork-test") -> Any:
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    return kombu.Queue(name, kombu.Exchange(name, "direct"), routing_key=name, auto_delete=False,
                       durable=False)


def payloads(conn: Any, queue: Any, timeout: float = 1.0) -> List[Any]:
    """Every message waiting in ``queue``, consumed (and the queue deleted) with ``conn``."""
    out = []
    with conn.SimpleQueue(queue) as simple:
        while True:
            try:
                message = simple.get(timeout=timeout)
            except simple.Empty:
                break
            out.append(message.payload)
            message.ack()
    queue(conn.default_channel).delete()
    return out


@pytest.fixture
def redis_broker(redis_url: str) -> str:
    base, _, _ = redis_url.rpartition("/")
    return f"{base}/{REDIS_DB}"


# -- the hazard, unmanaged ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["release", "collect"])
def test_unmanaged_child_ends_the_masters_connection(amqp_url: str, broker_connections: Listing,
                                                     how: str) -> None:
    """``release()`` sends Connection.Close; ``collect()`` -- what kombu and Celery run after
    fork to drop a connection "without I/O" -- calls py-amqp's ``Transport.close()``, which
    ``shutdown()``s the shared socket. Either way the broker drops the master's connection."""
    conn = kombu.Connection(amqp_url)
    conn.connect()
    port = amqp_port(conn)
    try:
        assert port in broker_connections()
        run_in_child(getattr(conn, how))
        assert wait_until(lambda: port not in broker_connections(), 15, interval=0.1), "the broker kept it"
        with pytest.raises(conn.connection_errors):
            conn.default_channel.queue_declare(f"postfork-test-{uuid.uuid4().hex}", auto_delete=True)
    finally:
        conn.collect()  # nothing left to say goodbye on


def _noop() -> None:
    pass


def test_kombu_pools_own_after_fork_cleanup_ends_the_masters_pooled_connection(
        amqp_url: str, broker_connections: Listing) -> None:
    """kombu registers ``force_close_all`` with multiprocessing's after-fork hooks for every
    pool: in a ``multiprocessing`` child it ``collect()``s the pooled connections, and the
    master's go with them. Registered with postfork, the same child leaves them alone: our
    at-fork reset retires their sockets before kombu's cleanup runs."""
    context = multiprocessing.get_context("fork")
    results = {}
    for managed in (False, True):
        conn = kombu.Connection(amqp_url)
        pool = kombu.pools.connections[conn]
        if managed:
            postfork.register(pool)
        try:
            with pool.acquire(block=True, timeout=10) as pooled:
                pooled.connect()
                port = amqp_port(pooled)
            process = context.Process(target=_noop)
            process.start()
            process.join(30)
            assert process.exitcode == 0
            wait_until(lambda: port not in broker_connections(), 2 if managed else 15,
                       interval=0.1)
            results[managed] = port in broker_connections()
        finally:
            postfork.unregister(pool)
            pool.force_close_all()
            del kombu.pools.connections[conn]
    assert results == {False: False, True: True}


def test_unmanaged_child_takes_the_masters_redis_messages(redis_broker: str) -> None:
    """The master's consumer has a BRPOP in flight on a connection kombu holds outside the
    pool; a child draining events reads its reply: every message, here, while the master was
    busy. The master's ``release()`` then waits forever for that reply (bounded by an alarm)."""
    queue = a_queue()
    received: List[Any] = []
    conn = kombu.Connection(redis_broker)
    consumer = conn.Consumer(queue, callbacks=[lambda body, m: (received.append(body), m.ack())],
                             accept=["json"])
    consumer.consume()
    with pytest.raises(socket.timeout):
        conn.drain_events(timeout=0.3)  # leaves a BRPOP pending on the master's connection
    n = 5

    def child() -> int:
        received.clear()
        deadline = time.monotonic() + 15
        while len(received) < n and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.2)
            except socket.timeout:
                pass
        return len(received)

    running = fork_child(child)
    with kombu.Connection(redis_broker) as publisher:
        producer = publisher.Producer()
        for i in range(n):
            producer.publish({"n": i}, exchange=queue.exchange, routing_key=queue.routing_key,
                             declare=[queue])
    child_got = running.result(timeout=30)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=0.2)
        except socket.timeout:
            pass
    assert (child_got, len(received)) == (n, 0)
    with pytest.raises(StillWaiting):
        with alarm(3.0):
            conn.release()  # reads the reply to its BRPOP, which the child took


# -- registered ------------------------------------------------------------------------------


def test_registered_connection_and_producer_publish_on_the_childs_own_connection(
        amqp_url: str, broker_connections: Listing) -> None:
    conn = postfork.register(kombu.Connection(amqp_url))
    queue = a_queue()
    producer = postfork.register(conn.Producer())
    stale = conn.Producer()  # unmanaged: holds the master's channel once it published
    producer.publish({"from": "master"}, exchange=queue.exchange, routing_key=queue.routing_key,
                     declare=[queue])
    stale.publish({"from": "master, stale"}, exchange=queue.exchange,
                  routing_key=queue.routing_key, declare=[queue])
    port = amqp_port(conn)

    def child() -> Dict[str, Any]:
        out: Dict[str, Any] = {"pid": os.getpid(), "connected": conn.connected}
        producer.publish({"from": os.getpid()}, exchange=queue.exchange,
                         routing_key=queue.routing_key, declare=[queue])
        out["port"] = amqp_port(conn)
        try:  # retry=True: kombu's ensure() would retry forever on the dead channel
            stale.publish({"from": "stale"}, exchange=queue.exchange,
                          routing_key=queue.routing_key, retry=True)
        except postfork.RetiredError as exc:
            out["stale"] = str(exc)
        conn.release()  # the child's own connection: Connection.Close on its own socket
        return out

    try:
        before = broker_connections()[port]
        children = [run_in_child(child, timeout=30) for _ in range(3)]
        after = broker_connections()[port]
        for out in children:
            assert out["connected"] is False  # forgotten in the child: reconnects on first use
            assert out["port"] != port
            assert "postfork.local(" in out["stale"]
        assert len({out["port"] for out in children}) == 3
        # From the broker's side: the same connection, and not one read on it meanwhile.
        assert after["connected_at"] == before["connected_at"]
        assert after["recv_cnt"] == before["recv_cnt"]
        # The master still publishes and consumes, the children's messages included.
        producer.publish({"from": "master again"}, exchange=queue.exchange,
                         routing_key=queue.routing_key)
        got = payloads(conn, queue)
        assert sorted(str(p["from"]) for p in got) == sorted(
            ["master", "master, stale", "master again"] + [str(o["pid"]) for o in children])
        assert amqp_port(conn) == port
    finally:
        postfork.unregister(producer)
        postfork.unregister(conn)
        conn.release()


def test_registered_redis_connection_keeps_the_masters_messages(redis_broker: str) -> None:
    import redis

    server = redis.Redis.from_url(redis_broker)

    def client_ids() -> Dict[int, int]:
        return {int(c["addr"].rsplit(":", 1)[1]): int(c["id"]) for c in server.client_list()}

    queue = a_queue()
    received: List[Any] = []
    conn = postfork.register(kombu.Connection(redis_broker))
    consumer = conn.Consumer(queue, callbacks=[lambda body, m: (received.append(body), m.ack())],
                             accept=["json"])
    consumer.consume()
    with pytest.raises(socket.timeout):
        conn.drain_events(timeout=0.3)  # a BRPOP pending on the master's connection at fork
    port = redis_port(conn)
    master_id = client_ids()[port]
    n = 5

    def child() -> Tuple[int, List[int]]:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # a child that drains: nothing of the master's
            try:
                conn.drain_events(timeout=0.2)
            except socket.timeout:
                pass
        conn.Producer().publish({"n": "child"}, exchange=queue.exchange,
                                routing_key=queue.routing_key, declare=[queue])
        mine = redis_ports(conn)
        conn.release()
        return len(received), mine

    try:
        running = fork_child(child)
        with kombu.Connection(redis_broker) as publisher:
            producer = publisher.Producer()
            for i in range(n):
                producer.publish({"n": i}, exchange=queue.exchange, routing_key=queue.routing_key,
                                 declare=[queue])
        child_got, child_ports = running.result(timeout=30)
        deadline = time.monotonic() + 10
        while len(received) < n + 1 and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.2)
            except socket.timeout:
                pass
        assert child_got == 0 and child_ports and port not in child_ports
        assert sorted(str(body["n"]) for body in received) == sorted(
            [str(i) for i in range(n)] + ["child"])
        assert client_ids().get(port) == master_id  # the same server-side connection
    finally:
        consumer.cancel()
        postfork.unregister(conn)
        conn.release()
        server.close()


def test_registered_pool_groups_give_each_child_its_own_pooled_connection(
        amqp_url: str, broker_connections: Listing) -> None:
    postfork.register(kombu.pools.connections)
    postfork.register(kombu.pools.producers)
    conn = kombu.Connection(amqp_url)
    queue = a_queue()

    def publish(body: Any) -> int:
        with kombu.pools.producers[conn].acquire(block=True, timeout=10) as producer:
            producer.publish(body, exchange=queue.exchange, routing_key=queue.routing_key,
                             declare=[queue])
            return amqp_port(producer.connection)

    def child() -> Tuple[int, int]:
        port = publish({"from": os.getpid()})
        kombu.pools.producers[conn].force_close_all()  # harmless: collect() of our own
        return os.getpid(), port

    try:
        master_port = publish({"from": "master"})
        before = broker_connections()[master_port]
        children = [run_in_child(child, timeout=30) for _ in range(3)]
        after = broker_connections()[master_port]
        assert master_port not in {port for _, port in children}
        assert len({port for _, port in children}) == 3
        assert (after["connected_at"], after["recv_cnt"]) == (before["connected_at"], before["recv_cnt"])
        assert publish({"from": "master again"}) == master_port  # the same pooled connection
        with kombu.Connection(amqp_url) as reader:
            got = payloads(reader, queue)
        assert sorted(str(p["from"]) for p in got) == sorted(
            ["master", "master again"] + [str(pid) for pid, _ in children])
    finally:
        postfork.unregister(kombu.pools.producers)
        postfork.unregister(kombu.pools.connections)
        kombu.pools.reset()  # the master's own: closes its pooled connections


def test_pool_lock_held_by_a_parent_thread_at_fork(amqp_url: str) -> None:
    conn = kombu.Connection(amqp_url)
    pool = postfork.register(conn.Pool(limit=2))

    def child() -> Tuple[bool, float, int]:
        report = postfork.reset_all()
        with pool.acquire(block=True, timeout=5) as pooled:
            pooled.connect()
            return report.ok, report.seconds, amqp_port(pooled)

    try:
        with pool.acquire(block=True, timeout=10) as pooled:
            pooled.connect()
        with held_by_a_parent_thread(pool._resource.mutex):
            ok, seconds, port = run_in_child(child, timeout=20)
        assert ok and seconds < 2.0 and port > 0
    finally:
        postfork.unregister(pool)
        pool.force_close_all()


# -- the guard -------------------------------------------------------------------------------


def _child_findings() -> List[Tuple[str, str, str]]:
    try:
        report = postfork.reset_all()
    except postfork.ForkSafetyError as exc:
        report = exc.report
    return [(f.kind, f.subject, f.created_at or "") for f in report.findings]


def test_guard_names_the_users_connections_never_celerys(
        amqp_url: str, redis_broker: str, restore_guard: None) -> None:
    """An unmanaged kombu Connection built in the application is one finding at its line
    (a redis-transport one too: the redis-py clients its channel built are its own, not more
    findings); a registered one is none, nor are its sockets; Celery's own broker connection
    (built inside Celery) is none either."""
    celery = pytest.importorskip("celery")
    postfork.guard("warn")
    unmanaged = kombu.Connection(amqp_url)
    line = sys._getframe().f_lineno - 1
    unmanaged_redis = kombu.Connection(redis_broker)
    redis_line = line + 2
    managed = postfork.register(kombu.Connection(amqp_url))
    app = celery.Celery("postfork_guard_kombu", broker=amqp_url)
    celerys = app.connection_for_write()
    for conn in (unmanaged, unmanaged_redis, managed, celerys):
        conn.default_channel  # connected before the fork

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            findings = run_in_child(_child_findings)
    finally:
        postfork.unregister(managed)
        for conn in (unmanaged, unmanaged_redis, managed, celerys):
            conn.release()
    ours = [f for f in findings if f[2].startswith(HERE + ":")]
    assert sorted(ours) == sorted([("client", "kombu.Connection", f"{HERE}:{line}"),
                                   ("client", "kombu.Connection", f"{HERE}:{redis_line}")]), findings
    assert not [f for f in findings if f[0] == "client" and "celery" in f[2]], findings
    # The sockets of the unmanaged ones are part of their findings; the managed one's are
    # retired; Celery's are the server's.
    assert not [f for f in findings if f[0] == "socket" and (f[2].startswith(HERE) or "celery" in f[2])]


def test_guard_counts_pooled_clients_of_a_registered_pool_group_as_managed(
        amqp_url: str, restore_guard: None) -> None:
    """kombu.pools builds connections and producers inside kombu, on the application's
    ``acquire()``: unmanaged, the guard names the producer there (its pooled connection is part
    of it) and the connection the pool is keyed by; with the pool groups registered, nothing."""
    postfork.guard("warn")
    for managed in (False, True):
        conn = kombu.Connection(amqp_url)
        conn_site = f"{HERE}:{sys._getframe().f_lineno - 1}"
        if managed:
            postfork.register(kombu.pools.connections)
            postfork.register(kombu.pools.producers)
        with kombu.pools.producers[conn].acquire(block=True, timeout=10) as producer:
            acquire_site = f"{HERE}:{sys._getframe().f_lineno - 1}"
            producer.connection.default_channel  # connected before the fork
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                findings = run_in_child(_child_findings)
        finally:
            postfork.unregister(kombu.pools.connections)
            postfork.unregister(kombu.pools.producers)
            kombu.pools.reset()
            del conn, producer
            gc.collect()  # this round's clients, in kombu's reference cycles, are not the next's
        ours = sorted((f[1], f[2]) for f in findings if f[2].startswith(HERE + ":"))
        if managed:
            assert ours == [], findings
        else:
            assert ours == sorted([("kombu.Connection", conn_site),
                                   ("kombu.Producer", acquire_site)]), findings
