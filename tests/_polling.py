"""Waiting for what a server or another thread does a moment later."""

from __future__ import annotations

import time
from typing import Any, Callable


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0,
               interval: float = 0.02) -> Any:
    """``predicate()``'s first truthy value, asked every ``interval`` s until ``timeout``
    (then its last value, falsy)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
