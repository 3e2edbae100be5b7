"""Row 7: one pair of rows per client family — what its reset costs a worker, and that
postfork adds nothing to the calls the application makes.

For each family in :data:`SPECS` (one entry per family: how to build a connected client and
one call the application makes with it):

- ``7-<family>-reset``: the reset's own time per client in a forked child (the entries of the
  at-fork hook's ``Report``, median over children), against the plain alternative a user has
  without postfork: building a fresh client in the worker and making its first call.
- ``7-<family>-call``: in a forked child, the same call on the registered (reset, then
  reconnected) client against a plain client built in that child, interleaved rounds; the
  ratio should be 1: postfork wraps no client call.

A family whose server or library is missing is skipped with the reason (in the note).
Adding a family is one :class:`Spec` below.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, List, Optional

from _table import Row, fmt_ms, median, progress

COMMAND = "python benchmarks/run.py families"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get("POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
MQTT_URL = os.environ.get("MQTT_URL", "mqtt://127.0.0.1:1883")
NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


class Spec:
    """One family: ``build()`` returns a connected client (its first call already made),
    ``call(client)`` is one application call (a round trip); ``register(client)`` manages it
    (default ``postfork.register``); ``close(client)`` releases a plain one."""

    def __init__(self, key: str, what: str, build: Callable[[], Any], call: Callable[[Any], Any],
                 close: Callable[[Any], Any] = lambda c: c.close(),
                 register: Optional[Callable[[Any], Any]] = None,
                 use: Optional[Callable[[Any], Any]] = None) -> None:
        self.key = key
        self.what = what
        self.build = build
        self.call = call
        self.close = close
        self.register = register
        # For a family whose registered client is retired in a worker: what the worker calls
        # instead (its postfork.local), built in the child from the registered client.
        self.use = use


def _redis() -> Any:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    return client


def _psycopg_pool() -> Any:
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(POSTGRES_DSN, min_size=1, max_size=2, open=True)
    with pool.connection() as conn:
        conn.execute("SELECT 1")
    return pool


def _psycopg_pool_call(pool: Any) -> Any:
    with pool.connection() as conn:
        return conn.execute("SELECT 1").fetchone()


def _django_connections() -> Any:
    """A ``ConnectionHandler`` of its own (as ``django.db.connections``), connected."""
    from urllib.parse import urlparse

    import django
    from django.conf import settings
    from django.db.utils import ConnectionHandler

    if not settings.configured:
        settings.configure(USE_TZ=True, DATABASES={})
        django.setup()
    u = urlparse(POSTGRES_DSN)
    handler = ConnectionHandler({"default": {
        "ENGINE": "django.db.backends.postgresql", "NAME": u.path.lstrip("/"),
        "USER": u.username or "", "PASSWORD": u.password or "", "HOST": u.hostname or "",
        "PORT": str(u.port or 5432), "CONN_MAX_AGE": None}})
    _django_call(handler)
    return handler


def _django_call(handler: Any) -> Any:
    with handler["default"].cursor() as cursor:
        cursor.execute("SELECT 1")
        return cursor.fetchone()


def _mysql_local(module: str) -> Callable[[], Any]:
    """A bare MySQL connection is retired in a worker: what an application uses instead is
    ``postfork.local(lambda: <driver>.connect(...))``, built and used in the master. Its reset
    in the child is the local's: forget the master's instance, retire it."""

    def build() -> Any:
        from urllib.parse import urlparse

        import postfork

        driver = __import__(module)
        u = urlparse(MYSQL_URL)
        kwargs = dict(host=u.hostname, port=u.port or 3306, user=u.username or "root",
                      password=u.password or "", database=u.path.lstrip("/"))
        conn = postfork.local(lambda: driver.connect(**kwargs))
        _select_1(conn)
        return conn

    return build


def _select_1(conn: Any) -> Any:
    cur = conn.cursor()
    cur.execute("SELECT 1")
    row = cur.fetchone()
    cur.close()
    return row
def _paho() -> Any:
    import uuid
    from urllib.parse import urlparse

    import paho.mqtt.client as mqtt

    u = urlparse(MQTT_URL)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"postfork-bench-{uuid.uuid4().hex[:8]}")
    client.connect(u.hostname or "127.0.0.1", u.port or 1883)
    client.loop_start()
    _paho_call(client)
    return client


def _paho_call(client: Any) -> Any:
    """A QoS 1 publish, until the broker's PUBACK: one round trip through the network thread."""
    info = client.publish("postfork-bench/families", b"x", qos=1)
    info.wait_for_publish(10)
    return info.is_published()


