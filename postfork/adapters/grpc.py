"""grpcio: an inherited ``Channel`` (and every stub built on it) is retired in the child, never
called into, never closed, and kept referenced for good.

A grpc channel is a C object of grpc core, run by native threads (``event_engine``,
``grpc_global_tim``, ``lifeguard``) that do not exist in a forked child. Calling an inherited
channel in the child is grpc#13873; measured here with grpcio 1.85, the parent making RPCs from
a thread at fork: without ``GRPC_ENABLE_FORK_SUPPORT`` some children's RPCs hung for good, some
failed (``UNAVAILABLE: Wrong file descriptor generation``), some went through on a new
connection; with ``GRPC_ENABLE_FORK_SUPPORT=1`` set before ``import grpc`` every child hung in
grpc's own fork handler, before any Python code of the child ran. Closing or collecting the
channel in the child calls into grpc core too (``grpc_channel_destroy``).

So there is nothing safe to do with it in a child but to leave it alone. The reset (grpcio
1.5x to 1.8x, read from ``grpc/_channel.py``):

- The channel's Python methods (``unary_unary`` and the other three, ``subscribe``,
  ``unsubscribe``) raise :class:`postfork.RetiredError` (also a ``ValueError``, what grpc raises
  for a closed channel) naming ``postfork.local``: a stub built from it in the child fails at
  once. ``close()`` (and ``with channel:``) does nothing: the master's channel stays open.
- The stubs built from it before the fork hold multi-callables that go straight to the C
  channel: in the child, a multi-callable reads its C channel through a property that answers
  a stand-in for a retired one, so calling it raises the same error instead of entering grpc
  core (the call state, used by streaming and ``future()`` calls, points at the stand-in too).
- The channel's call and connectivity states (whose finalizer would close the C channel) point
  at the stand-in as well; their locks are new, the master's connectivity subscribers dropped.
- The channel itself is kept referenced for good (one reference leaked on purpose), so that
  neither the garbage collector nor the interpreter's exit can destroy the C channel here.
  ``channel._channel`` stays the C channel: grpc's own fork handlers (with
  ``GRPC_ENABLE_FORK_SUPPORT``) find it as they expect in a grandchild.

No byte is sent, nothing of grpc core is called. Build channels per process instead:
``postfork.local(lambda: grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]))``
(the option keeps a worker's new channel off a subchannel, that is a connection, that grpc's
global pool inherited from the master: measured, without it a new channel in a worker forked
while a master thread was in an RPC failed its first RPC 3 times in 8).
"""

from __future__ import annotations

import ctypes
import importlib
import os
import threading
from typing import Any, Dict, Optional

from .._contract import Adapter
from .._errors import retired_error

__all__ = ["reset_channel"]

CALLS = 'grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])'

_ENTRY_POINTS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream", "subscribe",
                 "unsubscribe", "_get_registered_call_handle")
_MULTICALLABLES = ("_UnaryUnaryMultiCallable", "_UnaryStreamMultiCallable",
                   "_SingleThreadedUnaryStreamMultiCallable", "_StreamUnaryMultiCallable",
                   "_StreamStreamMultiCallable")


def _message() -> str:
    return (f"postfork retired this grpc channel in pid {os.getpid()}: it was built in the "
            f"parent process, and grpc's C core cannot use a channel across fork (its RPCs hang "
            f"or fail in a child: grpc#13873). Build one per process instead: "
            f"postfork.local(lambda: {CALLS})")


def _raiser(message: str) -> Any:
    def retired(*args: Any, **kwargs: Any) -> Any:
        raise retired_error(message, ValueError)

    return retired


def _nothing(*args: Any, **kwargs: Any) -> None:
    """close() on a retired channel: the master's channel stays open; nothing to do here."""


class _RetiredCore:
    """Stands in for the C channel (``cygrpc.Channel``) wherever Python code of grpc would call
    it in this process: every call raises; ``close`` (a finalizer's) does nothing."""

    __slots__ = ("_message",)

    def __init__(self, message: str) -> None:
        self._message = message

    def close(self, *args: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return _raiser(self._message)

    def __repr__(self) -> str:
        return "<retired grpc channel (postfork)>"


# id(C channel) -> its stand-in, for every channel retired in this process (or an ancestor).
# The C channels are kept for good (see _keep_for_good), so their ids are never reused.
_retired_cores: Dict[int, _RetiredCore] = {}


def _divert_multicallables() -> None:
    """Make ``self._channel`` of grpc's multi-callables answer the stand-in when it is a
    retired C channel (once per process: the class-level change is inherited by a child).

    A multi-callable (what a stub's attributes are) keeps the C channel in a slot and calls it
    directly. Finding the inherited ones would take a walk over the whole heap in the child
    (the garbage collector's referrers: 16 ms in a 67,000-object process), and that walk
    crashed (SIGSEGV) in children forked while a master thread was inside an RPC, where grpc's
    objects are not consistent. So instead of finding them, the slot is read through a
    property that swaps a retired channel for its stand-in: one dict lookup per RPC, in this
    process only."""
    _channel = importlib.import_module("grpc._channel")  # imported: a channel exists
    for name in _MULTICALLABLES:
        cls = getattr(_channel, name, None)
        slot = None if cls is None else cls.__dict__.get("_channel")
        if slot is None or isinstance(slot, property):
            continue

        def read(self: Any, slot: Any = slot, cls: Any = cls) -> Any:
            core = slot.__get__(self, cls)
            return _retired_cores.get(id(core), core)

        setattr(cls, "_channel", property(read, slot.__set__))


def _keep_for_good(obj: Any) -> None:
    """One reference that is never dropped: not by the garbage collector, not at exit."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


def reset_channel(channel: Any) -> None:
    """Retire an inherited ``grpc.Channel``: see the module docstring. Sends nothing, calls
    nothing of grpc core."""
    if channel.__dict__.get("close") is _nothing:
        return  # retired already in this process (a local's inherited instance, registered too)
    _keep_for_good(channel)
    message = _message()
    stand_in = _RetiredCore(message)
    _divert_multicallables()
    _retired_cores[id(channel._channel)] = stand_in  # what its stubs' calls now reach
    for name in _ENTRY_POINTS:
        setattr(channel, name, _raiser(message))
    channel.close = channel._close = _nothing
    for state_name in ("_call_state", "_connectivity_state"):
        state: Optional[Any] = getattr(channel, state_name, None)
        if state is None:
            continue
        state.lock = threading.Lock()  # a master thread (grpc's spin or poll thread) may hold it
        state.channel = stand_in  # _ChannelCallState.__del__ would close the C channel
    connectivity = getattr(channel, "_connectivity_state", None)
    if connectivity is not None:
        connectivity.callbacks_and_connectivities = []  # the master's subscribers
        connectivity.polling = False


channel = Adapter(reset_channel, retires=True)
