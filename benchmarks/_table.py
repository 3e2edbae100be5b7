"""The results table: one :class:`Row` per measured claim, printed as Markdown or JSON.

Every row states what was measured, the baseline, postfork's figure, their ratio, the target and
whether it was met, and the command that reproduces it, so the README table and the runner's
output are the same thing.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Sequence

__all__ = ["Row", "markdown", "as_json", "write_readme", "progress", "median", "fmt_ns", "fmt_ms"]

START = "<!-- results:start -->"
END = "<!-- results:end -->"


class Row:
    """One line of the results table.

    ``ratio`` is postfork / baseline for costs and postfork / baseline for throughputs alike;
    ``target`` says which way is good (e.g. ``"≤ 1.05×"``) and ``met`` is decided by the
    benchmark that made the row (None when the row has no target: context only).
    """

    def __init__(self, key: str, what: str, baseline: str, postfork: str, ratio: Optional[float],
                 target: str, met: Optional[bool], command: str, note: str = "",
                 data: Optional[Dict[str, Any]] = None) -> None:
        self.key = key
        self.what = what
        self.baseline = baseline
        self.postfork = postfork
        self.ratio = ratio
        self.target = target
        self.met = met
        self.command = command
        self.note = note
        self.data = data or {}

    def as_dict(self) -> Dict[str, Any]:
        return {
            "key": self.key, "what": self.what, "baseline": self.baseline,
            "postfork": self.postfork, "ratio": self.ratio, "target": self.target,
            "met": self.met, "command": self.command, "note": self.note, "data": self.data,
        }


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def fmt_ns(seconds: float) -> str:
    return f"{seconds * 1e9:.1f} ns"


def fmt_ms(seconds: float, digits: int = 2) -> str:
    return f"{seconds * 1e3:.{digits}f} ms"


def _met(met: Optional[bool]) -> str:
    return "—" if met is None else ("yes" if met else "**NO**")


def _ratio(ratio: Optional[float]) -> str:
    return "—" if ratio is None else f"{ratio:.3f}×"


def markdown(rows: Sequence[Row]) -> str:
    """The table, then each row's command and note, as Markdown."""
    lines = [
        "| # | what | baseline | postfork | ratio | target | met? |",
        "|---|------|----------|----------|-------|--------|------|",
    ]
    for row in rows:
        lines.append(
            f"| {row.key} | {row.what} | {row.baseline} | {row.postfork} | {_ratio(row.ratio)} "
            f"| {row.target} | {_met(row.met)} |"
        )
    lines.append("")
    lines.append("Reproduce (from the repository root, after `make venv`):")
    lines.append("")
    for row in rows:
        note = f" — {row.note}" if row.note else ""
        lines.append(f"- **{row.key}** `{row.command}`{note}")
    return "\n".join(lines) + "\n"


def as_json(rows: Sequence[Row], meta: Dict[str, Any]) -> str:
    return json.dumps({"meta": meta, "rows": [r.as_dict() for r in rows]}, indent=2, default=str)


def write_readme(path: Path, rows: Sequence[Row], header: str) -> None:
    """Replace what lies between the result markers of ``path`` with a fresh table."""
    text = path.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{path} has no {START} ... {END} markers to write the table between")
    block = f"{START}\n{header}\n\n{markdown(rows)}{END}"
    text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _m: block, text, flags=re.S)
    path.write_text(text)


def progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)
