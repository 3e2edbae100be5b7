"""pytest plugin: import postfork and switch its guard on before the tested library loads.

Loaded by ``peer/run.py`` with ``-p postfork_peer`` (``peer/`` on ``PYTHONPATH``) in every mode but
the baseline. pytest imports ``-p`` plugins while it configures itself, before any
``conftest.py`` and any test module, so postfork's at-fork hook is installed and the guard's
construction tracking is in place before redis-py, SQLAlchemy, Celery... are imported: exactly
as in an application that does ``import postfork; postfork.guard(mode)`` first thing.

To show that postfork really was at work, each forked child appends one JSON line to the
file named by ``POSTFORK_PEER_FORKS``: what postfork's resets and guard did in that child (the
``Report`` that ``reset_all()`` returns; called again after postfork's own at-fork hook, it runs
nothing, exactly as a server integration's call does). The runner sums them per mode.

The mode comes from ``POSTFORK_PEER_GUARD`` (``off``, ``warn``, ``reset``; ``raise`` works too
but is not part of the comparison). It is deliberately not ``POSTFORK_GUARD``: that variable
would reach every subprocess a suite starts (gunicorn's arbiter, billiard's workers) and switch
the guard on there only if they import postfork, which they do not, so it would only blur what
is being tested.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

import pytest

import postfork

ENV = "POSTFORK_PEER_GUARD"
MODE = os.environ.get(ENV, "").strip() or "warn"

postfork.guard(MODE)

FORKS = os.environ.get("POSTFORK_PEER_FORKS", "")


def _record_child() -> None:
    """After postfork's own at-fork hook (registered first, so run first in the child)."""
    try:
        line: Dict[str, Any] = {"pid": os.getpid()}
        report: Optional[postfork.Report]
        try:
            report = postfork.reset_all()
        except Exception as exc:  # raise mode or strict: the report rides on the exception
            report = getattr(exc, "report", None)
            line["raised"] = f"{type(exc).__name__}: {exc}"[:300]
        if report is not None:
            line["resets"] = len(report.entries)
            line["failed"] = [f"{e.name}: {e.error!r}"[:300] for e in report.failed]
            line["findings"] = [f.kind for f in report.findings]
        with open(FORKS, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
    except Exception:  # never let the bookkeeping disturb the child
        pass


if FORKS and hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_record_child)


def pytest_report_header(config: pytest.Config) -> str:
    return f"postfork {postfork.__version__} from {os.path.dirname(postfork.__file__)}; guard {MODE!r}"
