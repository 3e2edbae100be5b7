"""Real services for the suite: Redis, PostgreSQL, MariaDB, RabbitMQ, Mosquitto, NATS on this
machine, MockupDB for MongoDB, moto's server mode for AWS (started by the suite).

A missing service skips its tests with the reason, unless POSTFORK_REQUIRE_SERVICES=1 (CI),
where it fails them.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any, Iterator, List
from urllib.parse import urlparse

import pytest

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get("POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
MYSQL_URL = os.environ.get("MYSQL_URL", "mysql://root@127.0.0.1:3306/postfork_test")
MQTT_URL = os.environ.get("MQTT_URL", "mqtt://127.0.0.1:1883")
NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
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
