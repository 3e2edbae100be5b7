"""Open files: the child reopens the same file in place, so it stops sharing the parent's offset.

A forked child shares each open file *description* with its parent, and with it one file
offset: every write or read of one process moves the other's position. The reset opens the
same file again (a new description), ``os.dup2``-s it onto the same descriptor number and
seeks it to the position the shared one had at fork. The Python object (``FileIO``, a buffered
reader/writer, a ``TextIOWrapper``) keeps working unchanged, with an offset of its own.

- Same file, whatever happened to its path: on Linux the reopen goes through
  ``/proc/self/fd/N``, which names the open inode even after the path was renamed or deleted.
  Elsewhere the path is reopened only if it still names the same inode (else a clear error).
- Same access mode and status flags as the original description (``fcntl(F_GETFL)``: read/
  write, ``O_APPEND``, ``O_SYNC``...) and never ``O_CREAT``/``O_EXCL``/``O_TRUNC``: a file
  opened ``'w'`` is not truncated and one opened ``'x'`` does not fail because it exists.
- No bytes written twice: in the parent, just before fork, the buffer is flushed (so the child
  does not inherit the parent's pending bytes and write them again) and the offset recorded
  (so a parent that writes on right after fork cannot move the child's starting point).
  Where no at-fork hook runs (uWSGI without ``--py-call-osafterfork``) the offset is read at
  reset time; a pending buffer is then written by both processes at the same offset, the same
  bytes, except for ``O_APPEND`` files, where it lands twice: flush before the server forks.
- Descriptors without a file offset (pipes, FIFOs, terminals, sockets, character devices) are
  left shared: there is no offset to un-share and a child writing into a pipe is what pipes
  are for. An io object without a descriptor (``BytesIO``, ``StringIO``) is a ``TypeError``.
"""

from __future__ import annotations

import io
import os
import stat
import sys
import weakref
from typing import IO, Any, MutableMapping, Optional

from .._contract import Adapter

__all__ = ["reset_file"]

# Offsets recorded in the parent right before fork, keyed by the raw FileIO. Cleared in the
# parent after fork and in the child after the resets, so a later fork that runs no at-fork
# hook (uWSGI) cannot pick up a stale one.
_at_fork: MutableMapping[io.FileIO, int] = weakref.WeakKeyDictionary()
_NOT_REOPENED = os.O_CREAT | os.O_EXCL | os.O_TRUNC | getattr(os, "O_NOCTTY", 0)


def reset_file(f: IO[Any]) -> None:
    """Reopen ``f``'s file in place in this child: same descriptor number, same position."""
    raw = _raw(f)
    if raw.closed:
        return
    fd = raw.fileno()
    st = os.fstat(fd)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        _at_fork.pop(raw, None)
        return  # no file offset to un-share (pipe, FIFO, tty, socket, device)
    position = _at_fork.pop(raw, None)
    if position is None:
        position = os.lseek(fd, 0, os.SEEK_CUR)
    new = _reopen(raw, fd, st)
    try:
        os.lseek(new, position, os.SEEK_SET)
        os.dup2(new, fd, inheritable=os.get_inheritable(fd))
    finally:
        os.close(new)


def _flush_and_record(f: IO[Any]) -> None:
    """In the parent, just before fork: flush pending bytes, record the offset."""
    raw = _raw(f)
    if raw.closed:
        return
    if f.writable():
        f.flush()  # a TextIOWrapper flushes through its buffer to the descriptor
    _at_fork[raw] = os.lseek(raw.fileno(), 0, os.SEEK_CUR)




def _raw(f: Any) -> io.FileIO:
    """The FileIO under a FileIO, a buffered reader/writer or a TextIOWrapper."""
    obj = f
    for _ in range(3):  # TextIOWrapper -> Buffered* -> FileIO
        if isinstance(obj, io.FileIO):
            return obj
        obj = getattr(obj, "buffer", None) or getattr(obj, "raw", None)
        if obj is None:
            break
    raise TypeError(
        f"postfork's file adapter reopens files opened with open() (FileIO, a buffered "
        f"reader/writer or a text wrapper over one); {type(f).__module__}.{type(f).__qualname__} "
        f"has no file descriptor to reopen. An in-memory or custom stream needs no reset or "
        f"its own: postfork.register(obj, reset=...), or postfork.local(lambda: open(...)) "
        f"for a file per process."
    )


def _reopen(raw: io.FileIO, fd: int, st: os.stat_result) -> int:
    import fcntl

    flags = (fcntl.fcntl(fd, fcntl.F_GETFL) & ~_NOT_REOPENED) | getattr(os, "O_CLOEXEC", 0)
    proc = f"/proc/self/fd/{fd}"
    if sys.platform.startswith("linux") and os.path.exists(proc):
        try:
            return os.open(proc, flags)
        except OSError as exc:
            raise OSError(exc.errno, _cannot(raw, fd, exc.strerror)) from exc
    path = raw.name
    if not isinstance(path, (str, bytes)):
        raise OSError(_cannot(raw, fd, "it was opened from a bare descriptor, without a path"))
    try:
        new = os.open(path, flags)
    except OSError as exc:
        raise OSError(exc.errno, _cannot(raw, fd, exc.strerror)) from exc
    now = os.fstat(new)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        os.close(new)
        raise OSError(_cannot(raw, fd, "its path now names another file (renamed or deleted)"))
    return new


def _cannot(raw: io.FileIO, fd: int, why: Optional[str]) -> str:
    return (
        f"postfork cannot reopen {raw.name!r} (fd {fd}) in this child: {why}; the child still "
        f"shares the parent's file offset. Open the file in each process instead: "
        f"postfork.local(lambda: open(path, 'ab'))"
    )


file = Adapter(reset_file, before_fork=_flush_and_record)


def _forget() -> None:
    _at_fork.clear()


if hasattr(os, "register_at_fork"):  # no fork, no offsets to record (Windows)
    os.register_at_fork(after_in_parent=_forget, after_in_child=_forget)
