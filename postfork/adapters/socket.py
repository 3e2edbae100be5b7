"""``socket.socket`` (and subclasses such as ``ssl.SSLSocket``): the child closes its copy.

A forked child shares the parent's socket: whichever process reads first gets the peer's
reply, and a ``shutdown()`` in the child ends the connection for the parent too (it acts on
the shared connection, not on one descriptor). ``close()`` only drops this process's reference
to it; the peer sees nothing while the parent keeps its own.

The socket *object* is closed, not just its descriptor number: afterwards ``fileno()`` is -1
and any use raises ``OSError(EBADF)``, so the object can never write into whatever socket the
child opens next under the same number (which a bare ``os.close(fd)`` would allow). A TLS
socket is closed without a ``close_notify``: that goodbye would reach the parent's peer.
"""

from __future__ import annotations

import os
import socket as _socket

from .._contract import Adapter

__all__ = ["reset_socket"]


def reset_socket(sock: _socket.socket) -> None:
    """Close this process's copy of ``sock``: no ``shutdown()``, nothing sent to the peer."""
    if not isinstance(sock, _socket.socket):
        raise TypeError(
            f"postfork's socket adapter resets socket.socket objects, got "
            f"{type(sock).__module__}.{type(sock).__qualname__}; pass reset= for this type"
        )
    # detach() rather than close(): close() keeps the descriptor open while a makefile() object
    # still refers to the socket, and that object could go on reading the parent's replies.
    # After detach() the socket and its makefile() objects see fileno -1 (EBADF on use).
    fd = sock.detach()
    if fd >= 0:
        os.close(fd)


socket = Adapter(reset_socket)