def _paho_close(client: Any) -> None:
    client.disconnect()
    client.loop_stop()


_loops: Dict[int, Any] = {}


def _in_loop(coro: Any) -> Any:
    """Run ``coro`` in this process's event loop (a thread of its own, as a sync application
    using nats-py has): a forked child gets a loop of its own on first use."""
    import asyncio
    import threading

    loop = _loops.get(os.getpid())
    if loop is None:
        loop = _loops[os.getpid()] = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
    return asyncio.run_coroutine_threadsafe(coro, loop).result(30)


def _nats() -> Any:
    import nats

    client = _in_loop(nats.connect(NATS_URL))
    _in_loop(client.flush())
    return client
def _pika_channel() -> Any:
    from urllib.parse import unquote, urlparse

    import pika

    url = urlparse(AMQP_URL)  # written kombu's way: a path of "//" is the vhost "/"
    params = pika.ConnectionParameters(
        host=url.hostname or "127.0.0.1", port=url.port or 5672,
        virtual_host=unquote(url.path[1:]) if len(url.path) > 1 else "/",
        credentials=pika.PlainCredentials(url.username or "guest", url.password or "guest"))
    channel = pika.BlockingConnection(params).channel()
    channel.basic_qos(prefetch_count=1)
    return channel


def _pika_local(channel: Any) -> Any:
    """A registered BlockingConnection is retired in the worker (no call to time there): the
    usage postfork documents for pika is one per process, ``postfork.local``."""
    import postfork

    channel.connection.close()
    return postfork.local(_pika_channel)


def _kombu() -> Any:
    import kombu

    conn = kombu.Connection(AMQP_URL)
    conn.default_channel.basic_qos(0, 1, False)
    return conn


MEMCACHED = ("127.0.0.1", int(os.environ.get("MEMCACHED_PORT", "11211")))


def _memcache() -> Any:
    from pymemcache.client.base import Client

    client = Client(MEMCACHED, timeout=5)
    client.get("postfork-bench")
    return client


_own_loops: Dict[int, Any] = {}


def _loop() -> Any:
    """This process's event loop, kept across calls (asyncio clients bind to one)."""
    import asyncio

    loop = _own_loops.get(os.getpid())
    if loop is None:
        loop = _own_loops[os.getpid()] = asyncio.new_event_loop()
    return loop


def _asyncpg_pool() -> Any:
    import asyncpg

    async def build() -> Any:
        pool = await asyncpg.create_pool(POSTGRES_DSN, min_size=1, max_size=2)
        await pool.fetchval("SELECT 1")
        return pool

    return _loop().run_until_complete(build())


def _mockupdb_uri() -> str:
    """A MockupDB answering ping, started once in the benchmark process (no MongoDB here)."""
    global _mockupdb
    if _mockupdb is None:
        from mockupdb import MockupDB

        _mockupdb = MockupDB(auto_ismaster={"maxWireVersion": 17, "minWireVersion": 0},
                             max_wire_version=17)
        _mockupdb.autoresponds("ping", ok=1)
        _mockupdb.run()
    return str(_mockupdb.uri)


_mockupdb: Any = None


def _async_mongo() -> Any:
    from pymongo import AsyncMongoClient

    client = AsyncMongoClient(_mockupdb_uri(), serverSelectionTimeoutMS=10_000)
    _loop().run_until_complete(client.admin.command("ping"))
    return client


_kafka: List[str] = []


def _kafka_bootstrap() -> str:
    """librdkafka's mock cluster in a process of its own, started once."""
    if not _kafka:
        import atexit
        import subprocess
        import sys

        script = ("import os, sys\nfrom confluent_kafka import Producer\n"
                  "p = Producer({'test.mock.num.brokers': 1, 'log_level': 0})\n"
                  "b = next(iter(p.list_topics(timeout=10).brokers.values()))\n"
                  "print(f'{b.host}:{b.port}', flush=True)\nsys.stdin.read()\nos._exit(0)\n")
        proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        atexit.register(proc.kill)
        _kafka.append(proc.stdout.readline().strip() if proc.stdout else "")
    return _kafka[0]


def _kafka_producer() -> Any:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": _kafka_bootstrap(), "log_level": 0})
    _kafka_call(producer)
    return producer


def _kafka_call(producer: Any) -> Any:
    producer.produce("postfork-bench", b"x")
    return producer.flush(10)  # the round trip: produced and acknowledged


def _kafka_local(registered: Any) -> Any:
    import postfork

    return postfork.local(_kafka_producer)


