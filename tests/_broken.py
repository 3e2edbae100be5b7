"""A registered client whose reset always raises ("broken-client").

Import it in the master beside the example app: gunicorn's config file, uWSGI's ``--import``,
Celery's ``--include``. With ``POSTFORK_TEST_BREAK_WHEN=<path>`` it fails only while that file
exists, so a test can let the first workers start well and break their replacements.
"""

from __future__ import annotations

import os

import postfork


class BrokenClient:
    """A stand-in client object; only its reset matters here."""


def _explode(_client: BrokenClient) -> None:
    when = os.environ.get("POSTFORK_TEST_BREAK_WHEN")
    if when is None or os.path.exists(when):
        raise RuntimeError("this reset always fails")


broken = postfork.register(BrokenClient(), reset=_explode, name="broken-client")
