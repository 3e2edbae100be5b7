"""pytest plugin: import postfork and switch its guard on before the tested library loads.

Loaded by ``peer/run.py`` with ``-p postfork_peer`` (``peer/`` on ``PYTHONPATH``) in every mode but
the baseline. pytest imports ``-p`` plugins while it configures itself, before any
``conftest.py`` and any test module, so postfork's at-fork hook is installed and the guard's
construction tracking is in place before redis-py, SQLAlchemy, Celery... are imported: exactly
as in an application that does ``import postfork; postfork.guard(mode)`` first thing.

The mode comes from ``POSTFORK_PEER_GUARD`` (``off``, ``warn``, ``reset``; ``raise`` works too
but is not part of the comparison). It is deliberately not ``POSTFORK_GUARD``: that variable
would reach every subprocess a suite starts (gunicorn's arbiter, billiard's workers) and switch
the guard on there only if they import postfork, which they do not, so it would only blur what
is being tested.
"""

from __future__ import annotations

import os

import pytest

import postfork

ENV = "POSTFORK_PEER_GUARD"
MODE = os.environ.get(ENV, "").strip() or "warn"

postfork.guard(MODE)


def pytest_report_header(config: pytest.Config) -> str:
    return f"postfork {postfork.__version__} from {os.path.dirname(postfork.__file__)}; guard {MODE!r}"
