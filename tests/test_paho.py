"""paho-mqtt against the real Mosquitto, forking for real.

Evidence from the broker's side: Mosquitto's own log (``log_dest file`` in
/etc/mosquitto/mosquitto.conf) names every connection with its source port and client id, and
says when it closes one ("Client X already connected, closing old connection" is a session
takeover). Evidence from the application's side: a third client subscribed to the test's own
topic counts what arrives, and the master counts its ``on_disconnect`` calls.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
import warnings
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlparse

import pytest

import postfork
from _locks import held_by_a_parent_thread
from _polling import wait_until
from postfork.testing import ChildError, fork_child, run_in_child

mqtt = pytest.importorskip("paho.mqtt.client")

MOSQUITTO_CONF = "/etc/mosquitto/mosquitto.conf"
HERE = os.path.relpath(__file__)


# -- helpers ----------------------------------------------------------------------------------

class BrokerLog:
    """Mosquitto's log file, from where it ended when the test began."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = os.path.getsize(path)

    def text(self) -> str:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read().decode("utf-8", "replace")

    def wait_for(self, pattern: str, timeout: float = 10.0) -> List[str]:
        return wait_until(lambda: re.findall(pattern, self.text()), timeout) or []


def _log_path() -> Optional[str]:
    try:
        with open(MOSQUITTO_CONF) as f:
            for line in f:
                parts = line.split()
                if parts[:2] == ["log_dest", "file"] and len(parts) > 2:
                    return parts[2]
    except OSError:
        pass
    return None


@pytest.fixture
def broker_log(mqtt_url: str) -> BrokerLog:
    path = _log_path()
    if path is None or not os.access(path, os.R_OK):
        pytest.skip(f"Mosquitto's log is not readable here ({MOSQUITTO_CONF}: log_dest file)")
    return BrokerLog(path)


@pytest.fixture
def name() -> str:
    """The test's own client-id prefix and topic root."""
    return f"postfork-test-{uuid.uuid4().hex[:10]}"


class Client:
    """A connected paho client with its network thread (``loop_start``), counting its
    disconnects and the messages it receives."""

    def __init__(self, url: str, client_id: str, *, will: Optional[str] = None,
                 subscribe: Tuple[str, ...] = ()) -> None:
        u = urlparse(url)
        self.disconnects: List[Any] = []
        self.messages: List[Tuple[str, bytes]] = []
        self.subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        c.reconnect_delay_set(1, 2)
        c.on_disconnect = lambda *args: self.disconnects.append(args[3])
        c.on_message = lambda _c, _u, msg: self.messages.append((msg.topic, msg.payload))
        c.on_subscribe = lambda *args: self.subscribed.set()
        if subscribe:
            c.on_connect = lambda cl, *args: cl.subscribe([(t, 1) for t in subscribe])
        if will is not None:
            c.will_set(will, b"offline", qos=1)
        c.connect(u.hostname or "127.0.0.1", u.port or 1883, keepalive=30)
        c.loop_start()
        self.client = c
        assert wait_until(c.is_connected), "the client did not connect"
        if subscribe:
            assert self.subscribed.wait(10), "no SUBACK"

    def payloads(self, topic: str) -> List[bytes]:
        return [p for t, p in self.messages if t == topic]

    def port(self) -> int:
        return int(self.client.socket().getsockname()[1])

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients() -> Iterator[List[Client]]:
    made: List[Client] = []
    yield made
    for c in made:
        postfork.unregister(c.client)
        c.stop()


# -- the hazards, unmanaged -------------------------------------------------------------------

def test_unmanaged_child_publish_is_lost(mqtt_url: str, name: str, clients: List[Client]) -> None:
    """paho #424, measured: the master's network thread does not exist in the child, paho
    still thinks it does, so the child's publish is queued for nobody and never sent, while
    paho reports success. The child cannot even start a thread of its own."""
    topic = f"{name}/events"
    watcher = Client(mqtt_url, f"{name}-watcher", subscribe=(topic,))
    master = Client(mqtt_url, f"{name}-master")
    clients += [watcher, master]

    def child() -> Tuple[List[Tuple[int, bool]], int]:
        infos = [master.client.publish(topic, f"child-{i}", qos=i % 2) for i in range(4)]
        time.sleep(1.0)
        return [(int(i.rc), i.is_published()) for i in infos], int(master.client.loop_start())

    sent, loop_start_rc = run_in_child(child, timeout=30)
    assert [rc for rc, _ in sent] == [0, 0, 0, 0]  # MQTT_ERR_SUCCESS, all four ...
    assert not any(published for _, published in sent)  # ... and not one was sent
    assert loop_start_rc == mqtt.MQTT_ERR_INVAL
    time.sleep(0.5)
    assert watcher.payloads(topic) == []  # lost
    master.client.publish(topic, b"master", qos=1).wait_for_publish(10)
    assert wait_until(lambda: watcher.payloads(topic) == [b"master"])


