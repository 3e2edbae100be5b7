"""The guard's findings as a forked child's reset reports them, for the tests that the guard
names an unmanaged client at its line and says nothing of a managed one."""

from __future__ import annotations

import warnings
from typing import Any, Callable, List, Optional, Tuple, TypeVar

import postfork
from postfork.testing import run_in_child

Finding = Tuple[str, str, Optional[str]]  # (kind, subject, created_at)
T = TypeVar("T")


def reset_report() -> Any:
    """Run every reset here; its report (in strict mode, the error's)."""
    try:
        return postfork.reset_all()
    except postfork.ForkSafetyError as exc:
        return exc.report


def quietly_in_a_child(fn: Callable[[], T]) -> T:
    """``fn()`` in a forked child, the guard's ``ForkSafetyWarning`` silenced (the findings are
    what the test looks at)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_in_child(fn)


def _reset_findings() -> List[Finding]:
    return [(f.kind, f.subject, f.created_at) for f in reset_report().findings]


def findings_in_a_child() -> List[Finding]:
    """Fork a child, run every reset there and return the report's findings."""
    return quietly_in_a_child(_reset_findings)
