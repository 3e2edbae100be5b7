"""What one run of the resets did in one process: :class:`Entry` per reset, :class:`Report` for all."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional

if TYPE_CHECKING:
    from ._guard import Finding

__all__ = ["Entry", "Report"]


@dataclass(frozen=True)
class Entry:
    """One registered reset, after-fork callback or ``local`` invalidation, as it ran."""

    name: str
    ok: bool
    error: Optional[BaseException] = None
    seconds: float = 0.0

    def __str__(self) -> str:
        if self.ok:
            return f"{self.name}: ok ({self.seconds * 1e3:.2f} ms)"
        return f"{self.name}: FAILED: {type(self.error).__name__}: {self.error}"


@dataclass
class Report:
    """The outcome of :func:`postfork.reset_all` in process ``pid``.

    ``entries`` keep registration order. ``findings`` are the guard's (empty while it is off).
    """

    pid: int
    entries: List[Entry] = field(default_factory=list)
    findings: List["Finding"] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> List[Entry]:
        return [e for e in self.entries if not e.ok]

    @property
    def ok(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        n = len(self.entries)
        line = (
            f"postfork: reset {n} client{'' if n == 1 else 's'} in {self.seconds * 1e3:.1f} ms"
            f" (pid {self.pid}), {len(self.failed)} failed"
        )
        failed = self.failed
        if failed:
            line += ": " + "; ".join(str(e) for e in failed)
        if self.findings:
            line += f", {len(self.findings)} guard finding{'' if len(self.findings) == 1 else 's'}"
        return line
