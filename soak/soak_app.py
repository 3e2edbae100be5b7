"""The soak's application: clients built at import time (in the master, when preloaded), each
request using all of them and answering what they returned, for the caller to check.

``GET /?id=ID&n=N``: redis ``SET {prefix}:{ID} "{ID}:{N}"`` then ``GET`` it back; PostgreSQL
``INSERT`` row (ID, N) into the soak's table then ``SELECT`` N back by ID; SQLite reads row
``N % 100`` of a table made at import (``sq{k*k}``); then one journal line
``ID PID N CRC32`` is appended. Each answer is the raw value the client returned (a client that
raised answers ``None`` and its error), so a caller counts a wrong answer as any value that is
not the one this very request wrote or asked for.

``GET /master``: what the importing process (the master) recorded at import: its pid, its redis
``CLIENT ID`` and its PostgreSQL backend pid. ``master_check()`` uses the master's own clients
again and appends the outcome to ``master.jsonl``; the soak's gunicorn config calls it from
``pre_fork``, in the master.

Settings (environment): ``SOAK_REDIS_URL``, ``SOAK_POSTGRES_DSN`` (its ``application_name``
names the soak's connections), ``SOAK_TABLE``, ``SOAK_PREFIX`` (redis keys and the redis client
name), ``SOAK_DIR`` (journal, SQLite file, master.jsonl). ``POSTFORK_DEMO_UNMANAGED=1`` builds
the same clients without registering them.

SQLite is used at import, in the main thread only: a master *thread* inside SQLite at the
instant of a fork can leave SQLite's mutexes held in the child (``soak/sqlite_in_master_thread.py``).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Optional
from urllib.parse import parse_qs

import redis
import sqlalchemy
from psycopg_pool import ConnectionPool

import postfork
from _journal import journal_line

UNMANAGED = os.environ.get("POSTFORK_DEMO_UNMANAGED") == "1"
DATA_DIR = os.environ["SOAK_DIR"]
TABLE = os.environ["SOAK_TABLE"]
PREFIX = os.environ["SOAK_PREFIX"]
JOURNAL_PATH = os.path.join(DATA_DIR, "journal.log")
MASTER_LOG = os.path.join(DATA_DIR, "master.jsonl")


def manage(obj: Any) -> Any:
    return obj if UNMANAGED else postfork.register(obj)


cache: redis.Redis = manage(redis.Redis.from_url(
    os.environ["SOAK_REDIS_URL"], socket_timeout=5, socket_connect_timeout=2, client_name=PREFIX))

# check=: a connection the server dropped (a restart) is replaced on the next getconn instead
# of failing one request in each process.
pool = manage(ConnectionPool(os.environ["SOAK_POSTGRES_DSN"], min_size=1, max_size=1, open=True,
                             timeout=10, check=ConnectionPool.check_connection))
# Every connection ready before the server forks (tests/../examples/app.py says why).
pool.wait(timeout=30)

sqlite = manage(sqlalchemy.create_engine(f"sqlite:///{os.path.join(DATA_DIR, 'soak.db')}"))
journal = manage(open(JOURNAL_PATH, "a", buffering=1))


def _setup() -> None:
    with pool.connection() as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id text PRIMARY KEY, n int, pid int)")
    with sqlite.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v TEXT)"))
        conn.execute(sqlalchemy.text("INSERT OR REPLACE INTO kv VALUES (:k, :v)"),
                     [{"k": k, "v": f"sq{k * k}"} for k in range(100)])


def _identities() -> Dict[str, Any]:
    with pool.connection() as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()
    return {"redis": cache.client_id(), "postgres": backend[0] if backend else None}


_resets: List[int] = []


@postfork.after_fork
def _count_reset() -> None:
    _resets.append(os.getpid())


_setup()
MASTER: Dict[str, Any] = {"pid": os.getpid(), **_identities()}


def _try(answers: Dict[str, Any], errors: Dict[str, str], name: str, call: Callable[[], Any]) -> None:
    try:
        answers[name] = call()
    except Exception as exc:  # an outage: the caller counts it as an error, not a wrong answer
        answers[name] = None
        errors[name] = f"{type(exc).__name__}: {exc}"[:300]


def _postgres(ident: str, n: int) -> Optional[int]:
    with pool.connection() as conn:
        conn.execute(f"INSERT INTO {TABLE} (id, n, pid) VALUES (%s, %s, %s)", (ident, n, os.getpid()))
        row = conn.execute(f"SELECT n FROM {TABLE} WHERE id = %s", (ident,)).fetchone()
    return row[0] if row else None


def _redis(ident: str, n: int) -> Optional[str]:
    key = f"{PREFIX}:{ident}"
    cache.set(key, f"{ident}:{n}", ex=600)
    value = cache.get(key)
    return value.decode() if isinstance(value, bytes) else value


def _sqlite(n: int) -> Any:
    with sqlite.connect() as conn:
        return conn.execute(sqlalchemy.text("SELECT v FROM kv WHERE k = :k"), {"k": n % 100}).scalar()


def work(ident: str, n: int) -> Dict[str, Any]:
    """One unit of the soak: every client once, then the journal line."""
    answers: Dict[str, Any] = {}
    errors: Dict[str, str] = {}
    _try(answers, errors, "redis", lambda: _redis(ident, n))
    _try(answers, errors, "postgres", lambda: _postgres(ident, n))
    _try(answers, errors, "sqlite", lambda: _sqlite(n))
    pid = os.getpid()
    journal.write(journal_line(ident, pid, n))
    return {"pid": pid, "id": ident, "n": n, "resets": _resets.count(pid), "answers": answers,
            "errors": errors}


def master_check() -> Dict[str, Any]:
    """Use this process's own clients (the master's, when called there): a SET/GET of a fresh
    value and the identities of both connections, appended to ``master.jsonl``."""
    record: Dict[str, Any] = {"pid": os.getpid(), "at": time.time()}
    try:
        token = f"{os.getpid()}:{time.monotonic_ns()}"
        cache.set(f"{PREFIX}:master", token, ex=600)
        record["ok"] = cache.get(f"{PREFIX}:master") == token.encode()
        record.update(_identities())
    except Exception as exc:
        record.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
    with open(MASTER_LOG, "a") as log:
        log.write(json.dumps(record) + "\n")
    return record


def application(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path == "/master":
        body: Any = {**MASTER, "served_by": os.getpid()}
    elif path == "/":
        query = parse_qs(environ.get("QUERY_STRING", ""))
        body = work(query["id"][0], int(query["n"][0]))
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]

