"""confluent-kafka: an inherited ``Producer`` or ``Consumer`` is retired in the child, and never
destroyed there.

What the child inherits (confluent-kafka 2.16, librdkafka 2.16; read from the binding's
``confluent_kafka.h``, ``Producer.c``, ``Consumer.c``): a C handle (``rd_kafka_t``) whose
threads (``rdk:main``, ``rdk:broker<id>``, ...) do all the work and do not exist in the child.
Measured here (tests/test_kafka.py): the child's ``flush()`` and ``close()`` never return (they
wait for those threads, librdkafka#2374); a message produced in the child is never sent; a
``Consumer`` destroyed at the child's exit aborts the process (an assertion in librdkafka's
consumer-group teardown, SIGABRT and a state dump on stderr). A handle cannot be rebuilt in
place without starting threads and connecting, so it is *retired*:

- The handle is kept for the life of the process: one reference is taken and never given
  back, so its destructor (``rd_kafka_destroy``, which would wait for the missing threads,
  and, for a consumer, tear down its group state) never runs, not even at interpreter exit.
- The binding's own pointer to it (``Handle.rk``, the first field after ``PyObject_HEAD``) is
  set to NULL, the state ``close()`` leaves it in: every method then refuses to run instead of
  calling into librdkafka, ``close()`` returns at once, and nothing reaches a broker.
- Its methods raise ``postfork.RetiredError`` naming ``postfork.local``. A Python subclass
  (``SerializingProducer``, ``DeserializingConsumer``) takes instance attributes; the binding's
  own types are static C types with neither ``__dict__`` nor ``__class__`` assignment, so the
  object's type pointer is set to a subclass of no layout of its own whose methods raise (what
  ``__class__`` assignment does, after the same layout checks; CPython with the GIL only,
  else the binding's own "Producer has been closed" ``RuntimeError`` is what the child gets).
- The handle's broker connections are sockets librdkafka opened in C: the ones whose peer is a
  ``bootstrap.servers`` address (read from the handle's configuration with
  ``rd_kafka_conf_get``, no I/O; a host name matches by port) are retired (``retire_fd``): the
  parent's connections are no longer open here and their numbers stay taken. Brokers learned
  from metadata at other addresses keep their inherited socket, unused; the guard names them.

For a client per process: ``postfork.local(lambda: Producer(conf))``.
"""

from __future__ import annotations

import ctypes
import os
import socket
import stat
from typing import Any, List, Optional, Set, Tuple

from .._contract import Adapter
from ._retire import retire_by_class, retire_fd, retire_methods

__all__ = ["reset_handle"]

# Inherited handles: referenced (and one reference leaked) for the life of this process.
_kept: List[Any] = []
# What stays the binding's own on a retired handle: close() returns at once once rk is NULL.
_HARMLESS = {"close"}


def _rk_cell(obj: Any) -> ctypes.c_void_p:
    """The binding's ``Handle.rk``: the first field after ``PyObject_HEAD`` (confluent_kafka.h,
    unchanged since the first release)."""
    return ctypes.c_void_p.from_address(id(obj) + object.__basicsize__)


def _calls_for(obj: Any) -> str:
    for klass in type(obj).__mro__:
        if klass.__name__ in ("Producer", "Consumer"):
            return f"{klass.__name__}(conf)"
    return f"{type(obj).__name__}(conf)"


def reset_handle(obj: Any) -> None:
    """Retire an inherited confluent-kafka ``Producer`` or ``Consumer``: never destroyed here,
    detached from librdkafka, its use raising ``postfork.RetiredError``, its bootstrap
    connections retired. No call into librdkafka but reading its configuration."""
    if any(o is obj for o in _kept):
        return  # retired already in this process
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))  # never released: no destructor here
    _kept.append(obj)
    cell = _rk_cell(obj)
    rk = cell.value
    peers: List[Tuple[Optional[Set[str]], int]] = []
    if rk:
        try:
            peers = _bootstrap(rk)
        except Exception:  # noqa: BLE001 - no symbol, an odd value: retire no socket
            peers = []
        cell.value = None  # the binding's "closed": nothing reaches librdkafka from here on
    for fd in _broker_fds(peers):
        retire_fd(fd)
    cls = type(obj)
    names = [n for n in dir(cls) if not n.startswith("_") and n not in _HARMLESS
             and callable(getattr(cls, n, None))]
    calls = _calls_for(obj)
    kind = f"confluent_kafka.{calls.split('(')[0]}"
    if hasattr(obj, "__dict__"):
        retire_methods(obj, names, calls)  # RetiredError is a RuntimeError, as the binding's
    else:
        retire_by_class(obj, names, calls, kind=kind)


# -- the handle's broker connections -------------------------------------------------------


def _librdkafka() -> Any:
    from confluent_kafka import cimpl

    lib = ctypes.CDLL(cimpl.__file__)  # librdkafka's symbols resolve through the binding
    lib.rd_kafka_conf.restype = ctypes.c_void_p
    lib.rd_kafka_conf.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_conf_get.restype = ctypes.c_int
    lib.rd_kafka_conf_get.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                      ctypes.POINTER(ctypes.c_size_t)]
    return lib


def _bootstrap(rk: int) -> List[Tuple[Optional[Set[str]], int]]:
    """(addresses or None for any, port) of each ``bootstrap.servers`` entry of handle ``rk``."""
    lib = _librdkafka()
    conf = lib.rd_kafka_conf(rk)
    size = ctypes.c_size_t(0)
    if lib.rd_kafka_conf_get(conf, b"bootstrap.servers", None, ctypes.byref(size)) != 0:
        return []
    buf = ctypes.create_string_buffer(max(size.value, 1))
    if lib.rd_kafka_conf_get(conf, b"bootstrap.servers", buf, ctypes.byref(size)) != 0:
        return []
    out: List[Tuple[Optional[Set[str]], int]] = []
    for entry in buf.value.decode(errors="replace").split(","):
        entry = entry.strip().rpartition("://")[2]
        host, _, port = entry.rpartition(":")
        if not port.isdigit():
            continue
        host = host.strip("[]")
        out.append((_numeric(host), int(port)))
    return out


def _numeric(host: str) -> Optional[Set[str]]:
    """The address(es) ``host`` names without a lookup, or None (a name: match by port)."""
    if host in ("localhost", ""):
        return {"127.0.0.1", "::1"}
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return {socket.inet_ntop(family, socket.inet_pton(family, host))}
        except OSError:
            pass
    return None


def _broker_fds(peers: List[Tuple[Optional[Set[str]], int]]) -> List[int]:
    """Descriptors of connected TCP sockets whose peer is one of ``peers``."""
    if not peers:
        return []
    found = []
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return []
    for name in names:
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=fd)
        except OSError:
            continue
        try:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                address, port = sock.getpeername()[:2]
            except OSError:
                continue  # not connected, or listening
        finally:
            sock.detach()
        if any(port == p and (hosts is None or address in hosts) for hosts, p in peers):
            found.append(fd)
    return found


handle = Adapter(reset_handle, retires=True)
