"""What one run of the resets did in one process: an :class:`Entry` per reset, a
:class:`Finding` per thing the guard found, and the :class:`Report` that holds both."""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs 3 ms at startup

if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Tuple

__all__ = ["Entry", "Finding", "Report"]


class Entry:
    """One registered reset, after-fork callback or ``local`` invalidation, as it ran.

    ``retired``: the object cannot be used again in this process (its adapter retires what it
    inherited: using it raises an error naming ``postfork.local``)."""

    __slots__ = ("name", "ok", "error", "seconds", "retired")

    def __init__(self, name: str, ok: bool, error: Optional[BaseException] = None,
                 seconds: float = 0.0, retired: bool = False) -> None:
        self.name = name
        self.ok = ok
        self.error = error
        self.seconds = seconds
        self.retired = retired

    def __repr__(self) -> str:
        return (f"Entry(name={self.name!r}, ok={self.ok}, error={self.error!r}, "
                f"seconds={self.seconds:.6f}, retired={self.retired})")

    def __str__(self) -> str:
        if not self.ok:
            return f"{self.name}: FAILED: {type(self.error).__name__}: {self.error}"
        if self.retired:
            return f"{self.name}: retired (unusable in this process; use postfork.local)"
        return f"{self.name}: ok ({self.seconds * 1e3:.2f} ms)"


class Finding:
    """Something built before fork that reached this process unmanaged (the guard's).

    ``kind``: ``"client"``, ``"thread"``, ``"socket"`` or ``"hook"``; ``created_at``:
    ``"path/file.py:LINE"`` or None when unknown; ``pid``: the process that created it;
    ``fix``: what to do about it; ``subject``: the client's type, the thread's name or the
    socket's peer address.
    """

    __slots__ = ("kind", "description", "created_at", "pid", "fix", "subject")

    def __init__(self, kind: str, description: str, created_at: Optional[str], pid: Optional[int],
                 fix: str = "", subject: str = "") -> None:
        self.kind = kind
        self.description = description
        self.created_at = created_at
        self.pid = pid
        self.fix = fix
        self.subject = subject

    def as_dict(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Finding) and self.as_dict() == other.as_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Finding(kind={self.kind!r}, subject={self.subject!r}, "
                f"created_at={self.created_at!r}, pid={self.pid})")

    def __str__(self) -> str:
        return f"{self.description} Fix: {self.fix}" if self.fix else self.description


class Report:
    """The outcome of :func:`postfork.reset_all` in process ``pid``.

    ``entries`` keep registration order; ``findings`` are the guard's (empty while it is off);
    ``imports`` the module imports a vanished parent thread had in flight, released here.
    """

    __slots__ = ("pid", "entries", "findings", "seconds", "imports")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.entries: List[Entry] = []
        self.findings: List[Finding] = []
        self.seconds = 0.0
        # (module, owner thread ident, half-initialised module dropped): imports that a thread
        # of the parent had in flight at fork, released in this process (postfork._imports)
        self.imports: List[Tuple[str, int, bool]] = []

    @property
    def failed(self) -> List[Entry]:
        """The entries whose reset raised."""
        return [e for e in self.entries if not e.ok]

    @property
    def retired(self) -> List[Entry]:
        """The objects retired in this process: unusable here, by design (see ``local``)."""
        return [e for e in self.entries if e.ok and e.retired]

    @property
    def ok(self) -> bool:
        return not self.failed

    def __repr__(self) -> str:
        return (f"Report(pid={self.pid}, entries={len(self.entries)}, failed={len(self.failed)}, "
                f"retired={len(self.retired)}, findings={len(self.findings)}, "
                f"seconds={self.seconds:.6f})")

    def __str__(self) -> str:
        n = len(self.entries)
        failed = self.failed
        line = (
            f"postfork: reset {n} client{'' if n == 1 else 's'} in {self.seconds * 1e3:.1f} ms"
            f" (pid {self.pid}), {len(failed)} failed"
        )
        if failed:
            line += ": " + "; ".join(str(e) for e in failed)
        retired = self.retired
        if retired:
            line += (f", {len(retired)} retired (unusable in this process: "
                     f"{', '.join(e.name for e in retired)}; use postfork.local)")
        if self.findings:
            k = len(self.findings)
            line += f", {k} guard finding{'' if k == 1 else 's'}"
        return line
