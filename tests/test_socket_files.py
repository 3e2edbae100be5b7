"""``socket.socket`` and open files, in real forked children (issue 2, item 8 and SPEC Adapters).

Sockets talk to the real Redis with its inline protocol (``PING`` -> ``+PONG``, ``CLIENT ID``),
so the server tells which connection a reply came from. Files are real files in ``tmp_path``.
Each fix is shown beside the hazard it fixes: the same steps with the object left unmanaged.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import socket
import types
from pathlib import Path
from typing import Any, Iterator, Tuple
from urllib.parse import urlparse

import pytest

import postfork
from postfork.adapters import files as files_adapter
from postfork.testing import fork_child, run_in_child


pytestmark = pytest.mark.usefixtures("clean_registry")


# -- sockets -----------------------------------------------------------------------------------


@pytest.fixture
def redis_addr(redis_url: str) -> Tuple[str, int]:
    u = urlparse(redis_url)
    return u.hostname or "127.0.0.1", u.port or 6379


@pytest.fixture
def sock(redis_addr: Tuple[str, int]) -> Iterator[socket.socket]:
    s = socket.create_connection(redis_addr, timeout=5)
    try:
        yield s
    finally:
        s.close()


def call(s: socket.socket, command: bytes) -> bytes:
    """One inline Redis command and its one-line reply."""
    s.sendall(command + b"\r\n")
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = s.recv(256)
        if not chunk:
            raise ConnectionError(f"connection closed; got {reply!r}")
        reply += chunk
    return reply


def errno_of(func: Any, *args: Any) -> int:
    try:
        func(*args)
    except OSError as exc:
        return exc.errno or -1
    return 0


def test_child_closes_its_copy_and_the_parent_keeps_its_connection(
    sock: socket.socket, redis_addr: Tuple[str, int]
) -> None:
    parent_id = call(sock, b"CLIENT ID")
    rfile = sock.makefile("rb")  # a makefile() object must not keep the descriptor alive
    postfork.register(sock)

    def child() -> dict:
        number = sock.fileno()
        # The next socket may well get the inherited number; the old object must not reach it.
        new = socket.create_connection(redis_addr, timeout=5)
        try:
            return {
                "fileno": number,
                "send": errno_of(sock.send, b"PING\r\n"),
                "recv": errno_of(sock.recv, 16),
                "makefile": errno_of(rfile.readline),
                "new_id": call(new, b"CLIENT ID"),
                "new_ping": call(new, b"PING"),  # one reply: the old object wrote nothing here
            }
        finally:
            new.close()

    seen = run_in_child(child, timeout=30)
    assert seen["fileno"] == -1
    assert seen["send"] == seen["recv"] == seen["makefile"] == errno.EBADF
    assert seen["new_id"] != parent_id and seen["new_ping"] == b"+PONG\r\n"
    assert call(sock, b"PING") == b"+PONG\r\n"
    assert call(sock, b"CLIENT ID") == parent_id  # the server still has the parent's connection
    rfile.close()


@pytest.mark.parametrize("managed", [True, False], ids=["registered", "hazard-unmanaged"])
def test_a_child_reading_the_socket(sock: socket.socket, managed: bool) -> None:
    """Unmanaged, a child that reads the inherited socket takes the parent's reply."""
    if managed:
        postfork.register(sock)

    def child() -> Any:
        try:
            return sock.recv(64)  # blocks until the parent's reply arrives (or 5 s)
        except OSError as exc:
            return exc.errno

    reader = fork_child(child)
    sock.sendall(b"PING\r\n")
    got = reader.result(30)  # the parent reads nothing until the child is done
    sock.settimeout(0.5)
    try:
        parent_got = sock.recv(64)
    except socket.timeout:
        parent_got = None
    if managed:
        assert got == errno.EBADF and parent_got == b"+PONG\r\n"
    else:
        assert got == b"+PONG\r\n" and parent_got is None  # the child stole the reply


