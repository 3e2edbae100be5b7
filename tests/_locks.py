"""A parent thread holding locks across a fork: the classic child deadlock, reproduced."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator


@contextmanager
def held_by_a_parent_thread(*locks: Any) -> Iterator[None]:
    """A thread of this process takes every lock in ``locks`` and keeps them until the block
    ends. A child forked inside the block inherits them held by a thread that does not exist
    there, so nobody in the child can ever release them."""
    held, done = threading.Event(), threading.Event()

    def hold(remaining: tuple) -> None:
        if not remaining:
            held.set()
            done.wait(60)
            return
        with remaining[0]:
            hold(remaining[1:])

    thread = threading.Thread(target=hold, args=(locks,), daemon=True)
    thread.start()
    try:
        assert held.wait(10), "the holder thread could not take the locks"
        yield
    finally:
        done.set()
        thread.join(10)
