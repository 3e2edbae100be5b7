"""moto's server mode (S3, SQS, STS... on one port), run in a subprocess on 127.0.0.1, counting
what each client connection sent.

The AWS side is moto's server-mode application (``moto[server]``: the WSGI app
``ThreadedMotoServer`` and ``moto_server`` serve). The HTTP side is ``tests/_http_peer.py``'s
keep-alive server, which records per connection (the client's port as the server sees it) the
requests and bytes received and whether the client closed it. Not werkzeug's development
server: it answers every request with ``Connection: close`` (werkzeug >= 2.1), so no client can
keep, let alone share, a connection there, unlike every real AWS endpoint.
``GET /_postfork/connections`` returns the records as JSON.

In a subprocess so that moto's state and server threads are not in the forking test process
(and moto's in-process mocking, which hooks into botocore, is never imported there).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
CONTROL = "/_postfork/connections"


def _serve() -> None:  # in the subprocess
    sys.path.insert(0, HERE)
    from _http_peer import Peer, Request, Response, wsgi
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    moto = wsgi(DomainDispatcherApplication(create_backend_app))
    peer: Optional[Peer] = None

    def handle(request: Request) -> Optional[Response]:
        if request.path == CONTROL:
            assert peer is not None
            body = json.dumps([vars(c) for c in peer.connections]).encode()
            return 200, {"Content-Type": "application/json"}, body
        return moto(request)

    peer = Peer(handle=handle)
    with peer:
        print(peer.port, flush=True)
        while True:
            time.sleep(3600)


class MotoPeer:
    """``MotoPeer()`` starts the server; ``.url``, ``.port``, ``.connections()`` (the records,
    without the control requests), ``.connection(port)``, ``.stop()``."""

    def __init__(self) -> None:
        self._process = subprocess.Popen([sys.executable, os.path.abspath(__file__)],
                                         stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        line = self._process.stdout.readline()  # the port, once it listens
        if not line.strip():
            self.stop()
            raise RuntimeError("moto server did not start")
        self.port = int(line)
        self.url = f"http://127.0.0.1:{self.port}"

    def connections(self) -> List[Dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", CONTROL)
            records: List[Dict[str, Any]] = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        return [r for r in records if CONTROL not in r["requests"]]

    def connection(self, port: int) -> Optional[Dict[str, Any]]:
        return next((r for r in self.connections() if r["port"] == port), None)

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()


if __name__ == "__main__":
    _serve()
