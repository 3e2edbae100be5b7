"""The client families postfork knows: one declarative table, read by everything else.

Each :class:`Family` lists its classes (:class:`Kind`): the qualified class name adapters are
looked up by (along the MRO), the ``Adapter`` in ``postfork.adapters.<module>`` that manages
it, where the guard watches its construction, and what the user calls to build one (the
doctor's and the errors' hint). The family's ``packages`` are the top-level packages whose
frames count as "inside the library" when the guard looks for a client's creation site.

Adding a family is one adapter module, one entry here, one test module (and README lines):
the lookup (:mod:`postfork._lookup`), the guard's tracking, SQLAlchemy's retirement of its
drivers' connections and the command's text all derive from this table.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, Iterator, List, Optional, Tuple

__all__ = ["Kind", "Family", "FAMILIES", "kinds", "kind_of_name"]


class Kind:
    """One class of a family.

    ``name``: qualified class name as ``type(obj)`` reports it (``cls.__module__`` +
    ``__qualname__``); ``adapter``: ``"module:attr"`` under ``postfork.adapters``; ``track``:
    ``"module:attr"`` whose construction the guard records (a class, or a module-level function
    that returns the object), None for a class the guard does not watch; ``leaf``: the client
    builds these for itself later, in one of its methods (a pool connecting): such an object
    belongs to the tracked client whose method is on the stack; ``calls``: what the user writes
    to build one, for hints (``create_engine(url)``); ``fix``: the guard's advice for an unmanaged
    one, where the generic one (``postfork.register(client)``, or ``postfork.local(lambda:
    calls)``) is not what the user should do (Django's connections are managed by one line in
    ``INSTALLED_APPS``, not one by one).
    """

    __slots__ = ("name", "adapter", "track", "leaf", "calls", "fix")

    def __init__(self, name: str, adapter: str, *, track: Optional[str] = None, leaf: bool = False,
                 calls: str = "", fix: str = "") -> None:
        self.name = name
        self.adapter = adapter
        self.track = track
        self.leaf = leaf
        self.calls = calls or name.rsplit(".", 1)[-1] + "(...)"
        self.fix = fix

    def __repr__(self) -> str:
        return f"Kind({self.name!r})"


class Family:
    """``note`` and ``env``: what ``postfork doctor`` tells when the master holds a client of the
    family (or runs the native threads of its library): a sentence, and the environment
    variables (name, value) the library reads once, at import, which must be set before it."""

    __slots__ = ("name", "packages", "kinds", "note", "env")

    def __init__(self, name: str, packages: Tuple[str, ...], kinds: Tuple[Kind, ...], *,
                 note: str = "", env: Tuple[Tuple[str, str], ...] = ()) -> None:
        self.name = name
        self.packages = packages
        self.kinds = kinds
        self.note = note
        self.env = env

    def __repr__(self) -> str:
        return f"Family({self.name!r})"


def _self(name: str) -> str:
    """``track`` for a class tracked where it is defined."""
    module, _, attr = name.rpartition(".")
    return f"{module}:{attr}"


_DJANGO_FIX = ("add 'postfork.integrations.django' to INSTALLED_APPS (first is best): it manages "
               "django.db.connections and django.core.cache.caches, every thread's connection "
               "and cache included, in every worker")

FAMILIES: Tuple[Family, ...] = (
    Family("redis", ("redis",), (
        Kind("redis.client.Redis", "redis:client", track=_self("redis.client.Redis"),
             calls="redis.Redis.from_url(url)"),
        Kind("redis.client.PubSub", "redis:pubsub", track=_self("redis.client.PubSub"),
             calls="client.pubsub()"),
        Kind("redis.connection.ConnectionPool", "redis:pool",
             track=_self("redis.connection.ConnectionPool"), calls="redis.ConnectionPool.from_url(url)"),
        Kind("redis.cluster.RedisCluster", "redis:cluster", track=_self("redis.cluster.RedisCluster"),
             calls="redis.RedisCluster.from_url(url)"),
        Kind("redis.asyncio.client.Redis", "redis:async_client",
             track=_self("redis.asyncio.client.Redis"), calls="redis.asyncio.Redis.from_url(url)"),
        Kind("redis.asyncio.client.PubSub", "redis:async_pubsub",
             track=_self("redis.asyncio.client.PubSub"), calls="client.pubsub()"),
        Kind("redis.asyncio.connection.ConnectionPool", "redis:async_pool",
             track=_self("redis.asyncio.connection.ConnectionPool"),
             calls="redis.asyncio.ConnectionPool.from_url(url)"),
    )),
    Family("pymongo", ("pymongo", "bson", "gridfs", "motor"), (
        Kind("pymongo.synchronous.mongo_client.MongoClient", "pymongo:client",
             track=_self("pymongo.synchronous.mongo_client.MongoClient"), calls="MongoClient(url)"),
        # PyMongo < 4.9 defines it here
        Kind("pymongo.mongo_client.MongoClient", "pymongo:client",
             track=_self("pymongo.mongo_client.MongoClient"), calls="MongoClient(url)"),
        Kind("pymongo.asynchronous.mongo_client.AsyncMongoClient", "pymongo:async_client",
             track=_self("pymongo.asynchronous.mongo_client.AsyncMongoClient"),
             calls="AsyncMongoClient(url)"),
        # Motor (deprecated for PyMongo's AsyncMongoClient): wraps a MongoClient, its delegate
        Kind("motor.motor_asyncio.AsyncIOMotorClient", "pymongo:motor_client",
             track=_self("motor.motor_asyncio.AsyncIOMotorClient"),
             calls="AsyncMongoClient(url)"),
    )),
    Family("sqlalchemy", ("sqlalchemy",), (
        Kind("sqlalchemy.engine.base.Engine", "sqlalchemy:engine",
             track=_self("sqlalchemy.engine.base.Engine"), calls="create_engine(url)"),
        Kind("sqlalchemy.ext.asyncio.engine.AsyncEngine", "sqlalchemy:async_engine",
             track=_self("sqlalchemy.ext.asyncio.engine.AsyncEngine"),
             calls="create_async_engine(url)"),
    )),
    Family("psycopg", ("psycopg", "psycopg_pool", "psycopg_binary", "psycopg_c"), (
        # psycopg sets __module__ = "psycopg" on its public classes; defined in psycopg.connection
        Kind("psycopg.Connection", "psycopg:connection", track="psycopg.connection:Connection",
             leaf=True, calls="psycopg.connect(dsn)"),
        Kind("psycopg.AsyncConnection", "psycopg:connection", calls="await psycopg.AsyncConnection.connect(dsn)"),
        Kind("psycopg_pool.pool.ConnectionPool", "psycopg:pool",
             track=_self("psycopg_pool.pool.ConnectionPool"), calls="ConnectionPool(dsn)"),
    )),
    Family("psycopg2", ("psycopg2",), (
        # psycopg2's connection is a C type whose construction cannot be observed;
        # psycopg2.connect() calls the module global _connect, which returns every connection.
        Kind("psycopg2.extensions.connection", "psycopg2:connection", track="psycopg2:_connect",
             leaf=True, calls="psycopg2.connect(dsn)"),
        Kind("psycopg2.pool.AbstractConnectionPool", "psycopg2:pool",
             track=_self("psycopg2.pool.AbstractConnectionPool"),
             calls="psycopg2.pool.ThreadedConnectionPool(1, 10, dsn)"),
    )),
    Family("django", ("django", "django_redis"), (
        # The handlers hold every thread's connections and caches: registering them (one line in
        # INSTALLED_APPS does) manages all, including those opened later.
        Kind("django.db.utils.ConnectionHandler", "django:connections",
             calls="django.db.connections", fix=_DJANGO_FIX),
        Kind("django.core.cache.CacheHandler", "django:caches",
             calls="django.core.cache.caches", fix=_DJANGO_FIX),
        Kind("django.utils.connection.ConnectionProxy", "django:proxy",
             calls="django.db.connection", fix=_DJANGO_FIX),
        Kind("django.db.backends.base.base.BaseDatabaseWrapper", "django:database",
             track=_self("django.db.backends.base.base.BaseDatabaseWrapper"),
             calls="django.db.connections[alias]", fix=_DJANGO_FIX),
        Kind("django.core.cache.backends.redis.RedisCache", "django:redis_cache",
             track=_self("django.core.cache.backends.redis.RedisCache"),
             calls="django.core.cache.caches[alias]", fix=_DJANGO_FIX),
        Kind("django_redis.cache.RedisCache", "django:django_redis_cache",
             track=_self("django_redis.cache.RedisCache"),
             calls="django.core.cache.caches[alias]", fix=_DJANGO_FIX),
    )),
    Family("http.client", ("http",), (
        Kind("http.client.HTTPConnection", "http_client:connection",
             track=_self("http.client.HTTPConnection"), calls="http.client.HTTPConnection(host, port)"),
    )),
    Family("urllib3", ("urllib3",), (
        Kind("urllib3.poolmanager.PoolManager", "urllib3:pool_manager",
             track=_self("urllib3.poolmanager.PoolManager"), calls="urllib3.PoolManager()"),
        # leaf: a PoolManager builds its pools, and a pool its connections, when used
        Kind("urllib3.connectionpool.HTTPConnectionPool", "urllib3:pool",
             track=_self("urllib3.connectionpool.HTTPConnectionPool"), leaf=True,
             calls="urllib3.HTTPConnectionPool(host, port)"),
        Kind("urllib3.connection.HTTPConnection", "urllib3:connection",
             track=_self("urllib3.connection.HTTPConnection"), leaf=True,
             calls="urllib3.connection.HTTPConnection(host, port)"),
    )),
    Family("requests", ("requests",), (
        Kind("requests.sessions.Session", "requests:session",
             track=_self("requests.sessions.Session"), calls="requests.Session()"),
        Kind("requests.adapters.HTTPAdapter", "requests:adapter",
             track=_self("requests.adapters.HTTPAdapter"), calls="requests.adapters.HTTPAdapter()"),
    )),
    Family("httpx", ("httpx", "httpcore", "anyio", "h11", "h2"), (
        # httpx sets __module__ = "httpx" on its public classes; defined in httpx._client
        Kind("httpx.Client", "httpx:client", track="httpx._client:Client", calls="httpx.Client()"),
        Kind("httpx.AsyncClient", "httpx:client", track="httpx._client:AsyncClient",
             calls="httpx.AsyncClient()"),
        Kind("httpcore.ConnectionPool", "httpx:pool", calls="httpcore.ConnectionPool()"),
        Kind("httpcore.AsyncConnectionPool", "httpx:pool", calls="httpcore.AsyncConnectionPool()"),
    )),
    Family("aiohttp", ("aiohttp", "aiohappyeyeballs", "yarl", "multidict"), (
        Kind("aiohttp.client.ClientSession", "aiohttp:session",
             track=_self("aiohttp.client.ClientSession"), calls="aiohttp.ClientSession()"),
    )),
    Family("logging", ("logging",), (
        # DatagramHandler is a SocketHandler: its construction is observed through it
        Kind("logging.handlers.SocketHandler", "logging:socket_handler",
             track=_self("logging.handlers.SocketHandler"),
             calls="logging.handlers.SocketHandler(host, port)"),
        Kind("logging.handlers.DatagramHandler", "logging:socket_handler",
             calls="logging.handlers.DatagramHandler(host, port)"),
        Kind("logging.handlers.SysLogHandler", "logging:syslog_handler",
             track=_self("logging.handlers.SysLogHandler"),
             calls="logging.handlers.SysLogHandler(address)"),
        Kind("logging.handlers.QueueHandler", "logging:queue_handler",
             track=_self("logging.handlers.QueueHandler"),
             calls="logging.handlers.QueueHandler(queue)"),
        Kind("logging.handlers.QueueListener", "logging:queue_listener",
             track=_self("logging.handlers.QueueListener"),
             calls="logging.handlers.QueueListener(queue, *handlers)"),
    )),
    Family("pymysql", ("pymysql",), (
        # leaf: an SQLAlchemy engine (mysql+pymysql) builds them for itself when it connects
        Kind("pymysql.connections.Connection", "pymysql:connection",
             track=_self("pymysql.connections.Connection"), leaf=True,
             calls="pymysql.connect(...)"),
    )),
    Family("mysqlclient", ("MySQLdb",), (
        # a Python subclass of the C type _mysql.connection: its __new__ can be observed
        Kind("MySQLdb.connections.Connection", "mysqlclient:connection",
             track=_self("MySQLdb.connections.Connection"), leaf=True,
             calls="MySQLdb.connect(...)"),
    )),
    Family("paho-mqtt", ("paho",), (
        Kind("paho.mqtt.client.Client", "paho:client", track=_self("paho.mqtt.client.Client"),
             calls="mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)"),
    )),
    Family("nats-py", ("nats",), (
        Kind("nats.aio.client.Client", "nats:client", track=_self("nats.aio.client.Client"),
             calls="nats.aio.client.Client()"),
    )),
    Family("pika", ("pika",), (
        # retired in the child (pika cannot reconnect; a channel is server-side state)
        Kind("pika.adapters.blocking_connection.BlockingConnection", "pika:connection",
             track=_self("pika.adapters.blocking_connection.BlockingConnection"),
             calls="pika.BlockingConnection(params)"),
        Kind("pika.adapters.blocking_connection.BlockingChannel", "pika:channel",
             calls="pika.BlockingConnection(params).channel()"),
    )),
    Family("kombu", ("kombu", "amqp", "vine"), (
        # PooledConnection is a subclass: built by kombu's pools, tracked through this __new__
        Kind("kombu.connection.Connection", "kombu:connection",
             track=_self("kombu.connection.Connection"), calls="kombu.Connection(url)"),
        # a virtual transport's channel (redis, ...) holds that family's clients: tracked as a
        # leaf so that they belong to the kombu Connection whose method opened the channel
        Kind("kombu.transport.virtual.base.Channel", "kombu:channel",
             track=_self("kombu.transport.virtual.base.Channel"), leaf=True,
             calls="connection.channel()"),
        # a producer that published in the master holds the master's channel: a finding unless
        # registered (its reset revives it on its reset connection)
        Kind("kombu.messaging.Producer", "kombu:producer", track=_self("kombu.messaging.Producer"),
             calls="connection.Producer()"),
        Kind("kombu.resource.Resource", "kombu:pool", calls="connection.Pool(limit)"),
        Kind("kombu.pools.PoolGroup", "kombu:pool_group", calls="kombu.pools.connections"),
    )),
    Family("asyncpg", ("asyncpg",), (
        # a Pool builds its connections for itself: leaf
        Kind("asyncpg.connection.Connection", "asyncpg:connection",
             track=_self("asyncpg.connection.Connection"), leaf=True,
             calls="asyncpg.create_pool(dsn)"),  # per process: a pool, awaited there
        # not weakly referenceable (__slots__ without __weakref__): the guard cannot hold one,
        # it names the pool's connections instead, at the line that created the pool
        Kind("asyncpg.pool.Pool", "asyncpg:pool", calls="asyncpg.create_pool(dsn)"),
    )),
    Family("pymemcache", ("pymemcache",), (
        # a PooledClient / HashClient builds its Clients for itself: leaf, owned by it
        Kind("pymemcache.client.base.Client", "pymemcache:client",
             track=_self("pymemcache.client.base.Client"), leaf=True,
             calls="pymemcache.Client((host, port))"),
        Kind("pymemcache.client.base.PooledClient", "pymemcache:pooled",
             track=_self("pymemcache.client.base.PooledClient"),
             calls="pymemcache.PooledClient((host, port))"),
        Kind("pymemcache.client.hash.HashClient", "pymemcache:hash_client",
             track=_self("pymemcache.client.hash.HashClient"),
             calls="pymemcache.HashClient(servers)"),
        Kind("pymemcache.client.retrying.RetryingClient", "pymemcache:retrying",
             track=_self("pymemcache.client.retrying.RetryingClient"),
             calls="pymemcache.RetryingClient(pymemcache.Client((host, port)))"),
    )),
    Family("confluent_kafka", ("confluent_kafka",), (
        # The binding's own types are static C types: no __new__ can be set on them and they
        # cannot be weakly referenced; the guard observes them at their tp_new slot
        # (postfork/_guard/_static.py). Their Python subclasses are tracked as usual.
        Kind("cimpl.Producer", "confluent_kafka:handle", track="confluent_kafka.cimpl:Producer",
             calls="Producer(conf)"),
        Kind("cimpl.Consumer", "confluent_kafka:handle", track="confluent_kafka.cimpl:Consumer",
             calls="Consumer(conf)"),
        Kind("confluent_kafka.cimpl.Producer", "confluent_kafka:handle", calls="Producer(conf)"),
        Kind("confluent_kafka.cimpl.Consumer", "confluent_kafka:handle", calls="Consumer(conf)"),
        Kind("confluent_kafka.serializing_producer.SerializingProducer", "confluent_kafka:handle",
             track=_self("confluent_kafka.serializing_producer.SerializingProducer"),
             calls="SerializingProducer(conf)"),
        Kind("confluent_kafka.deserializing_consumer.DeserializingConsumer",
             "confluent_kafka:handle",
             track=_self("confluent_kafka.deserializing_consumer.DeserializingConsumer"),
             calls="DeserializingConsumer(conf)"),
    )),
    Family("botocore", ("botocore", "boto3", "s3transfer"), (
        # every client class is made by botocore at run time (botocore.client.S3...): a
        # subclass of BaseClient, whose __new__ they inherit
        Kind("botocore.client.BaseClient", "botocore:client", track=_self("botocore.client.BaseClient"),
             calls="boto3.client('s3')"),
        Kind("boto3.resources.base.ServiceResource", "botocore:resource", calls="boto3.resource('s3')"),
        Kind("boto3.session.Session", "botocore:session", calls="boto3.Session()"),
        Kind("botocore.session.Session", "botocore:session", calls="botocore.session.get_session()"),
    )),
    Family("elasticsearch", ("elasticsearch", "elastic_transport"), (
        # both packages set __module__ to the package on their public classes
        # leaf: client.options(...) builds a copy sharing the client's transport
        Kind("elasticsearch.Elasticsearch", "elasticsearch:client",
             track="elasticsearch._sync.client:Elasticsearch", leaf=True,
             calls="Elasticsearch(url)"),
        Kind("elastic_transport.Transport", "elasticsearch:transport",
             calls="elastic_transport.Transport([NodeConfig(...)])"),
    )),
    Family("opentelemetry", ("opentelemetry",), (
        # The processors are tracked, not the exporter: the batch processor's worker thread,
        # started in its __init__, then belongs to it (OpenTelemetry restarts it in a worker),
        # and the exporter, reached through its processor, is part of its finding.
        Kind("opentelemetry.sdk.trace.export.BatchSpanProcessor", "opentelemetry:processor",
             track=_self("opentelemetry.sdk.trace.export.BatchSpanProcessor"),
             calls="BatchSpanProcessor(OTLPSpanExporter(endpoint))"),
        Kind("opentelemetry.sdk.trace.export.SimpleSpanProcessor", "opentelemetry:processor",
             track=_self("opentelemetry.sdk.trace.export.SimpleSpanProcessor"),
             calls="SimpleSpanProcessor(OTLPSpanExporter(endpoint))"),
        Kind("opentelemetry.exporter.otlp.proto.http.trace_exporter.OTLPSpanExporter",
             "opentelemetry:exporter_adapter", calls="OTLPSpanExporter(endpoint)"),
        Kind("opentelemetry.sdk.trace.TracerProvider", "opentelemetry:tracer_provider",
             calls="TracerProvider()"),
    )),
    Family("sentry-sdk", ("sentry_sdk",), (
        Kind("sentry_sdk.client._Client", "sentry:client", track=_self("sentry_sdk.client._Client"),
             calls="sentry_sdk.init(dsn)"),
        Kind("sentry_sdk.transport.BaseHttpTransport", "sentry:transport",
             calls="sentry_sdk.transport.HttpTransport(options)"),
    )),
    Family("grpc", ("grpc",), (
        Kind("grpc._channel.Channel", "grpc:channel", track=_self("grpc._channel.Channel"),
             calls="grpc.insecure_channel(target)"),
    ), note=(
        "grpc reads these variables once, when it is imported: they must be in the environment "
        "before `import grpc` (set by the shell or the server's config, not by the application "
        "afterwards). grpc's own fork support needs both; without them a channel the master "
        "used fails or hangs in a worker (grpc#13873), and even with them a worker forked while "
        "a master thread is inside an RPC hangs in grpc's fork handler. postfork retires an "
        "inherited channel in any case: make no RPC in the master and build channels in each "
        "worker: postfork.local(lambda: grpc.insecure_channel(target, "
        "options=[(\"grpc.use_local_subchannel_pool\", 1)]))"),
        env=(("GRPC_ENABLE_FORK_SUPPORT", "true"), ("GRPC_POLL_STRATEGY", "poll"))),
    Family("socket", (), (
        Kind("socket.socket", "socket:socket", track=_self("socket.socket"), leaf=True,
             calls="socket.create_connection(address)"),
    )),
    Family("files", (), tuple(
        Kind(f"_io.{cls}", "files:file", calls="open(path, 'ab')")
        for cls in ("FileIO", "BufferedWriter", "BufferedReader", "BufferedRandom", "TextIOWrapper")
    )),
)

_BY_NAME: Dict[str, Kind] = {}
_FAMILY_OF: Dict[str, Family] = {}
for _family in FAMILIES:
    for _kind in _family.kinds:
        _BY_NAME[_kind.name] = _kind
        _FAMILY_OF[_kind.name] = _family
del _family, _kind


def kinds() -> Iterator[Tuple[Family, Kind]]:
    for family in FAMILIES:
        for kind in family.kinds:
            yield family, kind


def kind_of_name(qualified: str) -> Optional[Kind]:
    return _BY_NAME.get(qualified)


def family_of_name(qualified: str) -> Optional[Family]:
    return _FAMILY_OF.get(qualified)


def tracked() -> Dict[str, List[Tuple[str, bool]]]:
    """module -> [(attr, leaf)] the guard records the construction of."""
    out: Dict[str, List[Tuple[str, bool]]] = {}
    for _, kind in kinds():
        if kind.track is not None:
            module, _, attr = kind.track.partition(":")
            entries = out.setdefault(module, [])
            if (attr, kind.leaf) not in entries:
                entries.append((attr, kind.leaf))
    return out


def packages() -> Tuple[str, ...]:
    return tuple(p for family in FAMILIES for p in family.packages)
