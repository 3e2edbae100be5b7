"""The OpenTelemetry SDK (``TracerProvider`` + ``BatchSpanProcessor`` + OTLP/HTTP exporter) against
a small OTLP/HTTP collector on 127.0.0.1, forking for real.

The collector (``tests/_http_peer.py``) accepts ``POST /v1/traces``, decodes each request with
``opentelemetry-proto`` and keeps every span it received with the connection (the client's
port, as the server sees it) that carried it; a request that is not valid protobuf is answered
400, as the OpenTelemetry Collector answers it. Spans are counted by (trace id, span id): none
may be missing, none may arrive twice.

Measured unmanaged (a master thread and 4 workers making spans at the same time, 4 runs): the
workers' exports went down the master's connection, their requests interleaved with the
master's, the collector got garbled requests (one per run) and up to 22 spans per run were lost
(OpenTelemetry retries on a broken connection, not on a 400); the master lost its connection and
opened another. OpenTelemetry's own fork handling (a new worker thread, an emptied queue) does
not cover the exporter's HTTP session (opentelemetry-python#3307).
"""

from __future__ import annotations

import ast

import collections
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

import postfork
from _http_peer import Peer, Request
from postfork.testing import fork_child, run_in_child

pytest.importorskip("opentelemetry.sdk.trace")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest, ExportTraceServiceResponse)
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: E402

pytestmark = pytest.mark.usefixtures("clean_registry")


class Collector:
    """OTLP/HTTP traces: every span received, as (trace id, span id, name, connection port)."""

    def __init__(self) -> None:
        self.spans: List[Tuple[str, str, str, int]] = []
        self.garbled: List[int] = []
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Optional[Tuple[int, Dict[str, str], bytes]]:
        if (request.method, request.path) != ("POST", "/v1/traces"):
            return None
        headers = {"Content-Type": "application/x-protobuf"}
        try:
            message = ExportTraceServiceRequest.FromString(request.body)
        except Exception:  # two processes' requests interleaved on one connection
            with self.lock:
                self.garbled.append(request.connection.port)
            return 400, headers, b""
        with self.lock:
            for resource in message.resource_spans:
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        self.spans.append((span.trace_id.hex(), span.span_id.hex(), span.name,
                                           request.connection.port))
        return 200, headers, ExportTraceServiceResponse().SerializeToString()

    def named(self, prefix: str) -> List[Tuple[str, str, str, int]]:
        with self.lock:
            return [s for s in self.spans if s[2].startswith(prefix)]


@pytest.fixture
def collector() -> Iterator[Tuple[Peer, Collector]]:
    spans = Collector()
    with Peer(handle=spans) as peer:
        yield peer, spans


def pipeline(peer: Peer) -> TracerProvider:
    """What an application builds at import (not made the global provider: tests share it)."""
    provider = TracerProvider(shutdown_on_exit=False)
    exporter = OTLPSpanExporter(endpoint=f"{peer.url}/v1/traces", timeout=5)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=20))
    return provider


def make_spans(provider: TracerProvider, prefix: str, count: int, gap: float = 0.0) -> None:
    tracer = provider.get_tracer("postfork-test")
    for n in range(count):
        with tracer.start_as_current_span(f"{prefix}-{n}"):
            pass
        if gap:
            time.sleep(gap)


def master_port(peer: Peer, collector: Collector) -> int:
    ports = {s[3] for s in collector.named("master-")}
    assert len(ports) == 1, ports
    return ports.pop()


# -- the hazard ------------------------------------------------------------------------------

def test_unmanaged_worker_exports_on_the_masters_connection(collector: Tuple[Peer, Collector]) -> None:
    peer, spans = collector
    provider = pipeline(peer)
    make_spans(provider, "master", 3)
    assert provider.force_flush(10_000)
    master = master_port(peer, spans)

    def worker() -> bool:
        make_spans(provider, f"worker-{os.getpid()}", 5)
        return provider.force_flush(10_000)

    child = fork_child(worker)
    assert child.result(30)
    # OpenTelemetry restarted the batch worker thread in the worker, but its spans went down
    # the master's connection.
    assert {s[3] for s in spans.named(f"worker-{child.pid}-")} == {master}
    provider.shutdown()