def test_unmanaged_child_reconnecting_takes_over_the_masters_session(
        mqtt_url: str, name: str, clients: List[Client], broker_log: BrokerLog) -> None:
    """A child that reconnects its copy (the natural fix for the lost publish) connects with
    the master's client id: the broker closes the master's connection (MQTT session
    takeover) and the master's on_disconnect fires."""
    master_id = f"{name}-master"
    master = Client(mqtt_url, master_id)
    clients.append(master)

    def child() -> bool:
        master.client.reconnect()
        return bool(wait_until(lambda: master.client.loop(0.1) == 0 and master.client.is_connected(), 10))

    assert run_in_child(child, timeout=30)
    taken = broker_log.wait_for(f"Client {re.escape(master_id)} already connected, closing old connection")
    assert taken, broker_log.text()
    assert wait_until(lambda: master.disconnects), "the master's on_disconnect did not fire"


# -- managed ----------------------------------------------------------------------------------

def test_registered_client_children_publish_on_their_own_connection(
        mqtt_url: str, name: str, clients: List[Client], broker_log: BrokerLog) -> None:
    topic, will_topic = f"{name}/events", f"{name}/status"
    watcher = Client(mqtt_url, f"{name}-watcher", subscribe=(topic, will_topic))
    master_id = f"{name}-master"
    master = Client(mqtt_url, master_id, will=will_topic)
    clients += [watcher, master]
    postfork.register(master.client)
    master_port = master.port()
    master.client.publish(topic, b"master-before", qos=1).wait_for_publish(10)

    def child() -> Tuple[int, int, str, bool]:
        pid = os.getpid()
        info = master.client.publish(topic, f"child-{pid}", qos=1)  # connects, then sends
        info.wait_for_publish(10)
        c = master.client
        assert c._thread is not None and c._thread.is_alive()  # its own network thread
        return pid, int(c.socket().getsockname()[1]), c._client_id.decode(), info.is_published()

    children = [fork_child(child) for _ in range(3)]
    results = [c.result(timeout=30) for c in children]
    pids = {pid for pid, _, _, _ in results}
    assert all(published for *_, published in results)
    assert wait_until(lambda: len(watcher.payloads(topic)) == 4, 10), watcher.messages
    assert sorted(watcher.payloads(topic)[1:]) == sorted(f"child-{p}".encode() for p in pids)

    # The broker's side: each child is a client of its own, <id>-<pid>, on its own port; the
    # master was never taken over; the children's exits (no DISCONNECT: os._exit) close their
    # connections only, and the master's will is not published for them.
    for pid, port, client_id, _ in results:
        assert client_id == f"{master_id}-{pid}"
        assert broker_log.wait_for(
            rf"New client connected from 127\.0\.0\.1:{port} as {re.escape(client_id)} \(p2, c1"), \
            broker_log.text()
        assert broker_log.wait_for(rf"Client {re.escape(client_id)} closed its connection"), \
            broker_log.text()
    time.sleep(0.5)
    assert not re.search(rf"{re.escape(name)}\S* already connected", broker_log.text())
    assert watcher.payloads(will_topic) == []
    assert master.disconnects == []
    assert master.port() == master_port and master.client.is_connected()  # the same session
    master.client.publish(topic, b"master-after", qos=1).wait_for_publish(10)
    assert wait_until(lambda: watcher.payloads(topic)[-1:] == [b"master-after"])
    assert f"{master_id} disconnected" not in broker_log.text()


def test_registered_child_disconnect_sends_nothing(
        mqtt_url: str, name: str, clients: List[Client], broker_log: BrokerLog) -> None:
    """The child's disconnect() (a cleanup at worker exit) has no connection to end: nothing
    reaches the broker. (Unmanaged it sends nothing either, measured: paho queues the
    DISCONNECT for the master's network thread, which does not exist in the child.)"""
    master_id = f"{name}-master"
    master = Client(mqtt_url, master_id)
    clients.append(master)
    postfork.register(master.client)
    assert run_in_child(master.client.disconnect) == mqtt.MQTT_ERR_NO_CONN
    time.sleep(0.5)
    assert f"{master_id} disconnected" not in broker_log.text()
    assert master.disconnects == [] and master.client.is_connected()