@pytest.mark.parametrize("managed", [True, False], ids=["registered", "hazard-unmanaged"])
def test_a_child_shutting_down_the_socket(sock: socket.socket, managed: bool) -> None:
    """shutdown() acts on the connection both processes share: unmanaged, it kills the
    parent's. Registered, the child's object is already closed and cannot."""
    if managed:
        postfork.register(sock)
    assert run_in_child(errno_of, sock.shutdown, socket.SHUT_RDWR, timeout=30) == (
        errno.EBADF if managed else 0
    )
    if managed:
        assert call(sock, b"PING") == b"+PONG\r\n"
    else:
        with pytest.raises((ConnectionError, OSError)):
            call(sock, b"PING")


# -- files -------------------------------------------------------------------------------------

HEADER = b"HEADER-0123\n"  # written by the parent before fork, left unflushed in the buffer
CHILD = [b"child-one\n", b"child-two\n"]
PARENT = b"parent-01\n"  # each record is 10 bytes


def _open(path: Path, mode: str) -> Any:
    if "r" in mode:
        path.write_bytes(b"")
    return open(path, mode) if "b" in mode else open(path, mode, encoding="ascii", newline="")


def _data(mode: str, record: bytes) -> Any:
    return record if "b" in mode else record.decode()


def _write_then_fork(f: Any, mode: str) -> Tuple[dict, int]:
    """Child writes two records, then (after it exited) the parent one; returns both tells."""

    def child() -> dict:
        for record in CHILD:
            f.write(_data(mode, record))
        f.flush()
        flags = fcntl.fcntl(f.fileno(), fcntl.F_GETFL)
        return {"tell": f.tell(), "append": bool(flags & os.O_APPEND), "ok": postfork.reset_all().ok}

    seen = run_in_child(child, timeout=30)
    f.write(_data(mode, PARENT))
    f.flush()
    return seen, f.tell()


@pytest.mark.parametrize("mode", ["wb", "w", "xb", "w+b", "r+b"])
def test_file_reopened_in_place_each_process_its_own_offset(tmp_path: Path, mode: str) -> None:
    """Both processes write at their own offset, which starts where the file stood at fork:
    the child's two records go to [H, H+20); the parent's one record, written after the child
    exited, goes to its own offset H (over the child's first record), not after the child's.
    The header written before the fork is there once, untouched."""
    path = tmp_path / "out.log"
    f = _open(path, mode)
    f.write(_data(mode, HEADER))
    postfork.register(f)
    seen, parent_tell = _write_then_fork(f, mode)
    f.close()
    h = len(HEADER)
    assert seen["ok"] and seen["tell"] == h + 20 and parent_tell == h + 10
    assert path.read_bytes() == HEADER + PARENT + CHILD[1]


