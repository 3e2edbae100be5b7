"""The exceptions and the warning postfork raises."""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs 3 ms at startup

if TYPE_CHECKING:
    from typing import List

    from ._guard import Finding
    from ._report import Report

__all__ = ["ResetError", "ForkSafetyError", "ForkSafetyWarning"]


class ResetError(RuntimeError):
    """Strict mode only: one or more resets failed. ``.report`` holds every entry."""

    def __init__(self, report: "Report") -> None:
        self.report = report
        names = ", ".join(e.name for e in report.failed)
        super().__init__(
            f"postfork: {len(report.failed)} of {len(report.entries)} resets failed in pid "
            f"{report.pid} ({names}); every other reset ran. Details: "
            + "; ".join(str(e) for e in report.failed)
        )


class ForkSafetyError(RuntimeError):
    """The guard in ``raise`` mode found clients, threads or sockets inherited unmanaged."""

    def __init__(self, report: "Report", findings: "List[Finding]") -> None:
        self.report = report
        self.findings = list(findings)
        lines = "\n".join(f"  - {f}" for f in self.findings)
        super().__init__(
            f"postfork guard: {len(self.findings)} fork-safety finding"
            f"{'' if len(self.findings) == 1 else 's'} in pid {report.pid} "
            f"(the resets ran first):\n{lines}"
        )


class ForkSafetyWarning(UserWarning):
    """A client, thread or socket built before fork reached a child unmanaged."""
