"""requests: a ``Session`` (every mounted adapter) and an ``HTTPAdapter`` reconnect in the child.

A ``Session`` holds no connection itself: each adapter mounted on it (``session.adapters``,
``https://`` and ``http://`` by default, plus any the application mounted) owns a urllib3
``PoolManager`` (``adapter.poolmanager``) and one ``ProxyManager`` per proxy URL it has used
(``adapter.proxy_manager``). Their reset is urllib3's (:mod:`postfork.adapters.urllib3`),
found through the family table along the MRO, so a ``SOCKSProxyManager`` or a subclass of
``HTTPAdapter`` is covered as well. The session's cookie jar has an ``RLock`` that a parent
thread may hold at fork (``http.cookiejar``): renewed.

A mounted adapter that is not an ``HTTPAdapter`` and has no postfork adapter of its own is
reported by the reset (after every other adapter was reset), naming its type and the way to
teach postfork about it, rather than silently left sharing the parent's connections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List

from .._contract import Adapter
from .._locks import renew
from .._lookup import find_adapter, qualname

if TYPE_CHECKING:
    import requests

__all__ = ["reset_session", "reset_adapter"]


def _reset_manager(manager: Any) -> None:
    if manager is None:
        return
    found = find_adapter(type(manager))
    if found is None:
        raise TypeError(f"postfork has no adapter for {qualname(type(manager))}")
    found.reset(manager)


def reset_adapter(adapter: "requests.adapters.HTTPAdapter") -> None:
    """Reset an ``HTTPAdapter``: its ``PoolManager`` and every ``ProxyManager`` it made."""
    _reset_manager(getattr(adapter, "poolmanager", None))
    for manager in list((getattr(adapter, "proxy_manager", None) or {}).values()):
        _reset_manager(manager)


def reset_session(session: "requests.Session") -> None:
    """Reset a ``Session``: every mounted adapter, and the cookie jar's lock."""
    jar = getattr(session, "cookies", None)
    if jar is not None:
        renew(jar, "_cookies_lock")
    unknown: List[str] = []
    for prefix, mounted in list(session.adapters.items()):
        found = find_adapter(type(mounted))
        if found is None:
            unknown.append(f"{prefix!r}: {qualname(type(mounted))}")
            continue
        found.reset(mounted)
    if unknown:
        raise TypeError(
            "postfork reset this requests.Session's HTTPAdapters but does not know how to reset "
            "the transport adapters mounted at " + ", ".join(unknown) + "; teach it with "
            "@postfork.adapter('package.module.Class') on a reset function for that type, or "
            "build the session per process: postfork.local(lambda: requests.Session())")


session = Adapter(reset_session)
adapter = Adapter(reset_adapter)
