"""The guard's findings as a forked child's reset reports them, for the tests that the guard
names an unmanaged client at its line and says nothing of a managed one."""

from __future__ import annotations

import warnings
from typing import List, Optional, Tuple

import postfork
from postfork.testing import run_in_child

Finding = Tuple[str, str, Optional[str]]  # (kind, subject, created_at)


def _reset_findings() -> List[Finding]:
    try:
        report = postfork.reset_all()
    except postfork.ForkSafetyError as exc:  # strict mode: the report is the error's
        report = exc.report
    return [(f.kind, f.subject, f.created_at) for f in report.findings]


def findings_in_a_child() -> List[Finding]:
    """Fork a child, run every reset there and return the report's findings (the guard's
    ``ForkSafetyWarning`` silenced: the findings are what the test looks at)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_in_child(_reset_findings)
