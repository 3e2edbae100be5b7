"""pika's BlockingConnection against the real RabbitMQ, forking for real.

The hazard first (pika#766: both processes read and write one AMQP socket): a child's
``close()`` ends the master's connection, and a child that drains the socket takes the
master's deliveries. Then the fix: registered, the connection and its channels are retired in
the child (``postfork.RetiredError``, which is also pika's own ``*WrongStateError``), nothing
reaches the broker on the master's connection, and the child publishes on a connection of
its own (``postfork.local``). Connections are told apart from the broker's side:
``rabbitmqctl list_connections`` (peer port, connected_at, frames received).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from typing import Any, Callable, Dict, Iterator, List, Tuple
from urllib.parse import unquote, urlparse

import pytest

import postfork
from _alarm import StillWaiting, alarm
from _locks import held_by_a_parent_thread
from _polling import wait_until
from postfork.testing import fork_child, run_in_child

pika = pytest.importorskip("pika")

Listing = Callable[[], Dict[int, Dict[str, Any]]]
HERE = os.path.relpath(__file__)


def params(amqp_url: str) -> Any:
    """``amqp_url`` is written kombu's way (``amqp://guest:guest@host:5672//``: vhost "/").
    heartbeat=0: an idle connection sends nothing, so the broker's count of frames received
    on it shows whether anyone wrote to it."""
    url = urlparse(amqp_url)
    vhost = unquote(url.path[1:]) if len(url.path) > 1 else "/"
    return pika.ConnectionParameters(
        host=url.hostname or "127.0.0.1", port=url.port or 5672, virtual_host=vhost,
        credentials=pika.PlainCredentials(url.username or "guest", url.password or "guest"),
        heartbeat=0, connection_attempts=1, blocked_connection_timeout=30)


def local_port(conn: Any) -> int:
    """The client's port: the broker lists the connection by it (``peer_port``)."""
    return int(conn._impl._transport._sock.getsockname()[1])


