"""confluent-kafka against librdkafka's mock cluster (one broker, in a process of its own on
127.0.0.1: the ``kafka_broker`` fixture), forking for real.

The broker's side says who is connected: the TCP connections its process holds (read from
/proc), by client port. What reaches the broker is read back with a consumer of the test's own.
A child's exit is measured in a fresh interpreter that forks, so that the child leaves through
Python's normal exit, where the inherited handle would be destroyed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from typing import Any, Dict, List, Set, Tuple

import pytest

import postfork
from _guard_findings import findings_in_a_child
from postfork.testing import ChildError, run_in_child

ck = pytest.importorskip("confluent_kafka")
from confluent_kafka import Consumer, Producer, SerializingProducer  # noqa: E402

Broker = Tuple[str, int]


@pytest.fixture
def topic() -> str:
    return f"postfork-test-{uuid.uuid4().hex[:12]}"


def conf(broker: Broker) -> Dict[str, Any]:
    return {"bootstrap.servers": broker[0], "log_level": 3}


def broker_port(broker: Broker) -> int:
    return int(broker[0].rsplit(":", 1)[1])


def _tcp(pid: str) -> List[Tuple[int, int, int]]:
    """(local port, remote port, inode) of the established TCP sockets of process ``pid``."""
    inodes = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                parts = line.split()
                inode = int(parts[9])
                if parts[3] == "01" and inode in inodes:
                    out.append((int(parts[1].rsplit(":", 1)[1], 16),
                                int(parts[2].rsplit(":", 1)[1], 16), inode))
    return out


def broker_peers(broker: Broker) -> Set[int]:
    """The broker's side: the client ports of every connection the broker holds."""
    port = broker_port(broker)
    return {remote for local, remote, _ in _tcp(str(broker[1])) if local == port}


def own_ports(broker: Broker) -> Set[int]:
    """This process's side: the local ports of its connections to the broker."""
    port = broker_port(broker)
    return {local for local, remote, _ in _tcp("self") if remote == port}


def deliver(producer: Any, topic: str, value: str) -> None:
    results: List[Any] = []
    producer.produce(topic, value.encode(), on_delivery=lambda err, msg: results.append(err))
    assert producer.flush(15) == 0
    assert results == [None], results


def consume_all(broker: Broker, topic: str, want: int, within: float = 30.0) -> List[str]:
    consumer = Consumer({**conf(broker), "group.id": f"check-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest"})
    got: List[str] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + within
        while len(got) < want and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                got.append(msg.value().decode())
        extra = time.monotonic() + 1.0  # anything beyond what was expected
        while time.monotonic() < extra:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                got.append(msg.value().decode())
    finally:
        consumer.close()
    return got


# -- 1. the hazard, and the fix, at the child's exit -----------------------------------------

_EXIT_SCRIPT = """
import json, os, signal, sys, time
from confluent_kafka import Consumer, Producer
bootstrap, kind, action, managed = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
if managed:
    import postfork
conf = {"bootstrap.servers": bootstrap, "log_level": 0}
if kind == "Producer":
    client = Producer(conf)
    client.produce("postfork-exit", b"x")
    client.flush(10)
else:
    client = Consumer({**conf, "group.id": "postfork-exit-%d" % os.getpid(),
                       "auto.offset.reset": "earliest"})
    client.subscribe(["postfork-exit"])
    client.poll(1)
if managed:
    postfork.register(client)
r, w = os.pipe()
started = time.monotonic()
pid = os.fork()
if pid == 0:
    os.close(r)
    out = "ok"
    try:
        if action == "flush":
            client.produce("postfork-exit", b"from-child")
            client.flush()
        elif action == "close":
            if kind == "Producer":
                client.produce("postfork-exit", b"from-child")  # then the shutdown's close()
            client.close()
        elif action == "produce":
            client.produce("postfork-exit", b"from-child")
    except Exception as exc:
        out = "%s: %s" % (type(exc).__name__, exc)
    os.write(w, out.encode())
    os.close(w)
    sys.exit(0)  # Python's normal exit: finalizers, the handle's destructor
os.close(w)
deadline = started + 3.0
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    if time.monotonic() > deadline:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        status = None
        break
    time.sleep(0.02)
said = os.read(r, 4096).decode()
print(json.dumps({"seconds": time.monotonic() - started, "said": said,
                  "killed": status is None,
                  "signal": os.WTERMSIG(status) if status is not None and os.WIFSIGNALED(status) else 0,
                  "code": os.WEXITSTATUS(status) if status is not None and os.WIFEXITED(status) else None}))
os._exit(0)
"""


