"""The journal's line: ``ID PID N CRC32``, the CRC over the rest, so a torn or interleaved line
never parses as a good one."""

from __future__ import annotations

import re
import zlib
from typing import Optional, Tuple

LINE = re.compile(r"(\S+) (\d+) (-?\d+) ([0-9a-f]{8})")


def journal_line(ident: str, pid: int, n: int) -> str:
    body = f"{ident} {pid} {n}"
    return f"{body} {zlib.crc32(body.encode()):08x}\n"


def parse(line: str) -> Optional[Tuple[str, int, int]]:
    """(id, pid, n) of an intact line, else None."""
    m = LINE.fullmatch(line)
    if not m or journal_line(m.group(1), int(m.group(2)), int(m.group(3))) != line + "\n":
        return None
    return m.group(1), int(m.group(2)), int(m.group(3))
