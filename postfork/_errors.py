"""The exceptions and the warning postfork raises."""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs 3 ms at startup

if TYPE_CHECKING:
    from typing import Dict, List, Tuple

    from ._report import Finding, Report

__all__ = ["ResetError", "ForkSafetyError", "ForkSafetyWarning", "RetiredError", "ConfigError"]


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


class ConfigError(ValueError):
    """An environment variable or argument postfork reads has a value it does not accept."""


class RetiredError(RuntimeError):
    """An inherited object postfork retired in this process was used.

    It cannot be made usable again without network I/O (a bare database connection), so its
    reset retired it: build one per process with ``postfork.local`` instead. Where the library
    has an error class of its own, the error raised is also an instance of that class (see
    :func:`retired_error`), so the application's own ``except`` clauses still catch it.
    """


_mixed: "Dict[Tuple[type, ...], type]" = {}


def retired_error(message: str, *library_errors: type) -> RetiredError:
    """A :class:`RetiredError` that is also each of ``library_errors`` (``psycopg.OperationalError``)."""
    bases = (RetiredError,) + tuple(library_errors)
    cls = _mixed.get(bases)
    if cls is None:
        try:
            cls = type("RetiredError", bases, {"__module__": "postfork"})
        except TypeError:  # incompatible layouts: postfork's own class only
            cls = RetiredError
        _mixed[bases] = cls
    return cls(message)  # type: ignore[no-any-return]


for _cls in (ResetError, ForkSafetyError, ForkSafetyWarning, ConfigError, RetiredError):
    _cls.__module__ = "postfork"  # where users import them from: postfork.ConfigError in tracebacks
del _cls