_peers: Dict[str, Any] = {}


def _http_url() -> str:
    """A keep-alive HTTP/1.1 server in a thread of this (the benchmark's) process, started once:
    the children's requests go to it too."""
    if "http" not in _peers:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms wait

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        _peers["http"] = f"http://127.0.0.1:{server.server_address[1]}"
    return str(_peers["http"])


def _log_sink() -> Any:
    """A TCP listener that reads and discards what it is sent (a log receiver)."""
    if "log" not in _peers:
        import socket
        import threading

        listener = socket.create_server(("127.0.0.1", 0))

        def drain(conn: Any) -> None:
            while conn.recv(65536):
                pass

        def accept() -> None:
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=drain, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        _peers["log"] = listener.getsockname()
    return _peers["log"]


def _urllib3() -> Any:
    import urllib3

    pm = urllib3.PoolManager()
    _urllib3_call(pm)
    return pm


def _urllib3_call(pm: Any) -> Any:
    return pm.request("GET", _http_url() + "/").data


def _requests() -> Any:
    import requests

    session = requests.Session()
    session.get(_http_url() + "/")
    return session


def _httpx() -> Any:
    import httpx

    client = httpx.Client()
    client.get(_http_url() + "/")
    return client


def _httpx_async() -> Any:
    import httpx

    async def build() -> Any:
        client = httpx.AsyncClient()
        await client.get(_http_url() + "/")
        return client

    return _in_loop(build())


async def _aio_get(session: Any) -> Any:
    async with session.get(_http_url() + "/") as response:
        return await response.read()


def _aiohttp_local() -> Any:
    """A ClientSession is retired in a worker: what an application uses instead is
    ``postfork.local(lambda: aiohttp.ClientSession())``, its instance built in the loop that
    first uses it."""
    import aiohttp

    import postfork

    session = postfork.local(lambda: aiohttp.ClientSession())
    _in_loop(_aio_get(session))
    return session


def _socket_handler() -> Any:
    import logging
    import logging.handlers

    handler = logging.handlers.SocketHandler(*_log_sink())
    _socket_handler_call(handler)
    return handler


def _socket_handler_call(handler: Any) -> Any:
    import logging

    handler.emit(logging.LogRecord("bench", logging.INFO, __file__, 1, "record", None, None))


# -- peers the cloud families talk to, started on first use and stopped at exit: the test
# suite's own (tests/_http_peer.py, tests/_moto_peer.py, tests/_grpc_peer.py) -----------------

_peers: Dict[str, Any] = {}


def _peer(name: str) -> Any:
    if name not in _peers:
        import atexit
        import subprocess
        import sys
        from pathlib import Path

        tests = str(Path(__file__).resolve().parent.parent / "tests")
        if tests not in sys.path:
            sys.path.insert(0, tests)
        if name == "moto":
            from _moto_peer import MotoPeer

            peer: Any = MotoPeer()
            atexit.register(peer.stop)
        elif name == "grpc":
            server = subprocess.Popen([sys.executable, f"{tests}/_grpc_peer.py"], stdout=subprocess.PIPE,
                                      text=True, env={**os.environ, "GRPC_VERBOSITY": "ERROR"})
            assert server.stdout is not None
            peer = int(server.stdout.readline())
            atexit.register(server.kill)
        else:
            from _http_peer import Peer

            peer = Peer(handle=_HANDLES[name]).__enter__()
            atexit.register(peer.__exit__)
        _peers[name] = peer
    return _peers[name]


def _es_info(request: Any) -> Any:
    body = b'{"name": "bench", "cluster_name": "bench", "version": {"number": "9.0.0", "build_flavor": "default"}, "tagline": "You Know, for Search"}'
    return 200, {"X-Elastic-Product": "Elasticsearch", "Content-Type": "application/json"}, body


def _ok_protobuf(request: Any) -> Any:
    return 200, {"Content-Type": "application/x-protobuf"}, b""


def _ok_json(request: Any) -> Any:
    return 200, {"Content-Type": "application/json"}, b"{}"