def drain(conn: Any, until: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        conn.process_data_events(0.1)


def safe_close(conn: Any) -> None:
    try:
        if conn.is_open:
            conn.close()
    except Exception:  # a connection the hazard broke
        pass


@pytest.fixture
def consuming(amqp_url: str) -> Iterator[Tuple[Any, Any, str, List[bytes]]]:
    """A master connection consuming (auto-ack) from a queue of its own: (conn, channel,
    queue, bodies received)."""
    conn = pika.BlockingConnection(params(amqp_url))
    channel = conn.channel()
    queue = channel.queue_declare(f"postfork-test-{os.getpid()}-{id(conn)}", auto_delete=True).method.queue
    received: List[bytes] = []
    channel.basic_consume(queue, lambda _ch, _m, _p, body: received.append(body), auto_ack=True)
    try:
        yield conn, channel, queue, received
    finally:
        postfork.unregister(conn)
        safe_close(conn)


def publish(amqp_url: str, queue: str, *bodies: bytes) -> None:
    """Publish from a connection of this process's own."""
    with pika.BlockingConnection(params(amqp_url)) as conn:
        channel = conn.channel()
        for body in bodies:
            channel.basic_publish("", queue, body)


# -- the hazard, unmanaged ---------------------------------------------------------------------


def test_unmanaged_child_close_drops_the_masters_connection(amqp_url: str,
                                                            broker_connections: Listing) -> None:
    """The child's ``close()`` sends Connection.Close on the shared socket, and its ioloop
    unregisters the socket from the epoll instance it shares with the master: the broker drops
    the master's connection, the master's next call fails, and its own ``close()`` then waits
    for an event its epoll no longer watches (bounded here by an alarm)."""
    conn = pika.BlockingConnection(params(amqp_url))
    channel = conn.channel()
    port = local_port(conn)
    assert port in broker_connections()
    run_in_child(conn.close)
    assert wait_until(lambda: port not in broker_connections(), 15, interval=0.1), "the broker kept it"
    with pytest.raises((pika.exceptions.AMQPError, OSError)):
        channel.basic_publish("", "postfork-test-nowhere", b"x")
        conn.process_data_events(0.5)
    assert conn.is_open  # pika never learned it
    with pytest.raises(StillWaiting):
        with alarm(3.0):
            conn.close()


def test_unmanaged_child_takes_the_masters_deliveries(amqp_url: str, consuming: Any) -> None:
    """A child that drains the inherited connection reads the deliveries meant for the
    master's consumer: every one of them, here, while the master was busy."""
    conn, _, queue, received = consuming
    n = 20

    def child() -> int:
        received.clear()
        drain(conn, lambda: len(received) >= n, 15)
        return len(received)

    running = fork_child(child)
    publish(amqp_url, queue, *(b"%d" % i for i in range(n)))
    child_got = running.result(timeout=30)
    drain(conn, lambda: len(received) >= n, 1.0)
    assert (child_got, len(received)) == (n, 0)


# -- registered: retired in the child ----------------------------------------------------------


def _retired_call(call: Callable[[], Any]) -> Tuple[str, ...]:
    try:
        call()
    except postfork.RetiredError as exc:
        return tuple(cls.__name__ for cls in type(exc).__mro__ if cls.__module__.startswith("pika")) + (str(exc),)
    return ("no error",)


def test_registered_connection_is_retired_and_the_master_keeps_its_session(
        amqp_url: str, consuming: Any, broker_connections: Listing) -> None:
    conn, channel, queue, received = consuming
    postfork.register(conn)
    port = local_port(conn)
    before = broker_connections()[port]

    def child() -> Dict[str, Any]:
        out: Dict[str, Any] = {"open": (conn.is_open, channel.is_open)}
        out["publish"] = _retired_call(lambda: channel.basic_publish("", queue, b"inherited"))
        out["channel"] = _retired_call(conn.channel)
        out["drain"] = _retired_call(lambda: conn.process_data_events(0.1))
        channel.close()  # harmless: nothing to send
        conn.close()
        with pika.BlockingConnection(params(amqp_url)) as own:  # the child's own connection
            out["port"] = local_port(own)
            out["pid"] = os.getpid()
            own.channel().basic_publish("", queue, b"child %d" % os.getpid())
        return out

    children = [run_in_child(child) for _ in range(3)]
    after = broker_connections()[port]  # the master was idle meanwhile
    for out in children:
        assert out["open"] == (False, False)
        assert out["publish"][:1] == ("ChannelWrongStateError",)
        assert out["channel"][:1] == ("ConnectionWrongStateError",)
        assert out["drain"][:1] == ("ConnectionWrongStateError",)
        assert "postfork.local(lambda: pika.BlockingConnection(params))" in out["channel"][-1]
        assert out["port"] != port
    assert len({out["port"] for out in children}) == 3
    # From the broker's side: the same connection, and not one frame arrived on it.
    assert (after["connected_at"], after["state"]) == (before["connected_at"], "running")
    assert after["recv_cnt"] == before["recv_cnt"]
    # The master still publishes and consumes: its own message and the children's.
    channel.basic_publish("", queue, b"master")
    drain(conn, lambda: len(received) >= 4, 10)
    assert sorted(received) == sorted([b"master"] + [b"child %d" % out["pid"] for out in children])


def test_registered_channel_retires_its_connection(amqp_url: str, consuming: Any) -> None:
    conn, channel, queue, received = consuming
    postfork.register(channel)

    def child() -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
        return (_retired_call(lambda: channel.basic_publish("", queue, b"x")),
                _retired_call(conn.channel))

    try:
        on_channel, on_connection = run_in_child(child)
    finally:
        postfork.unregister(channel)
    assert on_channel[0] == "ChannelWrongStateError"
    assert on_connection[0] == "ConnectionWrongStateError"
    channel.basic_publish("", queue, b"master")
    drain(conn, lambda: bool(received), 10)
    assert received == [b"master"]


def test_lock_held_by_a_parent_thread_at_fork(amqp_url: str) -> None:
    conn = postfork.register(pika.BlockingConnection(params(amqp_url)))

    def child() -> Tuple[bool, float]:
        report = postfork.reset_all()
        return report.ok, report.seconds

    try:
        with held_by_a_parent_thread(conn._cleanup_mutex):
            ok, seconds = run_in_child(child, timeout=20)
        assert ok and seconds < 2.0
        assert conn.channel().is_open  # the master's connection works
    finally:
        postfork.unregister(conn)
        conn.close()


def test_local_gives_each_process_its_own_connection(amqp_url: str,
                                                     broker_connections: Listing) -> None:
    amqp = postfork.local(lambda: pika.BlockingConnection(params(amqp_url)))
    channel = amqp.channel()
    queue = channel.queue_declare(f"postfork-test-local-{os.getpid()}", auto_delete=True).method.queue
    port = local_port(amqp.get())
    before = broker_connections()[port]

    def child() -> int:
        ch = amqp.channel()  # this process's own connection, built on first use
        ch.basic_publish("", queue, b"child")
        mine = local_port(amqp.get())
        amqp.close()
        return mine

    try:
        ports = [run_in_child(child) for _ in range(2)]
        assert port not in ports and len(set(ports)) == 2
        after = broker_connections()[port]
        assert after["connected_at"] == before["connected_at"]
        assert channel.queue_declare(queue, passive=True).method.message_count == 2
    finally:
        amqp.close()


# -- the guard -------------------------------------------------------------------------------


def test_guard_names_an_unmanaged_connection_and_reports_the_retired_one(
        amqp_url: str, restore_guard: None) -> None:
    postfork.guard("warn")
    unmanaged = pika.BlockingConnection(params(amqp_url))
    line = sys._getframe().f_lineno - 1
    managed = postfork.register(pika.BlockingConnection(params(amqp_url)))
    managed_line = line + 2
    managed.channel()

    def child() -> Tuple[List[Tuple[str, str]], List[str]]:
        report = postfork.reset_all()
        findings = [(f.subject, f.created_at or "") for f in postfork.check() if f.kind == "client"]
        return findings, [e.name for e in report.retired]

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            findings, retired = run_in_child(child)
    finally:
        postfork.unregister(managed)
        managed.close()
        unmanaged.close()
    mine = [f for f in findings if f[1].startswith(HERE + ":")]
    assert mine == [("pika.BlockingConnection", f"{HERE}:{line}")], findings
    assert f"{HERE}:{managed_line}" not in {f[1] for f in findings}
    assert "pika.BlockingConnection" in retired
