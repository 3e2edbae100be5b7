"""A gate for forked processes: they wait on it until the parent opens it, so that they all
start at once."""

from __future__ import annotations

import os
import select


class Gate:
    """A pipe that N forked processes wait on until the parent opens it."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()

    def wait(self, timeout: float = 30.0) -> None:
        ready, _, _ = select.select([self.r], [], [], timeout)
        assert ready, "gate never opened"
        os.read(self.r, 1)

    def open(self, n: int) -> None:
        """Let ``n`` waiting processes through."""
        os.write(self.w, b"x" * n)

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)