def child_exit(broker: Broker, kind: str, action: str, managed: bool) -> Dict[str, Any]:
    """Fork in a fresh interpreter; the child does ``action`` with the inherited client and
    leaves through Python's exit. Bounded: the child is killed after 3 s."""
    out = subprocess.run([sys.executable, "-c", _EXIT_SCRIPT, broker[0], kind, action,
                          "1" if managed else "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("kind,action", [("Producer", "flush"), ("Producer", "close"),
                                         ("Consumer", "close")])
def test_hazard_unmanaged_child_hangs_in_flush_or_close(kafka_broker: Broker, kind: str,
                                                        action: str) -> None:
    """librdkafka#2374: the handle's threads are the parent's; flush() and close() wait for
    them forever (here: killed after 3 s)."""
    result = child_exit(kafka_broker, kind, action, managed=False)
    assert result["killed"], result


def test_hazard_unmanaged_consumer_aborts_the_child_at_exit(kafka_broker: Broker) -> None:
    """Destroyed at the child's exit, the inherited consumer trips an assertion in
    librdkafka's group teardown: SIGABRT."""
    result = child_exit(kafka_broker, "Consumer", "nothing", managed=False)
    assert result["signal"] == 6, result


def test_hazard_unmanaged_producer_loses_the_childs_message(kafka_broker: Broker) -> None:
    """produce() in the child queues the message; nothing sends it; the exit drops it (after
    librdkafka's destructor waited about 1 s). No error anywhere."""
    result = child_exit(kafka_broker, "Producer", "produce", managed=False)
    assert result["said"] == "ok" and result["code"] == 0, result  # silently
    assert "from-child" not in consume_all(kafka_broker, "postfork-exit", want=1)


@pytest.mark.parametrize("kind,action", [("Producer", "flush"), ("Producer", "close"),
                                         ("Producer", "produce"), ("Producer", "nothing"),
                                         ("Consumer", "close"), ("Consumer", "nothing")])
def test_registered_child_exits_at_once(kafka_broker: Broker, kind: str, action: str) -> None:
    result = child_exit(kafka_broker, kind, action, managed=True)
    assert not result["killed"] and result["code"] == 0 and result["signal"] == 0, result
    assert result["seconds"] < 1.0, result  # unmanaged: never (flush, close), or 1 s
    if kind == "Producer" and action != "nothing":
        assert result["said"].startswith("RetiredError: postfork retired this "
                                         "confluent_kafka.Producer in pid "), result
        assert "postfork.local(lambda: Producer(conf))" in result["said"]
    else:
        assert result["said"] == "ok", result  # a retired consumer's close(): nothing to do


# -- 2. the child's own producer, the parent's untouched ---------------------------------


