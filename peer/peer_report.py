"""pytest plugin: write each test's outcome to the JSON file named by ``POSTFORK_PEER_REPORT``.

Loaded with ``-p peer_report`` in every mode, the baseline included, so that every run is
recorded the same way. It never imports postfork: in the baseline it only notes whether
something else did (it must not have).

Outcomes per node id: ``passed``, ``failed`` (the test body), ``error`` (setup, teardown or
collection), ``skipped``, ``xfailed``, ``xpassed``. Only the process that started pytest writes
the file: a test that forks a child which goes on to finish a pytest session (it happens)
would otherwise overwrite it.

While a test runs, its node id is in ``$POSTFORK_PEER_REPORT.running``: when pytest dies
(pytest-timeout ends the whole process from its timer thread, a crash), the runner can name the
test it died in.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict

import pytest

ENV = "POSTFORK_PEER_REPORT"
_MESSAGE_CHARS = 400

_pid = os.getpid()
_started = time.monotonic()
_outcomes: Dict[str, str] = {}
_messages: Dict[str, str] = {}
# How bad an outcome is: a later, worse report for the same node id wins (a teardown error
# after a passed call makes the test an error).
_RANK = {"skipped": 0, "xfailed": 0, "passed": 1, "xpassed": 1, "failed": 2, "error": 3}


def _note(nodeid: str, outcome: str, report: Any) -> None:
    previous = _outcomes.get(nodeid)
    if previous is None or _RANK[outcome] >= _RANK[previous]:
        _outcomes[nodeid] = outcome
    if outcome in ("failed", "error") and nodeid not in _messages:
        _messages[nodeid] = _message(report)


def _message(report: Any) -> str:
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    text = getattr(crash, "message", None) or getattr(report, "longreprtext", "") or ""
    text = " ".join(str(text).split())
    return text[:_MESSAGE_CHARS]


def pytest_runtest_logstart(nodeid: str, location: object) -> None:
    path = os.environ.get(ENV)
    if path and os.getpid() == _pid:
        with open(path + ".running", "w", encoding="utf-8") as f:
            f.write(nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if os.getpid() != _pid:
        return
    xfail = hasattr(report, "wasxfail")
    if report.when == "call":
        if report.passed:
            _note(report.nodeid, "xpassed" if xfail else "passed", report)
        elif report.skipped:
            _note(report.nodeid, "xfailed" if xfail else "skipped", report)
        else:
            _note(report.nodeid, "failed", report)
    elif report.failed:
        _note(report.nodeid, "error", report)
    elif report.skipped:  # skipped in setup: skip marks, importorskip, missing requirements
        _note(report.nodeid, "skipped", report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if os.getpid() != _pid:
        return
    if report.failed:
        _note(report.nodeid or "<collection>", "error", report)
    elif report.skipped:  # a whole module skipped: pytest.importorskip at import time
        _note(report.nodeid, "skipped", report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get(ENV)
    if not path or os.getpid() != _pid:
        return
    data = {
        "exitstatus": int(exitstatus),
        "seconds": round(time.monotonic() - _started, 1),
        "postfork_imported": "postfork" in sys.modules,
        "outcomes": _outcomes,
        "messages": _messages,
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    try:
        os.unlink(path + ".running")
    except FileNotFoundError:
        pass
