"""pika: a ``BlockingConnection`` and its ``BlockingChannel``s are *retired* in the child.

What the child inherits (pika 1.3/1.4, read from ``pika/adapters/blocking_connection.py``,
``select_connection.py`` and ``utils/io_services_utils.py``): the connection's implementation
(``conn._impl``, a ``SelectConnection``) holds the broker socket (``_impl._transport._sock``)
and an ioloop whose poller owns an ``epoll`` descriptor and a wake-up socketpair
(``_poller._poll``, ``_r_interrupt``, ``_w_interrupt``). All of them are the parent's:

- the socket carries one AMQP frame stream, with one channel state machine per side; a
  child that publishes, consumes or closes on it desynchronises it (measured in
  ``tests/test_pika.py``: the child's ``close()`` sends ``Connection.Close`` and the broker
  drops the master; a child draining the socket takes the master's deliveries; publishing
  from both sides ends in ``505 UNEXPECTED_FRAME`` or a master waiting forever for a confirm
  the child read);
- the ``epoll`` instance is shared, not copied, by ``fork()``: the child's ioloop
  (``close()``, ``remove_handler``) deletes the *parent's* registrations, after which the
  master's next I/O fails (``FileNotFoundError`` from ``epoll.modify``, measured).

pika has no reconnect: a ``BlockingConnection`` is built by running the connection workflow
(TCP connect, AMQP handshake) and its channels are server-side state (channel numbers,
consumers, QoS, confirm mode). Nothing of that can be rebuilt without I/O, and rebuilding
the connection alone would leave the application's channels dead. So the reset retires:

1. every inherited descriptor of the connection -- the broker socket, the ``epoll``
   descriptor, the wake-up socketpair -- is replaced by a dead socket (:func:`retire_fd`):
   nothing can reach the broker or the parent's ``epoll`` instance from here, and the numbers
   stay taken while pika references them;
2. the connection and each of its channels is marked closed in this process only
   (``is_open`` is False, so ``with connection:`` and ``if conn.is_closed: reconnect``
   patterns behave), and every method raises :class:`postfork.RetiredError` (also pika's
   own ``ConnectionWrongStateError`` / ``ChannelWrongStateError``) naming
   ``postfork.local(lambda: pika.BlockingConnection(params))``;
3. ``close()`` is harmless: it sends nothing and returns.

Nothing is sent, no ``shutdown()``, no ``epoll_ctl`` on the parent's instance.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, List

from .._contract import Adapter
from .._locks import renew
from ._retire import public_methods, retire_fd, retire_methods

__all__ = ["reset_connection", "reset_channel"]

CONNECTION_CALLS = "pika.BlockingConnection(params)"
CHANNEL_CALLS = "pika.BlockingConnection(params).channel()"

def _descriptors(impl: Any) -> Iterable[int]:
    """Every descriptor of the parent's that the connection implementation references: the
    broker socket and its ioloop's ``epoll`` and wake-up socketpair. Read only: no call into
    pika's ioloop (its ``close()`` would ``epoll_ctl`` the parent's instance)."""
    transport = getattr(impl, "_transport", None)
    objects: List[Any] = [getattr(transport, "_sock", None)]
    nbio = getattr(impl, "_nbio", None)
    loop = getattr(nbio, "_loop", None)  # SelectorIOServicesAdapter -> select_connection.IOLoop
    poller = getattr(loop, "_poller", None)
    if poller is not None:
        objects += [getattr(poller, "_poll", None), getattr(poller, "_r_interrupt", None),
                    getattr(poller, "_w_interrupt", None)]
    for obj in objects:
        fileno = getattr(obj, "fileno", None)
        if fileno is None:
            continue  # None, or select.poll (no descriptor of its own)
        try:
            fd = fileno()
        except (OSError, ValueError):  # closed
            continue
        if isinstance(fd, int) and fd >= 0:
            yield fd


def _closed(*args: Any, **kwargs: Any) -> None:
    """``close()`` of a retired connection or channel: nothing to send, nothing to do."""


def _retire_channel(channel: Any) -> None:
    import pika.exceptions

    impl = getattr(channel, "_impl", None)
    if impl is not None:
        impl._state = impl.CLOSED  # this process's copy: is_open False, pika refuses use
    retire_methods(channel, public_methods(type(channel)), CHANNEL_CALLS,
                   pika.exceptions.ChannelWrongStateError)
    channel.close = _closed


def reset_connection(conn: Any) -> None:
    """Retire an inherited ``pika.BlockingConnection`` and every channel it opened."""
    import pika.exceptions

    pid = os.getpid()
    if conn.__dict__.get("_postfork_retired") == pid:
        return
    impl = getattr(conn, "_impl", None)
    if impl is not None:
        for fd in set(_descriptors(impl)):
            retire_fd(fd)
        impl.connection_state = impl.CONNECTION_CLOSED  # this process's copy only
        for channel_impl in list(getattr(impl, "_channels", {}).values()):
            channel = channel_impl._get_cookie()  # the BlockingChannel wrapping it
            if channel is not None:
                _retire_channel(channel)
            else:
                channel_impl._state = channel_impl.CLOSED
    # A parent thread inside add_callback_threadsafe() at fork holds this lock forever here.
    renew(conn, "_cleanup_mutex")
    retire_methods(conn, public_methods(type(conn)), CONNECTION_CALLS,
                   pika.exceptions.ConnectionWrongStateError)
    conn.close = _closed
    conn.__dict__["_postfork_retired"] = pid


def reset_channel(channel: Any) -> None:
    """Retire an inherited ``BlockingChannel``: its connection is retired with it (a channel
    cannot be used without the connection's socket, which is the parent's)."""
    conn = getattr(channel, "_connection", None)
    if conn is not None:
        reset_connection(conn)
    if channel.__dict__.get("close") is not _closed:  # not among the connection's channels
        _retire_channel(channel)


def _channels(conn: Any) -> List[Any]:
    """For the guard: the channels a connection's reset retires with it."""
    impl = object.__getattribute__(conn, "_impl")
    out = []
    for channel_impl in list(getattr(impl, "_channels", {}).values()):
        channel = channel_impl._get_cookie()
        if channel is not None:
            out.append(channel)
    return out


def _connection_of(channel: Any) -> List[Any]:
    conn = object.__getattribute__(channel, "_connection")
    return [conn] if conn is not None else []


connection = Adapter(reset_connection, retires=True, manages=_channels)
channel = Adapter(reset_channel, retires=True, manages=_connection_of)
