"""An asyncio event loop running in a thread of its own: the master's loop in the async client
tests (as an app that serves sync code has one), or a test server's."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str = "master-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        """Run ``coro`` on the loop; its result, within ``timeout`` s."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def in_own_loop(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    """What a worker does: its own event loop, made after the fork, runs ``coro``."""
    return asyncio.run(asyncio.wait_for(coro, timeout))
