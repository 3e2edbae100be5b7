"""The example app plus one registered client whose reset always raises ("broken-client")."""

from __future__ import annotations

import postfork
from app import application  # noqa: F401  (examples/ is on the path)


class BrokenClient:
    """A stand-in client object; only its reset matters here."""


def _explode(_client: BrokenClient) -> None:
    raise RuntimeError("this reset always fails")


broken = postfork.register(BrokenClient(), reset=_explode, name="broken-client")