@pytest.mark.parametrize("explicit_reset", [True, False], ids=["reset_all", "at_fork_hook_only"])
def test_registered_producer_is_retired_and_local_gives_the_child_its_own(
        kafka_broker: Broker, topic: str, explicit_reset: bool) -> None:
    parent = postfork.register(Producer(conf(kafka_broker)))
    local = postfork.local(lambda: Producer(conf(kafka_broker)))
    deliver(parent, topic, "parent-before")
    parent_ports = own_ports(kafka_broker)
    assert parent_ports and parent_ports <= broker_peers(kafka_broker)

    def child() -> Tuple[str, bool, Set[int], Set[int], Set[int]]:
        if explicit_reset:
            postfork.reset_all()
        inherited_left = own_ports(kafka_broker)  # the parent's, still open here?
        try:
            parent.produce(topic, b"from-the-inherited-producer")
            error = "no error"
        except postfork.RetiredError as exc:
            error = str(exc)
        retired = isinstance(parent, Producer)  # still one, for isinstance checks
        deliver(local(), topic, f"child-{os.getpid()}")
        return error, retired, inherited_left, own_ports(kafka_broker), broker_peers(kafka_broker)

    try:
        results = [run_in_child(child, timeout=60, reset=explicit_reset) for _ in range(2)]
        deliver(parent, topic, "parent-after")
        after_ports = own_ports(kafka_broker)
    finally:
        postfork.unregister(parent)
        postfork.unregister(local)
        parent.close()
    # librdkafka may drop its bootstrap connection once it knows the broker by id, at any
    # time: "held" below is at least one of the same connections, not all of them.
    mine = []
    for error, still_a_producer, inherited_left, ports, seen in results:
        assert "postfork.local(lambda: Producer(conf))" in error and still_a_producer
        assert inherited_left == set()  # the parent's connections are retired in the child
        assert ports and ports.isdisjoint(parent_ports)
        assert ports & seen and parent_ports & seen  # both held, at once, on the broker's side
        mine.append(ports)
    assert mine[0].isdisjoint(mine[1])
    assert after_ports & parent_ports  # the parent's connections are the same
    got = consume_all(kafka_broker, topic, want=4)
    assert sorted(got) == sorted(["parent-before", "parent-after"] +
                                 [m for m in got if m.startswith("child-")])
    assert len([m for m in got if m.startswith("child-")]) == 2
    assert "from-the-inherited-producer" not in got


def test_hazard_unmanaged_child_shares_the_parents_connections(kafka_broker: Broker,
                                                               topic: str) -> None:
    parent = Producer(conf(kafka_broker))
    deliver(parent, topic, "parent")
    parent_ports = own_ports(kafka_broker)
    inherited = run_in_child(lambda: own_ports(kafka_broker))
    assert inherited & parent_ports  # the child holds the parent's broker connections
    def produce_and_flush() -> int:
        parent.produce(topic, b"from-child")
        return int(parent.flush())  # waits for the parent's threads, which are not here

    with pytest.raises(ChildError, match="did not finish"):
        run_in_child(produce_and_flush, timeout=3)
    deliver(parent, topic, "parent-after")  # the parent's own producer is unaffected
    assert own_ports(kafka_broker) & parent_ports
    parent.close()


# -- 3. the guard ------------------------------------------------------------------------------


def test_guard_names_an_unmanaged_serializing_producer_by_its_line(
        kafka_broker: Broker, topic: str, restore_guard: None) -> None:
    postfork.guard("warn")
    unmanaged = SerializingProducer(conf(kafka_broker))
    line = sys._getframe().f_lineno - 1
    managed = postfork.register(SerializingProducer(conf(kafka_broker)))
    managed_line = sys._getframe().f_lineno - 1
    deliver(unmanaged, topic, "x")
    deliver(managed, topic, "y")
    try:
        found = findings_in_a_child()
    finally:
        postfork.unregister(managed)
        unmanaged.close()
        managed.close()
    here = os.path.relpath(__file__)
    assert ("client", "confluent_kafka.SerializingProducer", f"{here}:{line}") in found, found
    assert not [f for f in found if f[2] == f"{here}:{managed_line}"]


