"""aiohttp: an inherited ``ClientSession`` is *retired* in the child; build one per process.

What the child inherits (aiohttp 3.14, read from ``client.py``, ``connector.py``,
``resolver.py``): a session is bound to the event loop it was built in
(``ClientSession.__init__`` takes ``asyncio.get_running_loop()``), and so is everything under
it: the connector (``_loop``, its protocol factory, a placeholder future, cleanup timer
handles, DNS throttle futures and resolve tasks), the resolver (``ThreadedResolver._loop``, or
an aiodns channel per loop), and the pooled ``ResponseHandler`` protocols over transports of
that loop. Measured, unmanaged, in a worker's own loop (``asyncio.run``): "RuntimeError: Event
loop is closed" (built under ``asyncio.run`` in the master) or "Timeout context manager should
be used inside a task" (the master's loop still running in a thread). Making it usable would
mean rewriting a dozen private, version-specific attributes of four objects; aiohttp's own
rule is one session per event loop, and a new session costs no network I/O. So the child's
copy is retired:

- the descriptors under the connector's pooled and acquired connections are retired in place
  (:func:`retire_fd`): nothing is sent, no TLS ``close_notify``, and no transport of the
  master's loop is closed here (closing one would unregister its socket from the epoll
  instance the child shares with the master's loop, and with TLS write a ``close_notify``);
- the connector is marked closed, so ``close()``, ``__del__`` and the session's ``close()``
  have nothing to do; the session, connector and protocols are kept referenced for the life
  of the process, so no finalizer of theirs runs here;
- ``request``/``get``/``post``/... and ``ws_connect`` raise :class:`postfork.RetiredError`
  (also an ``aiohttp.ClientConnectionError``) naming ``postfork.local``::

      http = postfork.local(lambda: aiohttp.ClientSession())   # built in each worker's loop
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Dict, List

from .._contract import Adapter
from ._retire import retire_fd, retire_methods

if TYPE_CHECKING:
    import aiohttp

__all__ = ["retire_session"]

_inherited: List[Any] = []

_ENTRY_POINTS = ("_request", "_ws_connect", "request", "get", "options", "head", "post", "put",
                 "patch", "delete", "ws_connect")


def _protocols(connector: Any) -> List[Any]:
    found: Dict[int, Any] = {}
    for entries in list((getattr(connector, "_conns", None) or {}).values()):
        for entry in list(entries):
            proto = entry[0] if isinstance(entry, tuple) else entry
            found[id(proto)] = proto
    for proto in list(getattr(connector, "_acquired", None) or ()):
        found[id(proto)] = proto
    return list(found.values())


def _retire_transport_socket(proto: Any) -> None:
    transport = getattr(proto, "transport", None)
    if transport is None:
        return
    try:
        sock = transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
    except Exception:
        fd = -1
    if fd >= 0:
        retire_fd(fd)


def retire_session(session: "aiohttp.ClientSession") -> None:
    """Retire an inherited ``ClientSession`` (see the module docstring): nothing sent, nothing
    closed on the master's loop, use raises ``RetiredError`` naming ``postfork.local``."""
    import aiohttp

    connector = getattr(session, "_connector", None)
    protocols = _protocols(connector) if connector is not None else []
    _inherited.append((session, connector, protocols))
    for proto in protocols:
        _retire_transport_socket(proto)
    if connector is not None:
        connector._closed = True  # close(), __del__: nothing to close here
    with warnings.catch_warnings():  # aiohttp's debug mode warns about unknown attributes
        warnings.simplefilter("ignore", DeprecationWarning)
        retire_methods(session, _ENTRY_POINTS, "aiohttp.ClientSession()",
                       aiohttp.ClientConnectionError)


session = Adapter(retire_session, retires=True)
