"""A registered client whose reset always raises ("broken-client").

Import it in the master beside the example app: gunicorn's config file, uWSGI's ``--import``,
Celery's ``--include``.
"""

from __future__ import annotations

import postfork


class BrokenClient:
    """A stand-in client object; only its reset matters here."""


def _explode(_client: BrokenClient) -> None:
    raise RuntimeError("this reset always fails")


broken = postfork.register(BrokenClient(), reset=_explode, name="broken-client")
