"""A real keep-alive HTTP/1.1 (and HTTPS) server on 127.0.0.1, run by the test in a thread.

Every response says which connection served it (the client's port, as the server sees it), and
the server keeps, per connection, the requests and bytes it received and whether the client
closed it: what a test needs to check from the peer's side that a child never wrote on the
parent's connection and never closed it (a TLS ``close_notify`` from a child ends the parent's
session: the server sees end-of-file on that connection).

``Peer(handle=func)`` serves other endpoints as well (an Elasticsearch node, an OTLP/HTTP
collector, a Sentry endpoint): ``func(request)`` gets each :class:`Request` (any method, with
its body read) and returns ``(status, headers, body)``, or None for the default answer (the
JSON echo above for GET, 404 for anything else). Every request is still counted on its
connection.
"""

from __future__ import annotations

import json
import socket
import socketserver
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple


class Connection:
    def __init__(self, port: int) -> None:
        self.port = port
        self.requests: List[str] = []
        self.answered = 0  # answers written to the socket in full
        self.bytes = 0
        self.closed_by_client = False
        self.error: Optional[str] = None  # what broke the connection on the server's side


class Request:
    """One request as the server read it: ``method``, ``path``, ``headers``, ``body`` and the
    :class:`Connection` it came on."""

    def __init__(self, method: str, path: str, headers: Any, body: bytes, connection: Connection) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.connection = connection


Response = Tuple[int, Dict[str, str], bytes]
Handle = Callable[[Request], Optional[Response]]


