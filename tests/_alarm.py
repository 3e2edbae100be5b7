"""Bounding a call that the hazard makes wait forever (in the main thread, where pytest runs)."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Any, Iterator


class StillWaiting(Exception):
    """The call under :func:`alarm` had not returned when the alarm rang."""


@contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raise :class:`StillWaiting` in the block after ``seconds`` (SIGALRM; main thread only)."""

    def ring(*_: Any) -> None:
        raise StillWaiting(f"still waiting after {seconds} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
