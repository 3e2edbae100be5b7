"""The Huey app of tests/test_huey.py: a RedisHuey with postfork installed, the clients of
``_threaded_app`` built at import, one task that uses them."""

from __future__ import annotations

import os

from huey import RedisHuey

from postfork.integrations.huey import install  # first: it turns the guard on

huey = install(RedisHuey(os.environ["POSTFORK_TEST_QUEUE"], url=os.environ["APP_REDIS_URL"]))

import _threaded_app  # noqa: E402  (the clients, built after the guard is on)


@huey.task()
def whoami(n: int, rounds: int, delay: float) -> None:
    _threaded_app.use("message", n, rounds, delay)
