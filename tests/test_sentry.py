"""sentry-sdk against a local Sentry endpoint (the DSN ``http://public@127.0.0.1:<port>/1``),
forking for real.

The endpoint (``tests/_http_peer.py``) accepts envelopes on ``POST /api/1/envelope/`` and keeps
every event it received (its id, its message, the connection, as the client's port the server
sees, that carried it). Events are counted by id: none may be missing, none may arrive twice.

Measured unmanaged: sentry-sdk starts a background worker thread in the child (it checks the
pid), but on the master's queue: the 20 events the master had captured and not sent yet at fork
were sent by the worker as well (all 20 arrived twice), the worker's own event went down the
master's connection, and a worker forked while a master thread was in ``flush()`` never
returned from its first ``capture_message`` (sentry-python#2699).
"""

from __future__ import annotations

import collections
import gzip
import json
import os
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

import postfork
from _guard_script import client_findings
from _http_peer import Peer, Request
from postfork.testing import ChildError, fork_child

sentry_sdk = pytest.importorskip("sentry_sdk")

pytestmark = pytest.mark.usefixtures("clean_registry")


class Endpoint:
    """Sentry's envelope endpoint: every event received, as (event id, message, port). The
    request carrying the message ``hold`` is answered only once ``release`` is set."""

    def __init__(self) -> None:
        self.events: List[Tuple[str, Optional[str], int]] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.holding = threading.Event()

    def __call__(self, request: Request) -> Optional[Tuple[int, Dict[str, str], bytes]]:
        if request.method != "POST" or not request.path.startswith("/api/1/envelope/"):
            return None
        body = request.body
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        lines = body.split(b"\n")
        event_id = json.loads(lines[0]).get("event_id")
        message = None
        for line in lines[1:]:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict) and ("message" in item or "logentry" in item):
                message = (item.get("logentry") or {}).get("message") or item.get("message")
        if event_id is not None:
            with self.lock:
                self.events.append((event_id, message, request.connection.port))
        if message == "hold":
            self.holding.set()
            self.release.wait(20)
        return 200, {"Content-Type": "application/json"}, b"{}"

    def of(self, prefix: str) -> List[Tuple[str, Optional[str], int]]:
        with self.lock:
            return [e for e in self.events if (e[1] or "").startswith(prefix)]


@pytest.fixture
def endpoint() -> Iterator[Tuple[Peer, Endpoint]]:
    events = Endpoint()
    with Peer(handle=events) as peer:
        yield peer, events
        events.release.set()


@pytest.fixture
def client(endpoint: Tuple[Peer, Endpoint]) -> Iterator[Any]:
    peer, _ = endpoint
    sentry_sdk.init(dsn=f"http://public@127.0.0.1:{peer.port}/1", default_integrations=False,
                    auto_enabling_integrations=False)
    client = sentry_sdk.get_client()
    yield client
    client.close(timeout=2)
    sentry_sdk.init()  # no DSN: a client that sends nothing, for the rest of the suite


# -- queued events and connections -----------------------------------------------------------

@pytest.mark.parametrize("managed", [False, True], ids=["unmanaged", "registered"])
def test_worker_sends_on_a_connection_of_its_own(managed: bool, endpoint: Tuple[Peer, Endpoint],
                                                 client: Any) -> None:
    peer, events = endpoint
    if managed:
        postfork.register(client)
    sentry_sdk.capture_message("master-before")
    client.flush(5)
    master = events.of("master-before")[0][2]

    def worker() -> int:
        opened = len(peer.connections)
        sentry_sdk.capture_message(f"worker-{os.getpid()}")
        client.flush(5)
        return opened

    child = fork_child(worker)
    assert child.result(30) == 1  # the reset (or its absence) opened nothing
    [(_, _, port)] = events.of(f"worker-{child.pid}")
    if not managed:
        assert port == master  # the master's connection
        return
    assert port != master
    sentry_sdk.capture_message("master-after")
    client.flush(5)
    assert events.of("master-after")[0][2] == master  # the master's connection, kept
    assert not peer.connection(master).closed_by_client


@pytest.mark.parametrize("managed", [False, True], ids=["unmanaged", "registered"])
def test_master_events_queued_at_fork_are_sent_once(
        managed: bool, endpoint: Tuple[Peer, Endpoint], client: Any) -> None:
    _, events = endpoint
    if managed:
        postfork.register(client)
    # The master's worker thread is busy sending "hold" (the endpoint holds it): the next 20
    # events wait in its queue at fork.
    sentry_sdk.capture_message("hold")
    assert events.holding.wait(10)
    for n in range(20):
        sentry_sdk.capture_message(f"master-{n}")

    def worker() -> List[str]:
        sentry_sdk.capture_message(f"worker-{os.getpid()}")
        # unmanaged, this always times out: the queue counts the event the master's thread was
        # sending at fork, which no thread of this process will finish
        client.flush(3)
        return [t.name for t in threading.enumerate()]

    children = [fork_child(worker) for _ in range(3)]
    threads = [c.result(30) for c in children]
    events.release.set()
    client.flush(10)

    sent = collections.Counter(e[1] for e in events.of("master-"))
    if not managed:  # every worker sent the master's queue again
        assert sent == {f"master-{n}": 1 + len(children) for n in range(20)}
        return
    assert sent == {f"master-{n}": 1 for n in range(20)}  # each once, none lost
    for child, names in zip(children, threads):
        assert "sentry-sdk.BackgroundWorker" in names  # the worker thread runs in the child
        assert len(events.of(f"worker-{child.pid}")) == 1


@pytest.mark.parametrize("managed", [False, True], ids=["unmanaged", "registered"])
def test_flush_in_a_master_thread_at_fork(managed: bool, endpoint: Tuple[Peer, Endpoint],
                                          client: Any) -> None:
    _, events = endpoint
    if managed:
        postfork.register(client)
    sentry_sdk.capture_message("hold")
    assert events.holding.wait(10)
    flushing = threading.Thread(target=client.flush, args=(5,), daemon=True)
    flushing.start()  # waits for the held event, holding the worker's lock

    def worker() -> str:
        sentry_sdk.capture_message(f"worker-{os.getpid()}")
        client.flush(10)
        return "sent"

    child = fork_child(worker)
    try:
        if managed:
            assert child.result(20) == "sent"
            assert len(events.of(f"worker-{child.pid}")) == 1
        else:
            with pytest.raises(ChildError, match="did not finish"):
                child.result(4)  # waits for the lock of a thread that does not exist there
    finally:
        events.release.set()
        flushing.join(10)


# -- the guard -------------------------------------------------------------------------------

def test_guard_names_an_unmanaged_client_with_its_line(tmp_path: Path) -> None:
    code = """
        import os, postfork, sentry_sdk
        postfork.guard("warn")
        managed = postfork.register(sentry_sdk.Client(dsn="http://public@127.0.0.1:9/1"))
        sentry_sdk.init(dsn="http://public@127.0.0.1:9/1", default_integrations=False)
    """
    done = client_findings(tmp_path, code)
    assert done.stdout.strip() == str([("client", "sentry_sdk._Client", "app.py:5")]), done.stderr
