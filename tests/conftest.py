"""Real services for the suite: Redis, PostgreSQL, MariaDB, RabbitMQ, Mosquitto, NATS on this
machine, MockupDB for MongoDB, moto's server mode for AWS (started by the suite).

A missing service skips its tests with the reason, unless POSTFORK_REQUIRE_SERVICES=1 (CI),
where it fails them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List
from urllib.parse import urlparse

import pytest

if TYPE_CHECKING:
    import asyncio

    from _loop_thread import LoopThread

# A Redis database of the suite's own: other programs on these machines FLUSHDB database 0.
# Every test, and every server a test starts, derives its URL from this one.
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")
POSTGRES_DSN = os.environ.get("POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
MYSQL_URL = os.environ.get("MYSQL_URL", "mysql://root@127.0.0.1:3306/postfork_test")
MQTT_URL = os.environ.get("MQTT_URL", "mqtt://127.0.0.1:1883")
NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
MEMCACHED_URL = os.environ.get("MEMCACHED_URL", "memcache://127.0.0.1:11211")
REQUIRED = os.environ.get("POSTFORK_REQUIRE_SERVICES") == "1"


def _missing(what: str, why: str) -> None:
    msg = f"{what} is not reachable ({why})"
    if REQUIRED:
        pytest.fail(msg + "; POSTFORK_REQUIRE_SERVICES=1 requires it", pytrace=False)
    pytest.skip(msg)


def _tcp_up(url: str, default_port: int) -> bool:
    u = urlparse(url)
    try:
        socket.create_connection((u.hostname or "127.0.0.1", u.port or default_port), 1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> str:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        _missing(f"Redis at {REDIS_URL}", repr(exc))
    return REDIS_URL


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(POSTGRES_DSN, connect_timeout=2).close()
    except Exception as exc:
        _missing(f"PostgreSQL at {POSTGRES_DSN}", repr(exc))
    return POSTGRES_DSN


@pytest.fixture(scope="session")
def mysql_url() -> str:
    """MariaDB/MySQL, in a database of the suite's own (created here when missing)."""
    pymysql = pytest.importorskip("pymysql")
    u = urlparse(MYSQL_URL)
    try:
        conn = pymysql.connect(host=u.hostname, port=u.port or 3306, user=u.username or "root",
                               password=u.password or "", connect_timeout=2)
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{u.path.lstrip('/')}`")
        conn.close()
    except Exception as exc:
        _missing(f"MariaDB at {MYSQL_URL}", repr(exc))
    return MYSQL_URL


@pytest.fixture(scope="session")
def amqp_url() -> str:
    if not _tcp_up(AMQP_URL, 5672):
        _missing(f"RabbitMQ at {AMQP_URL}", "connection refused")
    return AMQP_URL


@pytest.fixture(scope="session")
def mqtt_url() -> str:
    pytest.importorskip("paho.mqtt.client")
    if not _tcp_up(MQTT_URL, 1883):
        _missing(f"Mosquitto at {MQTT_URL}", "connection refused")
    return MQTT_URL


@pytest.fixture(scope="session")
def nats_url() -> str:
    pytest.importorskip("nats")
    if not _tcp_up(NATS_URL, 4222):
        _missing(f"NATS at {NATS_URL}", "connection refused")
    return NATS_URL


@pytest.fixture(scope="session")
def broker_connections(amqp_url: str) -> Callable[[], Dict[int, Dict[str, Any]]]:
    """RabbitMQ's own list of its client connections (``rabbitmqctl list_connections``), keyed
    by the client's local port: ``{port: {"connected_at", "recv_cnt", "state", ...}}``."""

    def listing() -> Dict[int, Dict[str, Any]]:
        done = subprocess.run(["rabbitmqctl", "-s", "list_connections", "peer_port", "connected_at",
                               "recv_cnt", "state", "--formatter", "json"],
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip() or f"exit status {done.returncode}")
        return {row["peer_port"]: row for row in json.loads(done.stdout or "[]")}

    try:
        listing()
    except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        _missing("rabbitmqctl (RabbitMQ's list of connections)", repr(exc))
    return listing


@pytest.fixture(scope="session")
def memcached_server() -> "tuple[str, int]":
    """(host, port) of the memcached at MEMCACHED_URL."""
    pytest.importorskip("pymemcache")
    if not _tcp_up(MEMCACHED_URL, 11211):
        _missing(f"memcached at {MEMCACHED_URL}", "connection refused")
    u = urlparse(MEMCACHED_URL)
    return u.hostname or "127.0.0.1", u.port or 11211


@pytest.fixture
def mockupdb() -> Iterator["object"]:
    """A MockupDB server speaking the MongoDB wire protocol (maxWireVersion 17), answering
    hello/ismaster and ping, for the real PyMongo to talk to."""
    mockup = pytest.importorskip("mockupdb")
    server = mockup.MockupDB(auto_ismaster={"maxWireVersion": 17, "minWireVersion": 0},
                             max_wire_version=17)
    server.autoresponds("ping", ok=1)
    server.run()
    try:
        yield server
    finally:
        server.stop()


_KAFKA_MOCK = """
import os, sys
from confluent_kafka import Producer
p = Producer({"test.mock.num.brokers": 1, "log_level": 3})
broker = next(iter(p.list_topics(timeout=10).brokers.values()))
print(f"{broker.host}:{broker.port}", flush=True)
sys.stdin.read()  # until the test closes our stdin
os._exit(0)
"""


@pytest.fixture
def kafka_broker() -> Iterator["tuple[str, int]"]:
    """librdkafka's mock cluster (one broker), in a process of its own on 127.0.0.1:
    (bootstrap servers, that process's pid: its sockets are the broker's side)."""
    import subprocess
    import sys

    pytest.importorskip("confluent_kafka")
    proc = subprocess.Popen([sys.executable, "-c", _KAFKA_MOCK], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        bootstrap = proc.stdout.readline().strip() if proc.stdout else ""
        if not bootstrap:
            _missing("librdkafka's mock cluster", "it did not start")
        yield bootstrap, proc.pid
    finally:
        for pipe in (proc.stdin, proc.stdout):
            if pipe:
                pipe.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def tls_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for ``_http_peer.Peer(tls=...)``: its self-signed certificate is made once."""
    return tmp_path_factory.mktemp("tls")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Any]:
    """moto's server mode (S3, SQS...) on 127.0.0.1, in a subprocess (``tests/_moto_peer.py``;
    moto itself is never imported here: it hooks into botocore when imported)."""
    import importlib.util

    if importlib.util.find_spec("moto") is None:
        pytest.skip("moto is not installed")
    from _moto_peer import MotoPeer

    try:
        peer = MotoPeer()
    except Exception as exc:
        _missing("moto's server mode", repr(exc))
    yield peer
    peer.stop()


@pytest.fixture
def redis_key() -> str:
    return f"postfork-test:{uuid.uuid4().hex}"


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """The test starts and ends with the registry it found: its entries, its last report,
    its observers and the adapters users added (other modules' objects stay)."""
    from postfork import _lookup
    from postfork._registry import REGISTRY

    before = REGISTRY.state()
    observers = list(REGISTRY.observers)
    adapters = dict(_lookup._user)
    yield
    REGISTRY.restore(before)
    REGISTRY.observers[:] = observers
    _lookup._user.clear()
    _lookup._user.update(adapters)


@pytest.fixture
def servers() -> "Iterator[List[object]]":
    """Servers a test starts (``tests/_servers.Server``); each is stopped at teardown."""
    started: List[object] = []
    yield started
    for server in started:
        server.stop()  # type: ignore[attr-defined]


@pytest.fixture
def restore_guard() -> Iterator[None]:
    """The test may switch the guard on; afterwards it is as it was. Clients other tests left
    in reference cycles are collected first: they are not this test's findings."""
    import gc

    from postfork import _guard

    previous = _guard._mode
    gc.collect()
    try:
        yield
    finally:
        _guard._set_mode(previous)


@pytest.fixture
def managed() -> Iterator[Callable[[Any], Any]]:
    """``managed(obj)`` registers obj for this test only. (A module whose tests take a
    ``managed`` parameter or fixture of their own means that one.)"""
    import postfork

    objs: List[Any] = []

    def register(obj: Any) -> Any:
        objs.append(postfork.register(obj))
        return obj

    yield register
    for obj in objs:
        postfork.unregister(obj)


@pytest.fixture
def master_loop() -> Iterator[LoopThread]:
    """The master's event loop, running in a thread of its own (as an app that serves sync
    code does); stopped and closed after the test."""
    from _loop_thread import LoopThread

    loop = LoopThread("master-loop")
    yield loop
    loop.stop()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The parent's event loop, open across the forks (as in a master that used it)."""
    import asyncio

    loop = asyncio.new_event_loop()
    yield loop
    loop.close()
