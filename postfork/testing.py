"""Run code in a real forked child, the way a prefork server would, and get its result back.

For postfork's own tests and for users' test suites::

    from postfork.testing import run_in_child
    pid, client_id = run_in_child(lambda: (os.getpid(), r.client_id()))

The child runs the resets (the at-fork hook already did; ``reset_all()`` is called again as an
integration would), then ``func``; its return value or exception comes back pickled through a
pipe. The child leaves with ``os._exit``, so no atexit handler or finalizer of the parent's
objects runs in it.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import time
import traceback
from typing import Any, Callable, List, Optional, TypeVar

__all__ = ["run_in_child", "fork_child", "Child", "ChildError"]

T = TypeVar("T")


class ChildError(RuntimeError):
    """The child raised, died, or did not answer in time; the child's traceback is the message."""


class Child:
    """A forked child running one callable; :meth:`result` waits for what it returned."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self._fd = fd
        self._done = False
        self._value: Any = None

    def result(self, timeout: float = 60.0) -> Any:
        if self._done:
            return self._value
        deadline = time.monotonic() + timeout
        chunks: List[bytes] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                os.close(self._fd)
                raise ChildError(f"child {self.pid} did not finish within {timeout} s (killed)")
            ready, _, _ = select.select([self._fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(self._fd)
        _, status = os.waitpid(self.pid, 0)
        self._done = True
        if not chunks:
            raise ChildError(f"child {self.pid} died without an answer (wait status {status})")
        ok, payload = pickle.loads(b"".join(chunks))
        if not ok:
            raise ChildError(payload)
        self._value = payload
        return payload


def fork_child(func: Callable[..., Any], *args: Any, reset: bool = True, **kwargs: Any) -> Child:
    """Fork now; the child runs ``func(*args, **kwargs)`` and exits. Returns at once."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(read_fd)
            try:
                if reset:
                    import postfork

                    postfork.reset_all()
                out: Any = (True, func(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
                out = (False, f"{type(exc).__name__}: {exc}\n\n" + traceback.format_exc())
                code = 1
            try:
                data = pickle.dumps(out)
            except Exception as exc:  # an unpicklable result
                data = pickle.dumps((False, f"result not picklable: {exc!r}"))
                code = 1
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view) :]
        finally:
            os._exit(code)
    os.close(write_fd)
    return Child(pid, read_fd)


def run_in_child(func: Callable[..., T], *args: Any, timeout: float = 60.0, reset: bool = True,
                 **kwargs: Any) -> T:
    """Fork, run ``func(*args, **kwargs)`` in the child after the resets, return its result.

    Raises :class:`ChildError` with the child's traceback if it raised, died or timed out.
    """
    return fork_child(func, *args, reset=reset, **kwargs).result(timeout)  # type: ignore[no-any-return]
