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

import gc
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
        """What the child returned. A child with no answer after ``timeout`` s is killed
        (:class:`ChildError`); an answer already written is read even at ``timeout=0``."""
        if self._done:
            return self._value
        deadline = time.monotonic() + timeout
        chunks: List[bytes] = []
        while True:
            # What has arrived is read even past the deadline: a child that finished in time is
            # never called hung because this process read its answer late.
            ready, _, _ = select.select([self._fd], [], [], max(deadline - time.monotonic(), 0.0))
            if not ready:
                if time.monotonic() < deadline:
                    continue
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                os.close(self._fd)
                raise ChildError(f"child {self.pid} did not finish within {timeout} s (killed)")
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

    ``hooks=False`` forks the way uWSGI does without ``--py-call-osafterfork`` or
    ``--py-call-uwsgi-fork-hooks``: no ``os.register_at_fork`` hook runs, before the fork or in
    either process (not postfork's, not PyMongo's, not the standard library's), so only what
    the child calls itself (``reset=True``: ``reset_all()``, as the uWSGI integration does)
    resets anything. CPython's own state (the GIL, the other threads' states, the import lock)
    is re-initialised in the child as ``os.fork()`` does; uWSGI does not do that part, which
    is a hazard of uWSGI's (README, uWSGI), not something a test should reproduce by chance.

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
    return Child(pid, read_fd, check)


def _fork_without_hooks() -> int:
    """``os.fork()`` with every ``os.register_at_fork`` hook left out, in parent and child.

    Not libc's ``fork()`` through ctypes: that skips ``PyOS_AfterFork_Child`` altogether, and
    the child then keeps the GIL's mutex and condition variable exactly as the parent's threads
    left them. A parent thread waiting for the GIL at that instant (a PyMongo monitor, a
    MockupDB server thread) is still counted as a waiter of the GIL's condition variable in the
    child, where it does not exist: the child's first release of the GIL then blocks forever in
    ``pthread_cond_signal`` (seen with gdb in hung children: ``drop_gil`` ->
    ``__condvar_quiesce_and_switch_g1``), about 1 fork in 25 in the PyMongo tests.
    ``os.fork()`` re-initialises the GIL and the thread states in the child; emptying the hook
    lists for the duration of the call keeps every library's at-fork hook out of it, which is
    what the tests that use ``hooks=False`` are about.
    """
    lists = _at_fork_hook_lists()
    saved = [hooks[:] for hooks in lists]
    for hooks in lists:
        hooks.clear()
    try:
        return os.fork()
    finally:  # in both processes: the child's own forks run the hooks again
        for hooks, before in zip(lists, saved):
            hooks[:0] = before  # ahead of any hook another thread registered meanwhile


_hook_lists: List[List[Any]] = []


def _before_marker() -> None:
    """Registered once as each kind of at-fork hook, to find the interpreter's three lists."""


def _parent_marker() -> None:
    """See :func:`_before_marker`."""


def _child_marker() -> None:
    """See :func:`_before_marker`."""


def _at_fork_hook_lists() -> List[List[Any]]:
    """The interpreter's ``before``, ``after_in_parent`` and ``after_in_child`` hook lists.

    ``os.register_at_fork`` appends to three plain lists that the interpreter holds and
    ``os.fork()`` reads on each call. They have no Python name: each is found, once, as the
    only list that refers to a marker function registered into it.
    """
    if not _hook_lists:
        markers = (_before_marker, _parent_marker, _child_marker)
        os.register_at_fork(before=markers[0], after_in_parent=markers[1], after_in_child=markers[2])
        found = []
        for marker in markers:
            lists = [o for o in gc.get_referrers(marker)
                     if type(o) is list and any(item is marker for item in o)]
            if len(lists) != 1:
                raise RuntimeError("postfork.testing: cannot find the interpreter's at-fork hook "
                                   f"lists (found {len(lists)} for {marker.__name__})")
            found.append(lists[0])
        _hook_lists[:] = found
    return _hook_lists


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