@pytest.mark.parametrize("kind", ["Producer", "Consumer"])
@pytest.mark.parametrize("registered", [False, True], ids=["unmanaged", "registered"])
def test_guard_names_a_plain_handle_by_its_line(kafka_broker: Broker, topic: str,
                                                restore_guard: None, kind: str,
                                                registered: bool) -> None:
    """The binding's Producer and Consumer are static C types (no ``__new__`` to set, no weak
    references): the guard observes them at their ``tp_new`` slot. Unmanaged, the guard names
    the client with its creation line (and a Producer's inherited connection to the broker);
    registered, the connection is retired and the guard does not name it."""
    postfork.guard("warn")
    if kind == "Producer":
        handle: Any = Producer(conf(kafka_broker))
        line = sys._getframe().f_lineno - 1
        deliver(handle, topic, "x")
    else:
        handle = Consumer({**conf(kafka_broker), "group.id": topic, "auto.offset.reset": "earliest"})
        line = sys._getframe().f_lineno - 1
        handle.list_topics(timeout=10)  # connected
    if registered:
        postfork.register(handle)
    try:
        found = findings_in_a_child()
    finally:
        postfork.unregister(handle)
        handle.close()
    here = os.path.relpath(__file__)
    clients = [f for f in found if f[0] == "client"]
    sockets = {f[1] for f in found if f[0] == "socket"}
    if registered:  # (another test's handle, still alive, may be named: not this one)
        assert not [c for c in clients if c[2] == f"{here}:{line}"], found
        assert kafka_broker[0] not in sockets, found
    else:
        assert ("client", f"confluent_kafka.{kind}", f"{here}:{line}") in clients, found
        if kind == "Producer":  # (a Consumer's own connections come and go with its group
            assert kafka_broker[0] in sockets, found  # coordinator lookups: not checked)


def test_tracking_a_plain_handle_is_invisible(kafka_broker: Broker, restore_guard: None) -> None:
    """What the binding's users can see of its types is unchanged by the guard's tracking."""
    from confluent_kafka import cimpl

    new = cimpl.Producer.__new__
    postfork.guard("warn")
    producer = Producer(conf(kafka_broker))
    try:
        assert type(producer) is cimpl.Producer and ck.Producer is cimpl.Producer
        assert cimpl.Producer.__new__ is new or cimpl.Producer.__new__ == new
        assert not hasattr(producer, "__dict__") and "__weakref__" not in dir(producer)
        assert isinstance(SerializingProducer.__new__(SerializingProducer), SerializingProducer)
        assert type(cimpl.Producer.__new__(cimpl.Producer)) is cimpl.Producer
    finally:
        producer.close()


def test_guard_reset_retires_an_unmanaged_plain_producer(kafka_broker: Broker, topic: str,
                                                         restore_guard: None) -> None:
    """``POSTFORK_GUARD=reset`` resets what it finds: an unmanaged Producer is retired in the
    child (its use raises RetiredError) instead of hanging it in ``flush()``."""
    postfork.guard("reset")
    producer = Producer(conf(kafka_broker))
    deliver(producer, topic, "x")

    def flush() -> str:
        try:
            producer.flush(1)
        except postfork.RetiredError as exc:
            return str(exc)
        return "flushed"

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            message = run_in_child(flush, timeout=20)
        deliver(producer, topic, "after")  # the parent's own is unaffected
    finally:
        producer.close()
    assert "postfork.local" in message, message


def test_doctor_names_a_forgotten_producer(kafka_broker: Broker) -> None:
    """``postfork doctor`` on an app that built a plain Producer at import and forgot it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFORK_")}
    env.update(PYTHONPATH=os.path.join(root, "tests", "doctor_apps"), KAFKA_BOOTSTRAP=kafka_broker[0])
    done = subprocess.run([sys.executable, "-m", "postfork", "doctor", "kafka_app", "--json"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    with open(os.path.join(root, "tests", "doctor_apps", "kafka_app.py")) as f:
        line = next(n for n, text in enumerate(f, 1) if "# finding: client" in text)
    site = os.path.join("tests", "doctor_apps", f"kafka_app.py:{line}")
    clients = [f for f in report["findings"] if f["kind"] == "client"]
    assert [(f["subject"], f["created_at"]) for f in clients] == [("confluent_kafka.Producer", site)]
    assert "postfork.local(lambda: Producer(conf))" in clients[0]["fix"]