def wsgi(app: Callable[..., Any]) -> Handle:
    """A ``handle`` serving a WSGI application (moto's server mode) with this server's
    keep-alive HTTP/1.1: werkzeug's development server, which moto's own server mode runs on,
    closes every connection after one request, so no client could ever share one there."""
    import io
    import sys
    from urllib.parse import urlsplit

    def handle(request: Request) -> Response:
        url = urlsplit(request.path)
        environ: Dict[str, Any] = {
            "REQUEST_METHOD": request.method, "SCRIPT_NAME": "", "PATH_INFO": url.path,
            "QUERY_STRING": url.query, "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "0",
            "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_PORT": str(request.connection.port),
            "CONTENT_LENGTH": str(len(request.body)),
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(request.body),
            "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in request.headers.items():
            key = "HTTP_" + name.upper().replace("-", "_")
            if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                environ[key] = f"{environ[key]},{value}" if key in environ else value
        started: Dict[str, Any] = {}

        def start_response(status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> Any:
            started["status"], started["headers"] = int(status.split()[0]), headers
            return lambda data: None

        result = app(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        headers = {k: v for k, v in started["headers"]
                   if k.lower() not in ("content-length", "connection", "transfer-encoding")}
        return started["status"], headers, body

    return handle


class _Counting:
    """The request stream of one connection, counting what the client sent."""

    def __init__(self, raw: Any, record: Connection) -> None:
        self._raw = raw
        self._record = record

    def _count(self, data: bytes) -> bytes:
        self._record.bytes += len(data)
        return data

    def readline(self, *args: Any) -> bytes:
        return self._count(self._raw.readline(*args))

    def read(self, *args: Any) -> bytes:
        return self._count(self._raw.read(*args))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK wait
    server: "_Server"

    def setup(self) -> None:
        super().setup()
        self.record = Connection(self.client_address[1])
        with self.server.lock:
            self.server.connections.append(self.record)
            self.server.handlers.append((threading.current_thread(), self.connection))
        self.rfile = _Counting(self.rfile, self.record)  # type: ignore[assignment]

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            # e.g. a TLS record the server cannot authenticate (BAD_RECORD_MAC): two processes
            # wrote on one TLS session with the same sequence numbers
            self.record.error = f"{type(exc).__name__}: {exc}"
        if self.close_connection:
            self.record.closed_by_client = self.raw_requestline == b""

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        self.record.requests.append(self.path)
        body = self._body() if self.command not in ("GET", "HEAD") or self.headers.get("Content-Length") else b""
        answer = None
        if self.server.handle is not None:
            answer = self.server.handle(Request(self.command, self.path, self.headers, body, self.record))
        if answer is None:
            if self.command != "GET":
                answer = (404, {"Content-Type": "application/json"}, b'{"error": "not found"}')
            else:
                answer = (200, {"Content-Type": "application/json"},
                          json.dumps({"path": self.path, "port": self.client_address[1],
                                      "n": len(self.record.requests)}).encode())
        status, headers, payload = answer
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.record.answered += 1

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve  # noqa: N815 - http.server's names

    def log_message(self, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tls_context: Optional[ssl.SSLContext], handle: Optional[Handle] = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.connections: List[Connection] = []
        self.handlers: List[Any] = []  # (thread, socket) of each connection served
        self.tls_context = tls_context
        self.handle = handle

    def get_request(self) -> Any:
        sock, address = super().get_request()
        # headers and body go out in two writes: without this, Nagle holds the second until the
        # client's delayed ACK (40 ms a response)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls_context is not None:
            sock = self.tls_context.wrap_socket(sock, server_side=True)
        return sock, address


def self_signed(folder: Path) -> Dict[str, str]:
    """A certificate for 127.0.0.1 made here with openssl: {"cert": path, "key": path}."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    if cert.exists() and key.exists():  # made already (a session-wide folder: tls_folder)
        return {"cert": str(cert), "key": str(key)}
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=60)
    return {"cert": str(cert), "key": str(key)}


class Peer:
    """``with Peer() as peer:`` (or ``Peer(tls=folder)``, ``Peer(handle=func)``): ``peer.port``,
    ``peer.url``, ``peer.connections`` (one :class:`Connection` each, in the order they were
    accepted), ``peer.ca`` (the certificate to trust, with TLS)."""

    def __init__(self, tls: Optional[Path] = None, handle: Optional[Handle] = None) -> None:
        context = None
        self.ca: Optional[str] = None
        if tls is not None:
            files = self_signed(tls)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(files["cert"], files["key"])
            self.ca = files["cert"]
        self._server = _Server(context, handle)
        self.port = self._server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="http-peer", daemon=True)

    @property
    def connections(self) -> List[Connection]:
        with self._server.lock:
            return list(self._server.connections)

    def connection(self, port: int) -> Connection:
        return next(c for c in self.connections if c.port == port)

    def __enter__(self) -> "Peer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        # End every connection's thread now (a keep-alive client may never close): a thread
        # that wakes up later, during another test's fork, is what hook-less forks hang on.
        with self._server.lock:
            handlers = list(self._server.handlers)
        for _, sock in handlers:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the test's own server side, in this process
            except OSError:
                pass
        for thread, _ in handlers:
            thread.join(5)


socketserver.TCPServer.allow_reuse_address = True


def in_children(func: Any, count: int = 20, batch: int = 5, timeout: float = 30) -> List[Any]:
    """Run ``func`` in ``count`` real forked children (``batch`` at a time, the resets run as
    in a prefork server's worker) and return their results."""
    from postfork.testing import fork_child

    results: List[Any] = []
    while len(results) < count:
        started = [fork_child(func) for _ in range(min(batch, count - len(results)))]
        results += [child.result(timeout=timeout) for child in started]
    return results


def guard_findings(tmp_path: Path, code: str, timeout: float = 60,
                   kinds: Optional[List[str]] = None) -> List[Any]:
    """Run ``code`` (an app that turns the guard on and builds clients) as ``app.py`` in a new
    interpreter, fork once, and return the child's client findings as
    ``[(subject, created_at), ...]`` (with ``kinds``: the findings of those kinds, as
    ``(kind, subject, created_at)``). The code's lines are numbered from 1."""
    import sys
    import textwrap

    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(code) + f"KINDS = {kinds or ['client']!r}\n" + textwrap.dedent("""
        import os as _os, json as _json
        _pid = _os.fork()
        if _pid == 0:
            _found = [[f.kind, f.subject, f.created_at] for f in postfork.check()
                      if f.kind in KINDS]
            print("FINDINGS " + _json.dumps(_found), flush=True)
            _os._exit(0)
        _os.waitpid(_pid, 0)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path)
    for line in done.stdout.splitlines():
        if line.startswith("FINDINGS "):
            found = json.loads(line[len("FINDINGS "):])
            return [tuple(f) if kinds else tuple(f[1:]) for f in found]
    raise AssertionError(f"no findings printed: {done.stdout}\n{done.stderr}")


class PausedChild:
    """A forked child that stops right after its resets, until :meth:`resume`: the parent
    meanwhile looks at the real peer (the child's copy of a server running in the parent is
    not the server). ``resume()`` runs ``func`` in the child and returns its result."""

    def __init__(self, func: Any) -> None:
        import os

        from postfork.testing import fork_child

        self._ready_r, ready_w = os.pipe()
        go_r, self._go_w = os.pipe()

        def run() -> Any:
            os.write(ready_w, b".")  # the resets ran (fork_child runs them first)
            os.read(go_r, 1)
            return func()

        self._child = fork_child(run)
        os.close(ready_w)
        os.close(go_r)

    def wait_reset(self, timeout: float = 30) -> None:
        import os
        import select

        ready, _, _ = select.select([self._ready_r], [], [], timeout)
        assert ready and os.read(self._ready_r, 1) == b".", "the child did not finish its resets"

    def resume(self, timeout: float = 30) -> Any:
        import os

        os.write(self._go_w, b".")
        os.close(self._go_w)
        os.close(self._ready_r)
        return self._child.result(timeout=timeout)


def sockets_to(port: int) -> int:
    """How many descriptors of this process are sockets connected to 127.0.0.1:``port``: in a
    child after its resets, the parent's connection must not be one of them (a retired
    descriptor is a dead socketpair; a closed one is gone)."""
    import os
    import socket

    count = 0
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if sock.family == socket.AF_INET and sock.getpeername() == ("127.0.0.1", port):
                count += 1
        except OSError:
            pass
        finally:
            sock.close()
    return count


def connections_per_child(peer: Peer, parents: List[Connection]) -> Dict[int, int]:
    """pid -> how many of the server's connections (other than ``parents``) carried that
    child's requests, read from the paths (``.../child/<pid>/...``). A connection that carried
    two processes' requests fails the check. Counted by the server's accepted connections, not
    by client ports: a port can be reused on loopback once an earlier child has exited."""
    import re

    out: Dict[int, int] = {}
    for conn in peer.connections:
        if any(conn is parent for parent in parents):
            continue
        pids = {int(m.group(1)) for path in conn.requests
                for m in [re.search(r"child/(\d+)", path)] if m}
        assert len(pids) == 1, f"connection from port {conn.port} carried {conn.requests}"
        pid = pids.pop()
        out[pid] = out.get(pid, 0) + 1
    return out


def eventually(check: Any, timeout: float = 5.0) -> Any:
    """``check()``'s first truthy value, polled until ``timeout`` (then its last value): for
    what the server's handler thread records just after the client saw the outcome."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)
