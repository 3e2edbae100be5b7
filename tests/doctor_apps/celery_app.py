"""A Celery app for the guard's test: one registered client, one left unmanaged on purpose.

The worker's own broker connection, kombu's redis clients and Celery's threads must not be
findings; the unmanaged client must be, in every pool process, recycled ones included."""

import os

import redis
from celery import Celery

import postfork
import postfork.integrations.celery  # noqa: F401

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")  # the suite's database (conftest)
QUEUE = os.environ.get("POSTFORK_TEST_QUEUE", "postfork-guard-test")

app = Celery("celery_app", broker=URL, backend=URL)
app.conf.task_default_queue = QUEUE
app.conf.broker_connection_retry_on_startup = True

cache = postfork.register(redis.Redis.from_url(URL))
cache.ping()
shared = redis.Redis.from_url(URL, single_connection_client=True)  # finding: client
shared.ping()


@app.task
def whoami():
    return os.getpid(), cache.client_id()
