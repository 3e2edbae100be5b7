"""A deliberately unsafe app for ``postfork doctor``: one of each finding. The marker comments
name what each line should be reported as."""

import os
import socket
import threading
import time

import redis

import postfork

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")  # the suite's database (conftest)

shared = redis.Redis.from_url(URL, single_connection_client=True)  # finding: client
shared.ping()
managed = postfork.register(redis.Redis.from_url(URL, single_connection_client=True))  # managed
managed.ping()
raw = socket.create_connection(("127.0.0.1", int(URL.rsplit(":", 1)[1].split("/")[0])))  # finding: socket
ticker = threading.Thread(target=time.sleep, args=(30,), name="ticker", daemon=True)
ticker.start()  # finding: thread


def application(environ, start_response):  # served by gunicorn in test_guard.py
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b'{"pid": %d}' % os.getpid()]
