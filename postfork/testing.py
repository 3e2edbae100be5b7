"""Run code in a real forked child, the way a prefork server would, and get its result back.

For postfork's own tests and for users' test suites::

    from postfork.testing import run_in_child
    pid, client_id = run_in_child(lambda: (os.getpid(), r.client_id()))

The child runs the resets (the at-fork hook already did; ``reset_all()`` is called again as an
integration would), then ``func``; its return value or exception comes back pickled through a
pipe. The child leaves with ``os._exit``, so no atexit handler or finalizer of the parent's
objects runs in it.

To assert that an application is fork-safe in a test suite::

    postfork.guard("warn")          # before the app builds its clients
    import myapp
    from postfork.testing import assert_fork_safe, run_in_child
    assert_fork_safe()              # FindingsError names each unmanaged client, thread, socket
    run_in_child(myapp.handle_one_request, check=True)
"""

from __future__ import annotations

import ctypes
import os
import pickle
import select
import signal
import time
import traceback
from typing import Any, Callable, List, TypeVar

__all__ = ["run_in_child", "fork_child", "assert_fork_safe", "Child", "ChildError", "FindingsError"]

T = TypeVar("T")


class ChildError(RuntimeError):
    """The child raised, died, or did not answer in time; the child's traceback is the message."""


class FindingsError(AssertionError):
    """``check=True``: the child found clients, threads or sockets inherited unmanaged.

    ``.findings`` holds them (:class:`postfork.Finding`); the message lists each with its fix.
    """

    def __init__(self, findings: List[Any]) -> None:
        self.findings = list(findings)
        lines = "\n".join(f"  - [{f.kind}] {f}" for f in self.findings)
        n = len(self.findings)
        super().__init__(f"postfork: {n} fork-safety finding{'' if n == 1 else 's'} in the child:\n{lines}")


class Child:
    """A forked child running one callable; :meth:`result` waits for what it returned."""

    def __init__(self, pid: int, fd: int, check: bool = False) -> None:
        self.pid = pid
        self._fd = fd
        self._check = check
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
        if self._check:
            findings, payload = payload
            if findings:
                raise FindingsError(findings)
        self._value = payload
        return payload


def fork_child(func: Callable[..., Any], *args: Any, reset: bool = True, check: bool = False,
               hooks: bool = True, **kwargs: Any) -> Child:
    """Fork now; the child runs ``func(*args, **kwargs)`` and exits. Returns at once.

    ``hooks=False`` forks the way uWSGI does without ``--py-call-osafterfork``: no
    ``os.register_at_fork`` hook runs in the child (neither postfork's nor PyMongo's), so only
    what the child calls itself (``reset=True``: ``reset_all()``, as the uWSGI integration
    does) resets anything.

    ``check``: after the resets and before ``func``, the child looks for what the guard names
    (:func:`postfork.check`); :meth:`Child.result` raises :class:`FindingsError` if it found
    any. Clients are known only if built while the guard was on; threads alive and inherited
    sockets are checked either way.
    """
    if check:
        from ._guard import _inventory

        _inventory.take_snapshot()  # the guard's before-fork hook, even with it off
    read_fd, write_fd = os.pipe()
    pid = os.fork() if hooks else _fork_without_hooks()
    if pid == 0:  # child
        code = 0
        try:
            os.close(read_fd)
            try:
                if reset or check:
                    import postfork

                    try:
                        postfork.reset_all()
                    except postfork.ForkSafetyError:
                        if not check:  # the guard in raise mode: check=True reports the findings
                            raise
                findings = postfork.check() if check else None
                value = func(*args, **kwargs)
                out: Any = (True, (findings, value) if check else value)
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
    if pid < 0:
        os.close(read_fd)
        raise OSError(ctypes.get_errno(), "fork() failed")
    return Child(pid, read_fd, check)


def _fork_without_hooks() -> int:
    """libc's fork(): no PyOS_AfterFork_Child, hence no at-fork hook in the child."""
    # PyDLL, not CDLL: the GIL stays held across the call, as in os.fork() (a child forked while
    # another thread held it could never take it back). Give the GIL away and take it
    # back first: a thread that had been waiting for it then needs 5 ms before it may ask for a
    # forced switch, and a child forked with such a request pending (from a thread that does
    # not exist in the child) would wait for that switch forever, since nothing clears it there.
    time.sleep(0.001)
    return int(ctypes.PyDLL(None, use_errno=True).fork())


def run_in_child(func: Callable[..., T], *args: Any, timeout: float = 60.0, reset: bool = True,
                 check: bool = False, hooks: bool = True, **kwargs: Any) -> T:
    """Fork, run ``func(*args, **kwargs)`` in the child after the resets, return its result.

    Raises :class:`ChildError` with the child's traceback if it raised, died or timed out, and
    with ``check=True`` :class:`FindingsError` if the child inherited anything unmanaged.
    """
    value: T = fork_child(func, *args, reset=reset, check=check, hooks=hooks,
                          **kwargs).result(timeout)
    return value


def assert_fork_safe(timeout: float = 60.0) -> None:
    """Fork a child that runs the resets as a server would, and raise :class:`FindingsError`
    if it inherited any client, thread or connected socket unmanaged."""
    run_in_child(_nothing, timeout=timeout, check=True)


def _nothing() -> None:
    return None
