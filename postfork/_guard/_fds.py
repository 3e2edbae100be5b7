"""Sockets open in this process, read from ``/proc/self/fd`` (Linux).

The guard snapshots the socket inodes before fork; in the child, a descriptor whose inode is in
that snapshot is inherited. A descriptor retired by ``dup2`` (postfork's adapters do that) or
closed by a reset no longer shows that inode, so it is not counted.
"""

from __future__ import annotations

import _socket
import os
import socket
from dataclasses import dataclass
from typing import Dict, List, Optional

__all__ = ["SocketInfo", "socket_inodes", "describe", "scan"]

_FD_DIR = "/proc/self/fd"


@dataclass(frozen=True)
class SocketInfo:
    fd: int
    inode: int
    family: str  # "tcp", "tcp6", "unix", ...
    stream: bool
    listening: bool
    peer: Optional[str]  # "127.0.0.1:6379", "[::1]:6379", "/run/redis.sock"; None: not connected

    @property
    def connection(self) -> bool:
        """A connected stream socket to a named peer: a client's connection. Listening sockets,
        socketpairs and pipes (no peer name) and datagram sockets are not."""
        return self.stream and not self.listening and bool(self.peer)


def socket_inodes() -> Optional[Dict[int, int]]:
    """fd -> socket inode for every socket descriptor; None where /proc is not available."""
    try:
        names = os.listdir(_FD_DIR)
    except OSError:
        return None
    found: Dict[int, int] = {}
    for name in names:
        try:
            link = os.readlink(f"{_FD_DIR}/{name}")
        except OSError:  # the listdir descriptor itself, or one closed meanwhile
            continue
        if link.startswith("socket:["):
            found[int(name)] = int(link[8:-1])
    return found


def describe(fd: int, inode: int = 0) -> Optional[SocketInfo]:
    """What socket descriptor ``fd`` is, without taking it over (``detach`` leaves it open)."""
    try:
        sock = _socket.socket(fileno=fd)  # family and type are read from the descriptor
    except OSError:
        return None
    try:
        names: Dict[int, str] = {socket.AF_INET: "tcp", socket.AF_INET6: "tcp6",
                                 socket.AF_UNIX: "unix"}
        family = names.get(sock.family, str(sock.family))
        stream = sock.type == socket.SOCK_STREAM
        try:
            listening = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        except OSError:
            listening = False
        try:
            peer = _format_peer(sock.family, sock.getpeername())
        except OSError:  # ENOTCONN
            peer = None
        if not stream and family.startswith("tcp"):
            family = "udp" + family[3:]
        return SocketInfo(fd, inode, family, stream, listening, peer)
    finally:
        sock.detach()


def _format_peer(family: int, address: object) -> Optional[str]:
    if family == socket.AF_INET and isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    if family == socket.AF_INET6 and isinstance(address, tuple):
        return f"[{address[0]}]:{address[1]}"
    if isinstance(address, bytes):  # an abstract unix address
        return ("@" + address[1:].decode(errors="replace")) if address else None
    return str(address) if address else None


def scan() -> List[SocketInfo]:
    """Every socket open in this process, by descriptor number."""
    inodes = socket_inodes() or {}
    found = []
    for fd, inode in sorted(inodes.items()):
        info = describe(fd, inode)
        if info is not None:
            found.append(info)
    return found