# -- the fix ---------------------------------------------------------------------------------

def test_registered_provider_every_span_once_each_worker_its_own_connection(
        collector: Tuple[Peer, Collector]) -> None:
    peer, spans = collector
    provider = postfork.register(pipeline(peer))
    make_spans(provider, "master-before", 3)
    assert provider.force_flush(10_000)
    master = master_port(peer, spans)
    made: Dict[str, int] = collections.Counter()
    stop = threading.Event()

    def master_thread() -> None:  # the master keeps making spans while the workers run
        while not stop.is_set():
            make_spans(provider, f"master-{made['master']}", 1)
            made["master"] += 1
            time.sleep(0.001)

    def worker() -> Tuple[bool, List[str]]:
        make_spans(provider, f"worker-{os.getpid()}", 200, gap=0.001)
        threads = [t.name for t in threading.enumerate()]
        return provider.force_flush(10_000), threads

    thread = threading.Thread(target=master_thread)
    thread.start()
    try:
        children = [fork_child(worker) for _ in range(4)]
        results = [c.result(60) for c in children]
    finally:
        stop.set()
        thread.join(10)
    assert provider.force_flush(10_000)

    assert spans.garbled == []
    counts = collections.Counter((s[0], s[1]) for s in spans.spans)
    assert [k for k, n in counts.items() if n > 1] == []  # nothing sent twice
    assert len(spans.named("master-")) == 3 + made["master"]  # nothing of the master lost
    for child, (flushed, threads) in zip(children, results):
        assert flushed and "OtelBatchSpanRecordProcessor" in threads
        mine = spans.named(f"worker-{child.pid}-")
        assert len(mine) == 200  # nothing of the worker lost
        ports = {s[3] for s in mine}
        assert len(ports) == 1 and master not in ports  # one connection of its own
        assert set(peer.connection(ports.pop()).requests) == {"/v1/traces"}
    assert {s[3] for s in spans.named("master-")} == {master}  # the master's, unbroken
    assert not peer.connection(master).closed_by_client
    provider.shutdown()


def test_reset_sends_nothing_until_the_first_export(collector: Tuple[Peer, Collector]) -> None:
    peer, spans = collector
    provider = postfork.register(pipeline(peer))
    make_spans(provider, "master", 1)
    assert provider.force_flush(10_000)
    master = peer.connection(master_port(peer, spans))
    before = master.bytes

    def worker() -> int:
        return len(peer.connections)  # reset done, nothing exported yet

    assert run_in_child(worker) == 1  # no connection opened by the reset
    assert master.bytes == before and not master.closed_by_client  # nothing on the master's
    provider.shutdown()


# -- the guard -------------------------------------------------------------------------------

def test_guard_names_an_unmanaged_processor_and_its_thread(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import os, postfork
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        postfork.guard("warn")
        unmanaged = TracerProvider(shutdown_on_exit=False)
        unmanaged.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")))
        managed = TracerProvider(shutdown_on_exit=False)
        managed.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")))
        postfork.register(managed)
        pid = os.fork()
        if pid == 0:
            findings = postfork.check()
            print(sorted((f.kind, f.subject, f.created_at) for f in findings
                         if f.kind in ("client", "thread")))
            os._exit(0)
        os.waitpid(pid, 0)
    """)
    script = tmp_path / "app.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    # the unmanaged processor (its exporter is part of it), the urllib3 pool its exporter's
    # HTTP client keeps in a module global (shared with the master all the same), and its worker
    # thread; nothing of the managed provider's
    assert sorted(ast.literal_eval(done.stdout.strip())) == sorted([
        ("client", "urllib3.PoolManager", "app.py:8"),
        ("client", "opentelemetry.BatchSpanProcessor", "app.py:8"),
        ("thread", "OtelBatchSpanRecordProcessor", "app.py:8"),
    ]), done.stdout + done.stderr
