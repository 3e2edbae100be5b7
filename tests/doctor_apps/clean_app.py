"""A managed app for ``postfork doctor``: every client registered or per process."""

import os

import redis

import postfork

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")  # the suite's database (conftest)

cache = postfork.register(redis.Redis.from_url(URL, single_connection_client=True))
cache.ping()
sessions = postfork.local(lambda: redis.Redis.from_url(URL))
sessions.ping()


def application(environ, start_response):  # a WSGI callable, for MODULE:ATTR
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(cache.client_id()).encode()]
