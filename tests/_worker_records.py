"""What tests/test_dramatiq.py and tests/test_huey.py share: a run of a task runner with its
own queue and the environment its task app (built on tests/_threaded_app.py) reads, and what
the records that app appends say about whose connections each worker process used."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Set, Tuple

from _servers import Server, records, with_db

TESTS = Path(__file__).resolve().parent


class TaskRun:
    """A task runner's run on a Redis database, queue and key prefix of its own (``name``), and
    the file its app records in; ``server`` once started."""

    def __init__(self, tmp_path: Path, redis_url: str, postgres_dsn: str, db: int) -> None:
        self.tmp_path = tmp_path
        self.url = with_db(redis_url, db)
        self.postgres_dsn = postgres_dsn
        self.name = f"postfork-test-{uuid.uuid4().hex[:12]}"
        self.records = tmp_path / f"{self.name}.jsonl"
        self.server: Optional[Server] = None

    def app_env(self, *, unmanaged: bool, env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """The task app's environment: its Redis and PostgreSQL, ``name`` as its key prefix and
        queue, where it appends its records; ``env`` on top."""
        return {"APP_REDIS_URL": self.url, "POSTGRES_DSN": self.postgres_dsn,
                "POSTFORK_TEST_PREFIX": self.name, "POSTFORK_TEST_QUEUE": self.name,
                "POSTFORK_TEST_RECORDS": str(self.records), "PYTHONPATH": str(TESTS),
                "POSTFORK_TEST_UNMANAGED": "1" if unmanaged else "0", **(env or {})}


def by_process(rows: List[Dict[str, Any]]) -> Dict[int, Set[Tuple[Any, Any]]]:
    """pid -> the (redis CLIENT ID, PostgreSQL backend pid) pairs its records reported."""
    seen: Dict[int, Set[Tuple[Any, Any]]] = defaultdict(set)
    for r in rows:
        seen[r["pid"]].add((r.get("redis"), r.get("postgres")))
    return dict(seen)


class Shared(NamedTuple):
    """What ``count`` messages/tasks did on connections the importing process built."""
    main: Dict[str, Any]  # the importing process's record
    done: List[Dict[str, Any]]
    wrong: int
    errors: int
    lost: int  # stuck on replies another process read


def shared_connections(server: Server, path: Path, count: int) -> Shared:
    """The hazard: give the unmanaged workers 6 s for ``count`` messages (they may never all
    finish); something went wrong, and the importing process's connections answered in the
    workers. (Crossed replies may add garbage to the identities, and a process can be stuck
    before recording anything.)"""
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline and len([r for r in records(path)
                                               if r["role"] == "message"]) < count:
        time.sleep(0.2)
    rows = records(path)
    (main,) = [r for r in rows if r["role"] == "import"]
    done = [r for r in rows if r["role"] == "message"]
    seen = Shared(main, done, sum(r["wrong"] for r in done),
                  sum(len(r["errors"]) for r in done), count - len(done))
    assert seen.wrong + seen.errors + seen.lost > 0, server.describe()
    if done:  # (all of them can be stuck)
        assert main["redis"] in {r.get("redis") for r in done}
        assert main["postgres"] in {r.get("postgres") for r in done}
        assert main["pid"] not in {r["pid"] for r in done}
    return seen


def assert_two_processes_each_their_own(done: List[Dict[str, Any]],
                                        main: Dict[str, Any]) -> Dict[int, Set[Tuple[Any, Any]]]:
    """The fix: every answer right, two worker processes (not ``main``, the importing one), one
    redis connection and one PostgreSQL session each, none of them ``main``'s. Returns
    ``by_process(done)``."""
    assert all(r["wrong"] == 0 and r["errors"] == [] for r in done), done
    seen = by_process(done)
    assert len(seen) == 2 and main["pid"] not in seen, seen
    assert all(len(pairs) == 1 for pairs in seen.values()), seen  # one of each per process
    ids = [pair for pairs in seen.values() for pair in pairs]
    assert len({i[0] for i in ids}) == 2 and main["redis"] not in {i[0] for i in ids}
    assert len({i[1] for i in ids}) == 2 and main["postgres"] not in {i[1] for i in ids}
    return seen
