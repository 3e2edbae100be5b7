"""paho-mqtt: the child's copy of a ``Client`` gets a client id, a socket, a wake-up socketpair,
locks and a network thread of its own, and connects on first use.

What the child inherits (paho-mqtt 2.2, read from ``paho/mqtt/client.py``) and what the reset
does about it:

- ``_sock``: the master's connection to the broker. Nothing is sent on it (no DISCONNECT): its
  descriptor is retired (:func:`retire_fd`) and the socket object closed, which closes only the
  dead socket now under that number (no ``shutdown()``; an ``SSLSocket``'s ``close()`` sends no
  ``close_notify``). ``_sock`` becomes None, so paho cannot write there again.
- ``_sockpairR`` / ``_sockpairW``: the socketpair ``loop_start()`` made to wake the network
  thread. Shared with the master: a child's ``publish()`` would wake the master's thread and a
  child's loop would swallow the master's wake-ups. The child closes its copies (the master
  keeps both ends open, so it sees nothing) and ``loop_start()`` makes a new pair.
- ``_thread``: the master's network thread, which does not exist here. paho still sees it, so
  ``publish()`` queues the packet for a thread that never runs (the message is lost, paho
  #424) and ``loop_start()`` refuses to start another (``MQTT_ERR_INVAL``). It is forgotten.
- ``_out_packet``, ``_out_messages``, ``_in_messages``, ``_in_packet``: the master's queued and
  in-flight packets, perhaps half written. Kept, the child would send the master's QoS>0
  messages again after it connects (duplicates). They are emptied.
- The seven locks (``_callback_mutex``, ``_out_message_mutex``, ...): a master thread (the
  network thread, always busy in ``_loop``) may hold one at fork. New ones.
- The client id: a child that connects with the master's id takes over its session, and the
  broker closes the master's connection (MQTT session takeover; measured: Mosquitto logs
  "Client X already connected, closing old connection" and the master's ``on_disconnect``
  fires; the master's own reconnect then takes the session back from the child). The child
  connects as ``<id>-<pid>`` instead. Its session is clean and non-persistent
  (``clean_session=True``; MQTT 5: ``clean_start`` and no ``SessionExpiryInterval``): the
  master's persistent session, its subscriptions and its queued messages stay the master's, and
  no worker leaves a persistent session behind on the broker when it exits. An empty id (the
  broker assigns one) stays empty.
- The will: the master's last will ("offline") would be published by the broker whenever a
  worker's connection dropped, while the master is still up. The child connects without it.

Connecting is I/O, so the reset does not: the client is left ``connect_async()``-ed and the
child's first ``publish``/``subscribe``/``unsubscribe``/``loop`` connects (``reconnect()``:
the TCP connect and CONNECT, which MQTT lets a client follow with PUBLISH before the CONNACK)
and, if the master ran ``loop_start()``, starts this process's network thread. The callbacks
are the master's: subscriptions made in ``on_connect`` (paho's recommended pattern) are made
again on the child's connection; paho keeps no list of subscriptions made any other way.
Calling ``loop_start()``, ``connect()`` or ``disconnect()`` in the child first works as paho
documents (``disconnect()`` sends nothing there: the child has no connection yet).
"""

from __future__ import annotations

import collections
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

from .._contract import Adapter
from .._locks import renew
from ._retire import retire_fd

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

__all__ = ["reset_client", "close_client", "child_client_id"]

_LOCKS = ("_in_callback_mutex", "_callback_mutex", "_msgtime_mutex", "_out_message_mutex",
          "_in_message_mutex", "_reconnect_delay_mutex", "_mid_generate_mutex")
# What the application calls to use the connection: the first call in the child connects.
_FIRST_USE = ("publish", "subscribe", "unsubscribe", "loop")
_ORIGINAL_ID = "_postfork_client_id"  # the id the application gave, kept across generations
_MQTTV31 = 3  # MQTT 3.1 limits a client id to 23 bytes


def child_client_id(client: "mqtt.Client", pid: int) -> bytes:
    """The id the child's copy of ``client`` connects with: ``<id>-<pid>`` (an empty id stays
    empty: the broker assigns one)."""
    original: bytes = client.__dict__.get(_ORIGINAL_ID, client._client_id)
    if not original:
        return b""
    suffix = f"-{pid}".encode()
    if client._protocol == _MQTTV31 and len(original) + len(suffix) > 23:
        original = original[: 23 - len(suffix)]
    return original + suffix


