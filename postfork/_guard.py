"""The guard: names every client, thread and socket that reached a child unmanaged.

(Stub: the full guard is built in its own issue. The registry calls :func:`after_resets`.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

from ._report import Report

__all__ = ["Finding", "guard", "check", "mode", "after_resets"]

_MODES = ("off", "warn", "reset", "raise")
_mode: Optional[str] = None


@dataclass(frozen=True)
class Finding:
    kind: str  # "client" | "thread" | "socket"
    description: str
    created_at: Optional[str]
    pid: Optional[int]

    def __str__(self) -> str:
        return self.description


def mode() -> str:
    return _mode or os.environ.get("POSTFORK_GUARD", "off")


def guard(mode: str = "warn") -> None:
    global _mode
    if mode not in _MODES:
        raise ValueError(f"postfork.guard(mode) takes one of {', '.join(_MODES)}; got {mode!r}")
    _mode = mode


def check() -> List[Finding]:
    return []


def after_resets(report: Report) -> None:
    return None
