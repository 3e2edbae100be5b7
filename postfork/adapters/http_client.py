"""``http.client``: an ``HTTPConnection`` (or ``HTTPSConnection``) reconnects in the child.

The child inherits the parent's keep-alive socket: a request it sends goes down the parent's
connection, and a response the parent is waiting for can be read by the child instead. The
reset closes the child's copy of the socket with no ``shutdown()`` and, for TLS, no
``close_notify`` (:func:`postfork.adapters.socket.reset_socket`: the parent's connection and
TLS session are untouched), forgets it, and puts the connection back to idle (a request the
parent had in flight at fork is the parent's). ``http.client`` opens a new connection on the
child's next request (``auto_open``), as after a server closed an idle one.
"""

from __future__ import annotations

import http.client
from typing import Any

from .._contract import Adapter
from .socket import reset_socket

__all__ = ["reset_connection", "connection"]


def reset_connection(conn: http.client.HTTPConnection) -> None:
    sock: Any = conn.sock
    conn.sock = None
    # The connection's request state is name-mangled: idle, no response pending (a parent's
    # in-flight request must not make the child's next request fail with CannotSendRequest).
    conn._HTTPConnection__state = http.client._CS_IDLE  # type: ignore[attr-defined]
    conn._HTTPConnection__response = None  # type: ignore[attr-defined]
    conn._buffer = []  # type: ignore[attr-defined]
    if sock is not None:
        reset_socket(sock)


connection = Adapter(reset_connection)
