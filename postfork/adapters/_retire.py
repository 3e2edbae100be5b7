"""Retiring an inherited descriptor without touching the parent's connection."""

from __future__ import annotations

import os
import socket

__all__ = ["retire_fd"]


def retire_fd(fd: int) -> None:
    """Make descriptor ``fd`` a dead socket in this process.

    The file description stays the parent's and open there; here ``fd`` now refers to one end
    of a socketpair whose other end is closed, so a read sees EOF and a write fails with EPIPE.
    The number stays taken, so the next socket this process opens cannot get it and a library
    still holding ``fd`` cannot write into an unrelated connection. No ``shutdown()``, no
    protocol goodbye: those would reach the parent's peer.
    """
    dead, other = socket.socketpair()
    other.close()
    try:
        dead.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        os.dup2(dead.fileno(), fd)
    finally:
        dead.close()
