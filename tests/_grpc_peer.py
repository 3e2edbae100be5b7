"""A grpc server on 127.0.0.1, run as a subprocess (grpc's native threads must never be in the
forking test process), that records every call it receives: the method, the peer as the server
sees it (``ipv4:127.0.0.1:<client port>``: one port per client connection) and the caller's
``x-who`` metadata.

Methods (no generated code: generic handlers): ``/postfork.Test/Who`` answers the caller's peer
as JSON; ``/postfork.Test/Calls`` answers every call recorded so far as JSON;
``/grpc.health.v1.Health/Check`` answers SERVING with ``grpc_health``'s own messages, so that
the real generated ``HealthStub`` talks to it.

``python tests/_grpc_peer.py`` prints its port on the first line, then serves until killed.
"""

from __future__ import annotations

import json
import threading
from concurrent import futures
from typing import Any, Dict, List

import grpc
from grpc_health.v1 import health_pb2


def main() -> None:
    lock = threading.Lock()
    calls: List[Dict[str, Any]] = []

    def record(method: str, context: Any) -> Dict[str, Any]:
        who = dict(context.invocation_metadata()).get("x-who", "")
        entry = {"method": method, "peer": context.peer(), "who": who}
        with lock:
            calls.append(entry)
        return entry

    def who(request: bytes, context: Any) -> bytes:
        return json.dumps(record("Who", context)).encode()

    def all_calls(request: bytes, context: Any) -> bytes:
        with lock:
            return json.dumps(calls).encode()

    def check(request: Any, context: Any) -> Any:
        record("Health/Check", context)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    test = grpc.method_handlers_generic_handler("postfork.Test", {
        "Who": grpc.unary_unary_rpc_method_handler(who),
        "Calls": grpc.unary_unary_rpc_method_handler(all_calls),
    })
    health = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(
            check, request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((test, health))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