def test_file_hazard_unmanaged_offset_is_shared_and_pending_bytes_written_twice(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    f = open(path, "wb")
    f.write(HEADER)
    seen, parent_tell = _write_then_fork(f, "wb")
    f.close()
    h = len(HEADER)
    # The child's writes moved the parent's offset; both flushed the header pending at fork.
    assert seen["tell"] == h + 20 and parent_tell == 2 * h + 30
    assert path.read_bytes() == HEADER + b"".join(CHILD) + HEADER + PARENT


@pytest.mark.parametrize("mode", ["ab", "a", "a+b"])
def test_file_in_append_mode_stays_append_and_nothing_is_written_twice(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "out.log"
    path.write_bytes(b"old\n")
    f = open(path, mode) if "b" in mode else open(path, mode, encoding="ascii", newline="")
    f.write(_data(mode, HEADER))
    postfork.register(f)
    seen, _ = _write_then_fork(f, mode)
    f.close()
    assert seen["ok"] and seen["append"]
    assert path.read_bytes() == b"old\n" + HEADER + b"".join(CHILD) + PARENT


def test_file_hazard_unmanaged_append_writes_pending_bytes_twice(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    f = open(path, "ab")
    f.write(HEADER)
    _write_then_fork(f, "ab")
    f.close()
    assert path.read_bytes() == HEADER + b"".join(CHILD) + HEADER + PARENT


@pytest.mark.parametrize("managed", [True, False], ids=["registered", "hazard-unmanaged"])
def test_file_read_by_parent_and_child(tmp_path: Path, managed: bool) -> None:
    """Each process reads the rest of the file from where it stood at fork. Unmanaged, the
    child's reads advance the shared offset and the parent misses what the child read."""
    data = os.urandom(256 * 1024)
    path = tmp_path / "in.bin"
    path.write_bytes(data)
    f = open(path, "rb")
    assert f.read(1000) == data[:1000]  # and the buffer has read ahead
    if managed:
        postfork.register(f)
    assert run_in_child(lambda: f.read() == data[1000:], timeout=30)
    rest = f.read()
    f.close()
    assert (rest == data[1000:]) is managed
    if not managed:
        assert len(rest) < len(data) - 1000


@pytest.mark.parametrize("fate", ["deleted", "renamed"])
def test_file_whose_path_changed_is_reopened_on_linux(tmp_path: Path, fate: str) -> None:
    """Through /proc/self/fd the child reopens the open file itself, not what the path names."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc (Linux)")
    path = tmp_path / "out.log"
    f = open(path, "w+b")
    f.write(HEADER)
    f.flush()
    if fate == "deleted":
        path.unlink()
    else:
        path.rename(tmp_path / "moved.log")
        path.write_bytes(b"decoy")
    postfork.register(f)
    seen, parent_tell = _write_then_fork(f, "w+b")
    assert seen["ok"] and seen["tell"] == len(HEADER) + 20 and parent_tell == len(HEADER) + 10
    assert os.pread(f.fileno(), 100, 0) == HEADER + PARENT + CHILD[1]
    f.close()
    if fate == "renamed":
        assert path.read_bytes() == b"decoy"


def test_without_proc_a_renamed_file_is_a_clear_error(tmp_path: Path) -> None:
    """Where there is no /proc, the path is reopened only if it still names the same file."""
    path = tmp_path / "out.log"
    f = open(path, "wb")
    f.write(HEADER)

    def child(rename: bool) -> str:
        files_adapter.sys = types.SimpleNamespace(platform="darwin")  # this child only
        if rename:
            path.rename(tmp_path / "moved.log")
            path.write_bytes(b"decoy")
        try:
            files_adapter.reset_file(f)
        except OSError as exc:
            return str(exc)
        return "reopened"

    assert run_in_child(child, False, timeout=30) == "reopened"
    message = run_in_child(child, True, timeout=30)
    assert "now names another file" in message and "out.log" in message
    assert "postfork.local" in message
    f.close()


def test_a_pipe_has_no_offset_and_is_left_shared(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    w = os.fdopen(write_fd, "wb")
    try:
        postfork.register(w)

        def child() -> bool:
            w.write(b"from-child\n")
            w.flush()
            return postfork.reset_all().ok

        assert run_in_child(child, timeout=30)
        assert os.read(read_fd, 64) == b"from-child\n"
    finally:
        w.close()
        os.close(read_fd)


def test_in_memory_streams_are_a_clear_type_error() -> None:
    with pytest.raises(TypeError, match=r"no adapter for _io\.BytesIO.*postfork\.local"):
        postfork.register(io.BytesIO())
    wrapper = io.TextIOWrapper(io.BytesIO())
    with pytest.raises(TypeError, match="no file descriptor to reopen.*reset="):
        files_adapter.reset_file(wrapper)
    assert not postfork.registered(wrapper)


def test_a_closed_file_is_left_alone(tmp_path: Path) -> None:
    f = open(tmp_path / "x", "wb")
    postfork.register(f)
    f.close()
    assert run_in_child(lambda: postfork.reset_all().ok, timeout=30)
