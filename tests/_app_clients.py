"""What the task apps of tests/_rq_app.py and tests/_threaded_app.py share: postfork's part in
the clients they build (unless ``POSTFORK_TEST_UNMANAGED=1``), and the file they record in.

Each app builds its clients itself, so that the guard names the app's own lines."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict

import postfork


def manage(cache: Any, connect: Callable[[], Any]) -> Any:
    """Register the redis client ``cache`` and return the database connection: a
    ``postfork.local`` of ``connect``; with ``POSTFORK_TEST_UNMANAGED=1``, neither: ``connect()``
    (what most apps do)."""
    if os.environ.get("POSTFORK_TEST_UNMANAGED") == "1":
        return connect()
    postfork.register(cache)
    return postfork.local(connect, name="app-db")


def record(row: Dict[str, Any]) -> None:
    """Append ``row`` as one JSON line to ``POSTFORK_TEST_RECORDS`` (one write: lines of
    concurrent processes do not interleave)."""
    fd = os.open(os.environ["POSTFORK_TEST_RECORDS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (json.dumps(row) + "\n").encode())
    finally:
        os.close(fd)
