"""OpenTelemetry SDK: the OTLP/HTTP exporter gets connections of its own in the child; the batch
processor is left to OpenTelemetry's own fork handling.

What OpenTelemetry already does at fork (opentelemetry-sdk 1.2x to 1.4x, read from
``sdk/_shared_internal``, ``sdk/trace/__init__.py``, ``sdk/trace/export``): the
``BatchSpanProcessor``'s batcher re-creates its lock and wake-up event, empties its queue (the
master's pending spans stay the master's: never sent twice) and starts a new worker thread, from
an ``os.register_at_fork`` hook and again lazily on the first span of a process whose pid
changed (so under uWSGI, which runs no at-fork hook, too); the ``TracerProvider`` renews its
lock and its per-process resource; a ``ConcurrentMultiSpanProcessor`` builds a new thread pool.

What it does not (opentelemetry-python#3307): the OTLP/HTTP exporter's HTTP client is the
master's, a ``requests.Session`` (or, with the urllib3 transport, a ``PoolManager``) holding the
master's keep-alive connection. A worker's export goes down that connection; exports of two
processes interleave on it, the collector rejects the garbled request (400) and the batch is
lost, or the master's connection breaks (measured: up to 22 of 1000 spans lost per run, and
every worker's spans arriving on the master's connection).

The reset: the exporter's HTTP client is handed to the urllib3 / requests family's adapter
through the family table (:mod:`postfork.adapters._http_pools`): its idle connections are
closed in this process only (detach + close: no ``shutdown()``, no TLS ``close_notify``). Its
shutdown event is renewed (a master thread backing off between retries waits on it). Nothing is
sent; the worker's first export connects. A processor or a provider is reset through its
exporters.
"""

from __future__ import annotations

from typing import Any, Iterable, List

from .._contract import Adapter
from .._locks import renew
from .._lookup import find_adapter
from ._http_pools import reset_http

__all__ = ["reset_exporter", "reset_processor", "reset_provider"]


def _http_client(exporter: Any) -> Any:
    client = getattr(exporter, "_client", None)  # 1.4x: an _OTLPHTTPClient over a transport
    if client is not None:
        transport = client._transport
        for name in ("_session", "_pool"):  # RequestsHTTPTransport, Urllib3HTTPTransport
            http = getattr(transport, name, None)
            if http is not None:
                return http
        return transport  # a transport of the application's own: the table may know it
    return exporter._session  # before 1.40: the exporter's own requests.Session


def reset_exporter(exporter: Any) -> None:
    """An OTLP/HTTP exporter: its HTTP client's inherited connections dropped, nothing sent."""
    renew(exporter, "_shutdown_in_progress")  # before 1.40
    client = getattr(exporter, "_client", None)
    if client is not None:
        renew(client, "_shutdown_event")
    reset_http(_http_client(exporter))


def _exporters(processor: Any) -> List[Any]:
    exporter = getattr(processor, "span_exporter", None)  # Simple-, BatchSpanProcessor
    if exporter is None:
        batcher = getattr(processor, "_batch_processor", None)
        exporter = getattr(batcher, "_exporter", None)
    return [exporter] if exporter is not None else []


def reset_processor(processor: Any) -> None:
    """A span processor: its exporter, through the table (an exporter postfork does not know
    holds no connection postfork could reset: it is left as it is)."""
    for exporter in _exporters(processor):
        found = find_adapter(type(exporter))
        if found is not None:
            found.reset(exporter)


def _processors(provider: Any) -> List[Any]:
    active = provider._active_span_processor  # Synchronous- or ConcurrentMultiSpanProcessor
    return list(active._span_processors)


def reset_provider(provider: Any) -> None:
    """A ``TracerProvider``: every span processor added to it."""
    renew(provider._active_span_processor, "_lock")
    for processor in _processors(provider):
        found = find_adapter(type(processor))
        if found is not None:
            found.reset(processor)


def manages_exporter(exporter: Any) -> Iterable[Any]:
    return [_http_client(exporter)]


def manages_processor(processor: Any) -> Iterable[Any]:
    out: List[Any] = []
    for exporter in _exporters(processor):
        out.append(exporter)
        if find_adapter(type(exporter)) is exporter_adapter:
            out += manages_exporter(exporter)
    return out


def manages_provider(provider: Any) -> Iterable[Any]:
    out: List[Any] = []
    for processor in _processors(provider):
        out += [processor, *manages_processor(processor)]
    return out


def _shutdown(obj: Any) -> None:
    obj.shutdown()  # exporters, processors and providers close with shutdown(), not close()


exporter_adapter = Adapter(reset_exporter, close=_shutdown, manages=manages_exporter)
processor = Adapter(reset_processor, close=_shutdown, manages=manages_processor)
tracer_provider = Adapter(reset_provider, close=_shutdown, manages=manages_provider)
