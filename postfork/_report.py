"""What one run of the resets did in one process: :class:`Entry` per reset, :class:`Report` for all."""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs 3 ms at startup

if TYPE_CHECKING:
    from typing import List, Optional

    from ._guard import Finding

__all__ = ["Entry", "Report"]


class Entry:
    """One registered reset, after-fork callback or ``local`` invalidation, as it ran."""

    __slots__ = ("name", "ok", "error", "seconds")

    def __init__(self, name: str, ok: bool, error: Optional[BaseException] = None,
                 seconds: float = 0.0) -> None:
        self.name = name
        self.ok = ok
        self.error = error
        self.seconds = seconds

    def __repr__(self) -> str:
        return f"Entry(name={self.name!r}, ok={self.ok}, error={self.error!r}, seconds={self.seconds:.6f})"

    def __str__(self) -> str:
        if self.ok:
            return f"{self.name}: ok ({self.seconds * 1e3:.2f} ms)"
        return f"{self.name}: FAILED: {type(self.error).__name__}: {self.error}"


class Report:
    """The outcome of :func:`postfork.reset_all` in process ``pid``.

    ``entries`` keep registration order; ``findings`` are the guard's (empty while it is off).
    """

    __slots__ = ("pid", "entries", "findings", "seconds")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.entries: List[Entry] = []
        self.findings: List[Finding] = []
        self.seconds = 0.0

    @property
    def failed(self) -> List[Entry]:
        """The entries whose reset raised."""
        return [e for e in self.entries if not e.ok]

    @property
    def ok(self) -> bool:
        return not self.failed

    def __repr__(self) -> str:
        return (f"Report(pid={self.pid}, entries={len(self.entries)}, failed={len(self.failed)}, "
                f"findings={len(self.findings)}, seconds={self.seconds:.6f})")

    def __str__(self) -> str:
        n = len(self.entries)
        failed = self.failed
        line = (
            f"postfork: reset {n} client{'' if n == 1 else 's'} in {self.seconds * 1e3:.1f} ms"
            f" (pid {self.pid}), {len(failed)} failed"
        )
        if failed:
            line += ": " + "; ".join(str(e) for e in failed)
        if self.findings:
            k = len(self.findings)
            line += f", {k} guard finding{'' if k == 1 else 's'}"
        return line