def _retire_socket(sock: Any) -> None:
    try:
        fd = sock.fileno()
    except Exception:  # closed already
        fd = -1
    if fd >= 0:
        retire_fd(fd)
    try:
        sock.close()  # closes the dead socket now under fd; nothing reaches the broker
    except Exception:
        pass


def reset_client(client: "mqtt.Client") -> None:
    """Reset a paho ``Client`` inherited from the parent (see the module docstring): no byte
    is sent; it connects on first use in this process, as ``<id>-<pid>``."""
    from paho.mqtt.enums import _ConnectionState as State

    renew(client, *_LOCKS)
    had_thread = client._thread is not None
    active = bool(client._host) and client._state in (
        State.MQTT_CS_CONNECTED, State.MQTT_CS_CONNECTING, State.MQTT_CS_CONNECT_ASYNC,
        State.MQTT_CS_CONNECTION_LOST)

    sock, client._sock = client._sock, None
    if sock is not None:
        _retire_socket(sock)
    for attr in ("_sockpairR", "_sockpairW"):
        pair_end = getattr(client, attr)
        setattr(client, attr, None)
        if pair_end is not None:
            pair_end.close()  # the master keeps both ends open: it notices nothing
    client._thread = None
    client._thread_terminate = False
    client._registered_write = False

    # The master's packets: queued, half written, in flight, half read.
    client._out_packet = collections.deque()
    client._out_messages = collections.OrderedDict()
    client._in_messages = collections.OrderedDict()
    client._inflight_messages = 0
    client._ping_t = 0.0
    client.__dict__.setdefault(_ORIGINAL_ID, client._client_id)

    # A client of its own on the broker, clean and non-persistent, without the master's will.
    client._client_id = child_client_id(client, os.getpid())
    if client._protocol == 5:  # MQTTv5
        client._clean_start = True
        props = client._connect_properties
        if props is not None and hasattr(props, "SessionExpiryInterval"):
            delattr(props, "SessionExpiryInterval")
    else:
        client._clean_session = True
    client._will = False
    client._will_topic = b""
    client._will_payload = b""
    client._will_properties = None

    _disarm(client)
    if active:
        client._state = State.MQTT_CS_CONNECT_ASYNC
        _connect_on_first_use(client, had_thread)


def _disarm(client: Any) -> None:
    for name in _FIRST_USE:
        client.__dict__.pop(name, None)


def _connect_on_first_use(client: "mqtt.Client", start_thread: bool) -> None:
    """Shadow the first-use methods by instance attributes: the first call connects (and
    starts the network thread when the master had one), then gives way to paho's methods."""
    ref = weakref.ref(client)  # no reference cycle through the instance attributes
    once = threading.Lock()

    def connect_now() -> None:
        c = ref()
        if c is None:
            return
        with once:
            if c.__dict__.get(_FIRST_USE[0]) is None:
                return  # another thread connected first
            _disarm(c)
            from paho.mqtt.enums import _ConnectionState as State

            if c._sock is not None or c._thread is not None or c._state != State.MQTT_CS_CONNECT_ASYNC:
                return  # the application connected, disconnected or started the loop itself
            try:
                c.reconnect()  # TCP connect + CONNECT; PUBLISH may follow before the CONNACK
            except OSError:
                c._state = State.MQTT_CS_CONNECT_ASYNC  # the network thread retries
                if not start_thread:
                    raise
            if start_thread:
                c.loop_start()

    def shadow(name: str) -> Any:
        method = getattr(type(client), name)

        def first_use(*args: Any, **kwargs: Any) -> Any:
            connect_now()
            return method(ref(), *args, **kwargs)

        first_use.__name__ = name
        return first_use

    for name in _FIRST_USE:
        client.__dict__[name] = shadow(name)


def close_client(client: "mqtt.Client") -> None:
    """A worker's own client at exit: DISCONNECT on its own connection (none if it never
    connected), then its network thread stops."""
    client.disconnect()
    thread = client._thread
    if thread is not None and thread is not threading.current_thread():
        client._thread_terminate = True
        thread.join(5)


client = Adapter(reset_client, close=close_client)
