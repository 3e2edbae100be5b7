"""The Dramatiq app of tests/test_dramatiq.py: a Redis broker with postfork's middleware, the
clients of ``_threaded_app`` built at import, one actor that uses them."""

from __future__ import annotations

import os
import dramatiq
from dramatiq.brokers.redis import RedisBroker

from postfork.integrations.dramatiq import Postfork  # first: it turns the guard on

broker = RedisBroker(url=os.environ["APP_REDIS_URL"], namespace=os.environ["POSTFORK_TEST_PREFIX"])
broker.add_middleware(Postfork())
dramatiq.set_broker(broker)

import _threaded_app  # noqa: E402  (the clients, built after the guard is on)


@dramatiq.actor(queue_name=_threaded_app.QUEUE, max_retries=0)
def whoami(n: int, rounds: int, delay: float) -> None:
    _threaded_app.use("message", n, rounds, delay)
