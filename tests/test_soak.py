"""The soak (``soak/run.py``, ``make soak``) at a tenth of its scale: the soak app under gunicorn
``--preload`` and uWSGI with workers recycled every ~25 requests, under Celery with pool
processes recycled every 5 tasks, with its own Redis and PostgreSQL restarted under load, and
with workers killed -9 under load.

Each scenario checks every answer (the value this very request wrote or asked for), every
journal line (intact, exactly once, written by the pid that answered), the master's
descriptors and RSS (after the first tenth and at the end), and the soak's own server-side
connections before start and after shutdown; ``problems`` lists each check that failed. The
hazard without postfork is shown by test_demo.py, test_gunicorn.py and test_uwsgi.py.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

from conftest import _missing

SOAK = Path(__file__).resolve().parent.parent / "soak"
sys.path.insert(0, str(SOAK))

from _soak import RSS_TOLERANCE_KIB, Tally, check_journal, run_scenario, scenarios  # noqa: E402
from _journal import journal_line  # noqa: E402

SCALE = 0.1


def soak(name: str, tmp_path: Path, redis_url: str, postgres_dsn: str) -> Dict[str, Any]:
    pytest.importorskip("psycopg_pool")
    (sc,) = [s for s in scenarios(SCALE) if s.name == name]
    figures = run_scenario(sc, tmp_path, redis_url, postgres_dsn)
    assert figures["problems"] == [], figures
    assert figures["wrong"] == 0
    assert figures["journal"]["lines"] >= figures["answered"] and figures["journal"]["bad"] == 0
    assert figures["fds_end"] == figures["fds_start"]
    assert figures["rss_kib_end"] - figures["rss_kib_start"] <= RSS_TOLERANCE_KIB
    assert figures["connections_before"] == figures["connections_after"] == [0, 0]
    return figures


@pytest.mark.parametrize("name", ["gunicorn", "uwsgi", "celery"])
def test_recycled_workers_give_no_wrong_answer_and_leak_nothing(name, tmp_path, redis_url,
                                                                postgres_dsn) -> None:
    if name == "celery":
        pytest.importorskip("celery")
    figures = soak(name, tmp_path, redis_url, postgres_dsn)
    assert figures["failed"] == figures["client_errors"] == 0
    assert figures["answered"] == figures["requests"]
    assert figures["worker_pids"] > 4  # recycling happened
    if name == "gunicorn":  # the master used its own clients before every fork, unharmed
        assert figures["master_checks"] >= figures["worker_pids"]
        assert figures["master_checks_failed"] == 0


def test_own_redis_and_postgres_restarted_under_load(tmp_path, redis_url, postgres_dsn) -> None:
    for binary in ("redis-server",):
        if shutil.which(binary) is None:
            _missing(binary, "not installed")
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")) and shutil.which("initdb") is None:
        _missing("PostgreSQL's initdb", "not installed")
    figures = soak("restarts", tmp_path, redis_url, postgres_dsn)
    assert figures["server_restarts"] == [1, 1]
    # each outage fell under load: requests were in flight while that server was down (whether
    # they failed is the client's business: psycopg_pool waits for a new connection)
    assert all(figures["requests_during_outages"].values()), figures["requests_during_outages"]
    # the same four workers, each answering correctly again on its own
    assert figures["workers_survived"] == figures["workers_recovered"] == 4
    after = figures["master_after_restart"]
    assert after["ok"] and after["pid"] == figures["master_pid"]
    assert after["redis"] != figures["master_preload"]["redis"]  # the master reconnected


@pytest.mark.parametrize("name", ["gunicorn-kill9", "uwsgi-kill9"])
def test_workers_killed_mid_request(name, tmp_path, redis_url, postgres_dsn) -> None:
    figures = soak(name, tmp_path, redis_url, postgres_dsn)
    assert figures["kills"] >= 3
    assert figures["respawned_answered"] >= figures["kills"]
    assert figures["answered"] + figures["failed"] == figures["requests"]
    if name == "gunicorn-kill9":  # the master's preload session, unchanged and working
        assert figures["master_checks"] >= 4 + figures["kills"]
        assert figures["master_checks_failed"] == 0


def test_the_checks_catch_a_wrong_answer_and_a_torn_or_repeated_line(tmp_path) -> None:
    tally = Tally()
    tally.answered = [{"id": f"t-{i}", "pid": 7, "n": i, "resets": 1, "errors": {},
                       "answers": {"redis": f"t-{i}:{i}", "postgres": i, "sqlite": f"sq{i * i}"}}
                      for i in range(3)]
    tally.answered[2]["answers"]["postgres"] = 1  # another request's row
    assert [w.split(":")[0] for w in tally.wrong()] == ["t-2 pid 7 postgres"]
    journal = tmp_path / "journal.log"
    journal.write_text(journal_line("t-0", 7, 0) + journal_line("t-0", 7, 0)
                       + journal_line("t-1", 7, 1)[:-6] + "\n" + journal_line("x-9", 7, 9))
    assert check_journal(journal, tally) == {"lines": 4, "bad": 1, "missing": 2, "repeated": 1,
                                             "foreign": 1, "misattributed": 0}
