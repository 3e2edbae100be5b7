"""A small WSGI app whose clients are built at import time, as a preloaded app builds them.

Always: an SQLAlchemy engine on a local SQLite file and an append-only journal file. With
``REDIS_URL``, ``POSTGRES_DSN`` or ``MONGO_URL`` set, also a redis client, a psycopg pool and a
``MongoClient``. Every client is registered with postfork and used once at import, so the
master holds a live connection of its own that every worker inherits.

``GET /?n=N`` answers with the worker's pid, how many times postfork's resets ran in it, and
for each client the identity of this process's own connection as the server sees it (redis
``CLIENT ID``, PostgreSQL ``pg_backend_pid()``, SQLite a random id kept in a per-connection
``TEMP`` table, MongoDB the peer port from ``whatsmyuri``) with the answer to a query whose
correct value is ``N``: a caller counts wrong answers. ``GET /master`` returns the same
identities as the process that imported the app (the master, when preloaded) recorded them,
and the pid of the worker that served the request.

With ``BACKEND_URL`` set (``make demo`` starts one), also an ``http.client`` keep-alive
connection to that HTTP backend, whose ``/echo?n=N`` answers N and names the connection.

``POSTFORK_DEMO_UNMANAGED=1`` builds the same clients without registering them, to show what
postfork fixes (``make demo`` runs the app that way first).

Run it: ``gunicorn -c examples/gunicorn.conf.py`` or ``uwsgi --ini examples/uwsgi.ini``.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional
from urllib.parse import parse_qs

import postfork

DATA_DIR = os.environ.get("POSTFORK_EXAMPLE_DIR") or os.path.join(tempfile.gettempdir(), "postfork-example")
os.makedirs(DATA_DIR, exist_ok=True)


UNMANAGED = os.environ.get("POSTFORK_DEMO_UNMANAGED") == "1"


def manage(obj: Any) -> Any:
    """``postfork.register``, unless the demo runs the app unmanaged to show the hazard."""
    return obj if UNMANAGED else postfork.register(obj)


class Probe(NamedTuple):
    """How the app asks one client who it is and makes it answer a number back."""

    identity: Callable[[], Any]
    answer: Optional[Callable[[int], int]]


PROBES: Dict[str, Probe] = {}


def _sqlite() -> Probe:
    import sqlalchemy
    from sqlalchemy import event

    engine = sqlalchemy.create_engine(f"sqlite:///{os.path.join(DATA_DIR, 'example.db')}")

    @event.listens_for(engine, "connect")
    def _tag(dbapi_connection: Any, _record: Any) -> None:
        # A TEMP table lives in one SQLite connection only: its row names that connection.
        dbapi_connection.execute("CREATE TEMP TABLE postfork_conn (id TEXT)")
        dbapi_connection.execute("INSERT INTO postfork_conn VALUES (?)", (secrets.token_hex(6),))
        dbapi_connection.commit()  # else the pool's rollback-on-return takes the row away

    manage(engine)

    def query(sql: str, **params: Any) -> Any:
        with engine.connect() as conn:
            return conn.execute(sqlalchemy.text(sql), params).scalar()

    return Probe(lambda: query("SELECT id FROM temp.postfork_conn"),
                 lambda n: int(query("SELECT :n", n=n)))


def _redis(url: str) -> Probe:
    import redis

    client = manage(redis.Redis.from_url(url, socket_timeout=5))
    return Probe(client.client_id, lambda n: int(client.echo(str(n))))


def _postgres(dsn: str) -> Probe:
    from psycopg_pool import ConnectionPool

    pool = manage(ConnectionPool(dsn, min_size=1, max_size=2, open=True, timeout=10))

    def query(sql: str, *params: Any) -> Any:
        with pool.connection() as conn:
            return conn.execute(sql, params).fetchone()[0]

    return Probe(lambda: query("SELECT pg_backend_pid()"), lambda n: query("SELECT %s::int", n))


def _mongo(url: str) -> Probe:
    from pymongo import MongoClient

    client: "MongoClient[Dict[str, Any]]" = manage(MongoClient(url, serverSelectionTimeoutMS=5000))

    def peer_port() -> int:
        return int(client.admin.command("whatsmyuri")["you"].rsplit(":", 1)[1])

    return Probe(peer_port, None)


def _backend(url: str) -> Probe:
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(url)
    conn = manage(http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=5))

    def echo(n: int) -> Dict[str, Any]:
        try:
            conn.request("GET", f"/echo?n={n}")
            return json.loads(conn.getresponse().read())  # type: ignore[no-any-return]
        except Exception:
            conn.close()  # a broken exchange: start over on a new connection next time
            raise

    return Probe(lambda: echo(0)["connection"], lambda n: int(echo(n)["n"]))


PROBES["sqlite"] = _sqlite()
for _name, _env, _build in (("backend", "BACKEND_URL", _backend), ("redis", "REDIS_URL", _redis),
                            ("postgres", "POSTGRES_DSN", _postgres), ("mongo", "MONGO_URL", _mongo)):
    if os.environ.get(_env):
        PROBES[_name] = _build(os.environ[_env])

# The journal: each request appends one line "pid n". Registered, so each worker gets a file
# description of its own (its own offset) instead of sharing the master's.
JOURNAL_PATH = os.path.join(DATA_DIR, "journal.log")
journal = manage(open(JOURNAL_PATH, "a", buffering=1))

_resets: List[int] = []


@postfork.after_fork
def _count_reset() -> None:
    _resets.append(os.getpid())


# Use every client once here, in the master, as a preloaded app does: the workers inherit
# these live connections, and /master tells a caller which ones they were.
MASTER: Dict[str, Any] = {"pid": os.getpid(), **{name: p.identity() for name, p in PROBES.items()}}


def whoami(n: int) -> Dict[str, Any]:
    pid = os.getpid()
    journal.write(f"{pid} {n}\n")
    clients = {name: _ask(probe, n) for name, probe in PROBES.items()}
    return {"pid": pid, "resets": _resets.count(pid), "n": n, "clients": clients}


def _ask(probe: Probe, n: int) -> Dict[str, Any]:
    try:
        return {"id": probe.identity(), "answer": probe.answer(n) if probe.answer else None}
    except Exception as exc:  # a client that failed answers with its error, for the caller to count
        return {"id": None, "answer": None, "error": f"{type(exc).__name__}: {exc}"}


def application(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path == "/master":
        body: Any = {**MASTER, "served_by": os.getpid()}
    elif path == "/":
        query = parse_qs(environ.get("QUERY_STRING", ""))
        body = whoami(int(query.get("n", ["0"])[0]))
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
