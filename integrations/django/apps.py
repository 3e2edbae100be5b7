"""The app config Django finds for ``"postfork.integrations.django"`` in ``INSTALLED_APPS``."""

from __future__ import annotations

from django.apps import AppConfig

from . import install


class PostforkConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    name = "postfork.integrations.django"
    label = "postfork"
    verbose_name = "postfork"
    default = True

    def ready(self) -> None:
        install()