def test_registered_child_subscribes_again_in_on_connect(
        mqtt_url: str, name: str, clients: List[Client], broker_log: BrokerLog) -> None:
    """The child's copy keeps the callbacks: a worker that only receives starts its network
    thread (``loop_start()``, as the master did), connects as <id>-<pid>, and the subscription
    made in on_connect is made again on its own connection: one command reaches both."""
    commands, ready = f"{name}/commands", f"{name}/ready"
    master_id = f"{name}-master"
    master = Client(mqtt_url, master_id, subscribe=(commands,))
    publisher = Client(mqtt_url, f"{name}-publisher", subscribe=(ready,))
    clients += [master, publisher]
    postfork.register(master.client)

    def child() -> List[bytes]:
        c = master.client
        master.messages.clear()
        master.subscribed.clear()
        assert c.loop_start() == mqtt.MQTT_ERR_SUCCESS
        assert master.subscribed.wait(10), "no SUBACK in the child"
        c.publish(ready, str(os.getpid()), qos=1)
        got = wait_until(lambda: master.payloads(commands), 10)
        c.disconnect()
        c.loop_stop()
        return list(got)

    worker = fork_child(child)
    assert wait_until(lambda: publisher.payloads(ready), 15) == [str(worker.pid).encode()]
    publisher.client.publish(commands, b"reload", qos=1).wait_for_publish(10)
    assert worker.result(timeout=30) == [b"reload"]
    assert wait_until(lambda: master.payloads(commands) == [b"reload"])
    assert broker_log.wait_for(rf"as {re.escape(master_id)}-{worker.pid} "), broker_log.text()
    assert broker_log.wait_for(rf"Client {re.escape(master_id)}-{worker.pid} disconnected")
    assert master.disconnects == [] and master.client.is_connected()
    assert not re.search(rf"{re.escape(name)}\S* already connected", broker_log.text())


def test_lock_held_by_a_parent_thread_at_fork(mqtt_url: str, name: str, clients: List[Client]) -> None:
    topic = f"{name}/events"
    watcher = Client(mqtt_url, f"{name}-watcher", subscribe=(topic,))
    registered = Client(mqtt_url, f"{name}-registered")
    unmanaged = Client(mqtt_url, f"{name}-unmanaged")
    clients += [watcher, registered, unmanaged]
    postfork.register(registered.client)
    locks = ("_out_message_mutex", "_callback_mutex", "_mid_generate_mutex")

    def publish(c: Any) -> bool:
        c.publish(topic, b"from-child", qos=1).wait_for_publish(10)
        return True

    with held_by_a_parent_thread(*[getattr(registered.client, n) for n in locks],
                                 *[getattr(unmanaged.client, n) for n in locks]):
        assert run_in_child(publish, registered.client, timeout=20)
        # Without the reset the child's publish waits forever for the master thread's lock.
        with pytest.raises(ChildError, match="did not finish"):
            run_in_child(publish, unmanaged.client, timeout=3)
    assert wait_until(lambda: watcher.payloads(topic) == [b"from-child"])


def test_reset_sends_nothing_and_child_id_fits_mqtt31() -> None:
    """Units of the reset that need no broker: a client never connected stays unconnected; an
    MQTT 3.1 id stays within 23 bytes; an empty id stays empty (the broker assigns one)."""
    from postfork.adapters.paho import child_client_id, reset_client

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="x" * 23, protocol=mqtt.MQTTv31)
    assert child_client_id(c, 4242) == b"x" * 18 + b"-4242"
    assert child_client_id(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2), 4242) == b""
    fresh = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="never-connected")
    reset_client(fresh)
    assert "publish" not in fresh.__dict__ and fresh.socket() is None


# -- the guard --------------------------------------------------------------------------------

def _findings_in_child() -> List[Dict[str, Any]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = postfork.reset_all()
    return [f.as_dict() for f in report.findings]


def test_guard_names_an_unmanaged_client_and_its_network_thread(
        mqtt_url: str, name: str, restore_guard: None) -> None:
    u = urlparse(mqtt_url)
    postfork.guard("warn")
    unmanaged = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-unmanaged")
    line = sys_line() - 1
    managed = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-managed")
    managed_line = sys_line() - 1
    postfork.register(managed)
    try:
        for c in (unmanaged, managed):
            c.connect(u.hostname or "127.0.0.1", u.port or 1883)
            c.loop_start()
            assert wait_until(c.is_connected)
        peers = {"%s:%d" % sock.getpeername()[:2] for c in (unmanaged, managed)
                 for sock in (c.socket(), c._sockpairR, c._sockpairW)}
        findings = run_in_child(_findings_in_child)
    finally:
        postfork.unregister(managed)
        for c in (unmanaged, managed):
            c.disconnect()
            c.loop_stop()
    site = f"{HERE}:{line}"
    mine = [f for f in findings if f["created_at"] == site]
    # the client (its sockets, the broker connection and the wake-up socketpair, are part of
    # its finding) and its network thread
    assert sorted(f["kind"] for f in mine) == ["client", "thread"], findings
    # (other tests of this process may have left sockets of their own: only these clients' count)
    assert not [f for f in findings if f["kind"] == "socket" and f["subject"] in peers], findings
    client = [f for f in mine if f["kind"] == "client"][0]
    assert client["subject"] == "paho.Client" and f"pid {os.getpid()} (the master)" in client["description"]
    thread = [f for f in mine if f["kind"] == "thread"][0]
    assert thread["subject"] == f"paho-mqtt-client-{name}-unmanaged"
    assert "paho.Client" in thread["description"]  # who started it
    # The registered client, its thread and its socket: nothing.
    assert [f for f in findings if f["created_at"] == f"{HERE}:{managed_line}"] == []


def sys_line() -> int:
    import sys

    return sys._getframe(1).f_lineno