_HANDLES = {"elasticsearch": _es_info, "otlp": _ok_protobuf, "sentry": _ok_json}
_FAKE_AWS = dict(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")


def _boto3() -> Any:
    import boto3

    s3 = boto3.client("s3", endpoint_url=_peer("moto").url, **_FAKE_AWS)
    if "bucket" not in _peers:
        s3.create_bucket(Bucket="postfork-bench")
        s3.put_object(Bucket="postfork-bench", Key="k", Body=b"v")
        _peers["bucket"] = True
    _boto3_call(s3)
    return s3


def _boto3_call(s3: Any) -> Any:
    return s3.get_object(Bucket="postfork-bench", Key="k")["Body"].read()


def _elasticsearch() -> Any:
    from elasticsearch import Elasticsearch

    es = Elasticsearch(_peer("elasticsearch").url)
    es.info()
    return es


def _otel() -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(shutdown_on_exit=False)
    exporter = OTLPSpanExporter(endpoint=f"{_peer('otlp').url}/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _otel_call(provider)
    return provider


def _otel_call(provider: Any) -> Any:
    """One span, exported at once (force_flush: one POST)."""
    with provider.get_tracer("postfork-bench").start_as_current_span("bench"):
        pass
    return provider.force_flush(10_000)


def _sentry() -> Any:
    import sentry_sdk

    client = sentry_sdk.Client(dsn=f"http://public@127.0.0.1:{_peer('sentry').port}/1",
                               default_integrations=False)
    _sentry_call(client)
    return client


def _sentry_call(client: Any) -> Any:
    """One event, sent by the background worker (flush: until it is through)."""
    client.capture_event({"message": "postfork-bench"})
    return client.flush(10)


def _grpc_local() -> Any:
    """A grpc channel is retired in a worker: what an application uses instead is
    ``postfork.local``, built and used in the master (its reset retires the master's instance)."""
    import grpc

    import postfork

    target = f"127.0.0.1:{_peer('grpc')}"
    channel = postfork.local(lambda: grpc.insecure_channel(
        target, options=[("grpc.use_local_subchannel_pool", 1)]))
    _grpc_call(channel)
    return channel


def _grpc_call(channel: Any) -> Any:
    return channel().unary_unary("/postfork.Test/Who")(b"", timeout=10)


SPECS: List[Spec] = [
    Spec("redis", "redis-py `Redis` (pool)", _redis, lambda c: c.ping()),
    Spec("psycopg_pool", "psycopg_pool `ConnectionPool`", _psycopg_pool, _psycopg_pool_call),
    Spec("django", "Django `connections` (PostgreSQL)", _django_connections, _django_call,
         close=lambda handler: handler.close_all()),
    Spec("pymysql", "PyMySQL `Connection` (`postfork.local`)", _mysql_local("pymysql"), _select_1,
         register=lambda local: local),  # a local registers itself
    Spec("mysqlclient", "mysqlclient `MySQLdb` connection (`postfork.local`)",
         _mysql_local("MySQLdb"), _select_1, register=lambda local: local),
    Spec("paho", "paho-mqtt `Client` (loop_start, QoS 1 publish)", _paho, _paho_call, _paho_close),
    Spec("nats", "nats-py `Client` (flush: PING/PONG)", _nats, lambda c: _in_loop(c.flush()),
         lambda c: _in_loop(c.close())),
    Spec("pika", "pika `BlockingConnection` channel, as a `postfork.local`", _pika_channel,
         lambda ch: ch.basic_qos(prefetch_count=1), close=lambda ch: ch.connection.close(),
         register=_pika_local),
    Spec("kombu", "kombu `Connection` (py-amqp)", _kombu,
         lambda conn: conn.default_channel.basic_qos(0, 1, False), close=lambda c: c.release()),
    Spec("pymemcache", "pymemcache `Client`", _memcache, lambda c: c.get("postfork-bench")),
    Spec("asyncpg", "asyncpg `Pool` (reopened on the child's loop)", _asyncpg_pool,
         lambda p: _loop().run_until_complete(p.fetchval("SELECT 1")),
         close=lambda p: _loop().run_until_complete(p.close())),
    Spec("async_pymongo", "PyMongo `AsyncMongoClient` (MockupDB)", _async_mongo,
         lambda c: _loop().run_until_complete(c.admin.command("ping")),
         close=lambda c: _loop().run_until_complete(c.close())),
    Spec("confluent_kafka", "confluent-kafka `Producer` (mock cluster; retired, the child "
         "calls its `postfork.local`)", _kafka_producer, _kafka_call,
         close=lambda p: p.flush(10), use=_kafka_local),
    Spec("urllib3", "urllib3 `PoolManager` (keep-alive GET)", _urllib3, _urllib3_call,
         lambda c: c.clear()),
    Spec("requests", "requests `Session` (keep-alive GET)", _requests,
         lambda c: c.get(_http_url() + "/").content),
    Spec("httpx", "httpx `Client` (keep-alive GET)", _httpx, lambda c: c.get(_http_url() + "/").content),
    Spec("httpx_async", "httpx `AsyncClient` (keep-alive GET, worker's own loop)", _httpx_async,
         lambda c: _in_loop(c.get(_http_url() + "/")).content, lambda c: _in_loop(c.aclose())),
    Spec("aiohttp", "aiohttp `ClientSession` (`postfork.local`, keep-alive GET)", _aiohttp_local,
         lambda c: _in_loop(_aio_get(c)), lambda c: _in_loop(c.close()),
         register=lambda local: local),  # a local registers itself
    Spec("logging", "logging `SocketHandler` (one record over TCP)", _socket_handler,
         _socket_handler_call),
    Spec("botocore", "boto3 S3 client, moto server mode (GetObject)", _boto3, _boto3_call),
    Spec("elasticsearch", "elasticsearch-py `Elasticsearch` (info)", _elasticsearch, lambda c: c.info()),
    Spec("opentelemetry", "OpenTelemetry `TracerProvider` + batch + OTLP/HTTP (span + force_flush)",
         _otel, _otel_call, lambda c: c.shutdown()),
    Spec("sentry", "sentry-sdk client (capture_event + flush)", _sentry, _sentry_call,
         lambda c: c.close(timeout=2)),
    # last: grpc starts native threads in this process for good
    Spec("grpc", "grpcio channel (`postfork.local`, unary RPC)", _grpc_local, _grpc_call,
         lambda local: local._close(), register=lambda local: local),
]


def _measure(spec: Spec, quick: bool) -> List[Row]:
    import postfork
    from postfork.testing import fork_child

    clients_per_child = 2 if quick else 10
    children = 2 if quick else 7
    rounds, calls = (2, 5) if quick else (20, 50)
    registered = [(spec.register or postfork.register)(spec.build()) for _ in range(clients_per_child)]
    ids = {id(c) for c in registered}

    def child() -> Dict[str, Any]:
        report = postfork.reset_all()  # the at-fork hook's own run
        mine = [e.seconds for e in report.entries if e.ok]
        failed = [str(e) for e in report.failed]
        t0 = time.perf_counter()
        plain = spec.build()  # the alternative: a new client in the worker, and its first call
        fresh = time.perf_counter() - t0
        managed = spec.use(registered[0]) if spec.use else registered[0]
        spec.call(managed)  # reconnects after the reset
        paired: List[float] = []
        for n in range(rounds):
            order = (managed, plain) if n % 2 == 0 else (plain, managed)
            spent = {}
            for client in order:
                t = time.perf_counter()
                for _ in range(calls):
                    spec.call(client)
                spent[id(client)] = time.perf_counter() - t
            paired.append(spent[id(managed)] / spent[id(plain)])
        spec.close(plain)
        return {"resets": mine, "failed": failed, "fresh": fresh, "paired": paired,
                "entries": len(report.entries)}

    results = [fork_child(child, reset=False).result(timeout=120) for _ in range(children)]
    for client in registered:
        postfork.unregister(client)
        spec.close(client)
    assert not any(r["failed"] for r in results), results[0]["failed"]
    del ids
    per_client = median(median(r["resets"]) for r in results)
    fresh = median(r["fresh"] for r in results)
    call_ratio = median(x for r in results for x in r["paired"])
    return [
        Row(f"7-{spec.key}-reset", f"{spec.what}: reset per client in the child vs a new client "
            f"and its first call", fmt_ms(fresh, 3), fmt_ms(per_client, 3), per_client / fresh,
            "≤ 1.0×", per_client <= fresh, COMMAND,
            f"median of {children} children, {clients_per_child} registered clients each"),
        Row(f"7-{spec.key}-call", f"{spec.what}: one call on the registered client vs a plain "
            f"one (after the reset)", "1.000×", f"{call_ratio:.3f}×", call_ratio, "≤ 1.05×",
            call_ratio <= 1.05, COMMAND,
            f"median of {children * rounds} paired rounds of {calls} calls, interleaved"),
    ]


def run(quick: bool = False, only: Optional[List[str]] = None) -> List[Row]:
    rows: List[Row] = []
    for spec in SPECS:
        if only and spec.key not in only:
            continue
        progress(f"family {spec.key}")
        try:
            rows += _measure(spec, quick)
        except Exception as exc:  # noqa: BLE001 - a missing server or library skips its family
            rows.append(Row(f"7-{spec.key}", spec.what, "—", "—", None, "—", None, COMMAND,
                            f"SKIPPED: {type(exc).__name__}: {exc}"))
    return rows
