"""``logging.handlers`` against real local TCP, UDP and Unix listeners, forking for real.

Unmanaged, every worker logs over the master's socket: the listener sees the workers' records
on the master's TCP connection (it cannot tell the processes apart, and records written by
several processes at once share one stream), or from the master's UDP port. A
``QueueListener`` started in the master has no thread in a worker: the worker's records go
into its copy of the queue and are never handled (with a ``multiprocessing`` queue too, whose
feeder thread is the master's). Registered, each worker logs over a socket of its own, opened
on its first record, the master's connection never sees a worker's byte, and a worker's
``QueueListener`` runs (or, with a ``multiprocessing`` queue, the master's listener receives
the worker's records).
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import os
import pickle
import queue
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

import postfork
from _http_peer import PausedChild, guard_findings, in_children, sockets_to
from postfork.testing import run_in_child

pytestmark = pytest.mark.usefixtures("clean_registry")


class Listener:
    """A local log receiver: TCP (``SocketHandler`` frames or syslog lines), UDP, or a Unix
    stream socket. ``received`` maps each connection (TCP, Unix: the order it was accepted in;
    UDP: the sender's port, which a later process may reuse once an earlier one exited) to the
    messages it carried, ``bytes`` to the bytes it carried."""

    def __init__(self, kind: str, framing: str, folder: Path) -> None:
        self.kind, self.framing = kind, framing
        self.received: Dict[Any, List[str]] = {}
        self.bytes: Dict[Any, int] = {}
        self.lock = threading.Lock()
        if kind == "unix":
            self.address: Any = str(folder / "log.sock")
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        elif kind == "tcp":
            self._sock = socket.socket()
        else:
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if kind != "unix":
            self._sock.bind(("127.0.0.1", 0))
            self.address = self._sock.getsockname()
        else:
            self._sock.bind(self.address)
        if kind != "udp":
            self._sock.listen(64)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._accepted = 0
        self._readers: List[threading.Thread] = []
        self._thread = threading.Thread(target=self._serve, name=f"log-{kind}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                if self.kind == "udp":
                    data, sender = self._sock.recvfrom(65536)
                    self._add(sender[1], self._messages(data), len(data))
                    continue
                conn, peer = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            self._accepted += 1
            key = self._accepted
            with self.lock:
                self.received.setdefault(key, [])
                self.bytes.setdefault(key, 0)
            reader = threading.Thread(target=self._read, args=(conn, key), daemon=True)
            self._readers.append(reader)
            reader.start()

    def _read(self, conn: socket.socket, key: Any) -> None:
        buffer = b""
        conn.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = conn.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            buffer += data
            buffer, messages = self._frames(buffer)
            self._add(key, messages, len(data))
        conn.close()

    def _frames(self, buffer: bytes) -> Tuple[bytes, List[str]]:
        messages = []
        if self.framing == "pickle":  # SocketHandler: 4-byte length, then a pickled dict
            while len(buffer) >= 4:
                size = struct.unpack(">L", buffer[:4])[0]
                if len(buffer) < 4 + size:
                    break
                messages.append(pickle.loads(buffer[4:4 + size])["msg"])
                buffer = buffer[4 + size:]
            return buffer, messages
        *lines, rest = buffer.split(b"\0")  # syslog over a stream: NUL-terminated
        return rest, [self._syslog(line) for line in lines]

    def _messages(self, datagram: bytes) -> List[str]:
        if self.framing == "pickle":
            return [pickle.loads(datagram[4:])["msg"]]
        return [self._syslog(datagram.rstrip(b"\0"))]

    @staticmethod
    def _syslog(line: bytes) -> str:
        return line.decode().split(">", 1)[1]  # "<14>message"

    def _add(self, key: Any, messages: List[str], size: int) -> None:
        with self.lock:
            self.received.setdefault(key, []).extend(messages)
            self.bytes[key] = self.bytes.get(key, 0) + size

    def wait_for(self, count: int, timeout: float = 10) -> Dict[Any, List[str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if sum(len(m) for m in self.received.values()) >= count:
                    return {k: list(v) for k, v in self.received.items()}
            time.sleep(0.02)
        with self.lock:
            return {k: list(v) for k, v in self.received.items()}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for reader in self._readers:  # no thread of this test left to wake up in another's fork
            reader.join(5)
        self._sock.close()


@pytest.fixture
def listeners(tmp_path: Path) -> Iterator[Callable[[str, str], Listener]]:
    made: List[Listener] = []

    def make(kind: str, framing: str) -> Listener:
        made.append(Listener(kind, framing, tmp_path))
        return made[-1]

    yield make
    for listener in made:
        listener.close()


def _logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"postfork-test.{id(handler)}")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    return logger


HANDLERS = {
    "SocketHandler": ("tcp", "pickle", lambda a: logging.handlers.SocketHandler(*a)),
    "DatagramHandler": ("udp", "pickle", lambda a: logging.handlers.DatagramHandler(*a)),
    "SysLogHandler-udp": ("udp", "syslog", lambda a: logging.handlers.SysLogHandler(a)),
    "SysLogHandler-tcp": ("tcp", "syslog", lambda a: logging.handlers.SysLogHandler(
        a, socktype=socket.SOCK_STREAM)),
    "SysLogHandler-unix": ("unix", "syslog", lambda a: logging.handlers.SysLogHandler(
        a, socktype=socket.SOCK_STREAM)),
}


def _log_twice() -> Callable[[logging.Logger], str]:
    def run(logger: logging.Logger) -> str:
        for n in range(2):
            logger.info("child %d %d", os.getpid(), n)
        return str(os.getpid())

    return run


# -- the hazard, unmanaged ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["SocketHandler", "DatagramHandler", "SysLogHandler-tcp"])
def test_unmanaged_children_log_over_the_master_socket(name: str, listeners: Any) -> None:
    kind, framing, build = HANDLERS[name]
    listener = listeners(kind, framing)
    handler = build(listener.address)
    logger = _logger(handler)
    logger.info("master")
    (master,) = listener.wait_for(1)
    for _ in range(4):
        run_in_child(lambda: logger.info("child %d", os.getpid()), reset=False, hooks=False)
    received = listener.wait_for(5)
    assert list(received) == [master]  # one connection (one source port) for all five processes
    assert len(received[master]) == 5
    handler.close()


def test_unmanaged_queue_listener_loses_the_worker_records(listeners: Any) -> None:
    listener = listeners("tcp", "pickle")
    q: "queue.Queue[Any]" = queue.Queue()
    target = logging.handlers.SocketHandler(*listener.address)
    qlistener = logging.handlers.QueueListener(q, target)
    qlistener.start()
    logger = _logger(logging.handlers.QueueHandler(q))
    logger.info("master")
    listener.wait_for(1)

    def child() -> None:
        logger.info("child %d", os.getpid())
        time.sleep(0.3)  # time enough for a listener thread, if there were one

    for _ in range(3):
        run_in_child(child, reset=False, hooks=False)
    time.sleep(0.2)
    assert [m for ms in listener.received.values() for m in ms] == ["master"]  # 3 records lost
    qlistener.stop()
    target.close()


def test_unmanaged_multiprocessing_queue_loses_the_worker_records() -> None:
    q: Any = multiprocessing.get_context("fork").Queue()
    got: "queue.Queue[str]" = queue.Queue()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.put(record.getMessage())

    qlistener = logging.handlers.QueueListener(q, Collect())
    qlistener.start()
    logger = _logger(logging.handlers.QueueHandler(q))
    logger.info("master")
    assert got.get(timeout=10) == "master"

    def child() -> None:
        logger.info("child %d", os.getpid())
        q.close()
        q.join_thread()  # flush to the pipe: the feeder thread is the master's, absent here

    run_in_child(child, reset=False, hooks=False)
    with pytest.raises(queue.Empty):
        got.get(timeout=0.5)
    qlistener.stop()
    q.close()
    q.join_thread()  # no feeder thread left behind for the next tests' forks


# -- registered --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(HANDLERS))
def test_registered_handler_each_child_its_own_socket(name: str, listeners: Any) -> None:
    kind, framing, build = HANDLERS[name]
    listener = listeners(kind, framing)
    handler = postfork.register(build(listener.address))
    logger = _logger(handler)
    logger.info("master before")
    (master,) = listener.wait_for(1)

    pids = in_children(lambda: _log_twice()(logger))
    logger.info("master after")
    received = listener.wait_for(1 + 40 + 1)

    assert received[master] == ["master before", "master after"]  # nothing from a child
    others = {k: v for k, v in received.items() if k != master}
    key_of = {m.split()[1]: k for k, ms in others.items() for m in ms}  # pid -> its socket
    assert sorted(key_of) == sorted(pids)
    for pid, key in key_of.items():  # both records on one socket of the child's own
        assert others[key].count(f"child {pid} 0") == others[key].count(f"child {pid} 1") == 1
    if kind != "udp":  # a connection each (a UDP port is reused once its process exited)
        assert sorted(tuple(v) for v in others.values()) == sorted(
            (f"child {pid} 0", f"child {pid} 1") for pid in pids)
    handler.close()


def test_registered_queue_listener_runs_in_each_child(listeners: Any) -> None:
    listener = listeners("tcp", "pickle")
    q: "queue.Queue[Any]" = queue.Queue()
    target = logging.handlers.SocketHandler(*listener.address)
    qlistener = postfork.register(logging.handlers.QueueListener(q, target))
    qhandler = postfork.register(logging.handlers.QueueHandler(q))
    qlistener.start()
    logger = _logger(qhandler)
    logger.info("master before")
    (master,) = listener.wait_for(1)

    def child() -> str:
        pid = _log_twice()(logger)
        qlistener.stop()  # the child's own listener: handles what is queued, then ends
        return pid

    pids = in_children(child)
    logger.info("master after")
    received = listener.wait_for(42)
    assert received[master] == ["master before", "master after"]
    others = {k: v for k, v in received.items() if k != master}
    assert sorted(tuple(v) for v in others.values()) == sorted(
        (f"child {pid} 0", f"child {pid} 1") for pid in pids)
    qlistener.stop()
    target.close()


def test_registered_multiprocessing_queue_reaches_the_master_listener() -> None:
    q: Any = multiprocessing.get_context("fork").Queue()
    got: "queue.Queue[str]" = queue.Queue()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.put(record.getMessage())

    qlistener = postfork.register(logging.handlers.QueueListener(q, Collect()))
    qlistener.start()
    logger = _logger(postfork.register(logging.handlers.QueueHandler(q)))
    logger.info("master")
    assert got.get(timeout=10) == "master"

    def child() -> List[str]:
        logger.info("child %d", os.getpid())
        q.close()
        q.join_thread()  # the child's own feeder thread flushed it to the pipe
        return [t.name for t in threading.enumerate()]

    pids = []
    for _ in range(5):
        child_threads = run_in_child(child)
        assert len(child_threads) == 1  # no second listener in the child: the master's reads
    for _ in range(5):
        pids.append(got.get(timeout=10))
    assert len(set(pids)) == 5 and all(p.startswith("child ") for p in pids)
    qlistener.stop()
    q.close()
    q.join_thread()


@pytest.mark.parametrize("name", ["SocketHandler", "DatagramHandler", "SysLogHandler-tcp",
                                  "SysLogHandler-unix"])
def test_reset_sends_nothing_until_the_first_record(name: str, listeners: Any) -> None:
    kind, framing, build = HANDLERS[name]
    listener = listeners(kind, framing)
    handler = postfork.register(build(listener.address))
    logger = _logger(handler)
    logger.info("master")
    (master,) = listener.wait_for(1)
    before = dict(listener.bytes)

    port = listener.address[1] if kind == "tcp" else None

    def first() -> int:
        still_open = sockets_to(port) if port else 0  # the master's TCP connection, here
        logger.info("child first")
        return still_open

    child = PausedChild(first)
    child.wait_reset()
    time.sleep(0.1)
    assert listener.bytes == before  # no connection, no byte, no datagram from the reset
    assert child.resume() == 0
    received = listener.wait_for(2)
    assert received[master] == ["master"] and len(received) == 2
    handler.close()


# -- the guard ---------------------------------------------------------------------------------


def test_guard_names_unmanaged_handlers_and_the_listener_thread(tmp_path: Path,
                                                                listeners: Any) -> None:
    tcp = listeners("tcp", "pickle").address
    udp = listeners("udp", "pickle").address
    found = guard_findings(tmp_path, f"""
        import logging.handlers, queue, postfork
        postfork.guard("warn")
        sock = logging.handlers.SocketHandler(*{tcp!r})
        dgram = logging.handlers.DatagramHandler(*{udp!r})
        syslog = logging.handlers.SysLogHandler({udp!r})
        q = queue.Queue()
        qhandler = logging.handlers.QueueHandler(q)
        qlistener = logging.handlers.QueueListener(q, sock)
        qlistener.start()
        managed = postfork.register(logging.handlers.SocketHandler(*{tcp!r}))
        managed_q = postfork.register(logging.handlers.QueueListener(queue.Queue()))
        managed_q.start()
    """, kinds=["client", "thread"])
    clients = sorted((subject, site) for kind, subject, site in found if kind == "client")
    assert clients == [("logging.DatagramHandler", "app.py:5"),
                       ("logging.QueueHandler", "app.py:8"),
                       ("logging.QueueListener", "app.py:9"),
                       ("logging.SysLogHandler", "app.py:6")]
    # (the SocketHandler at line 4 is the listener's: covered by the listener's finding)
    threads = [(subject, site) for kind, subject, site in found if kind == "thread"]
    assert len(threads) == 1 and threads[0][1] == "app.py:9"  # the unmanaged listener's thread
