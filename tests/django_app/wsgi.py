"""The WSGI application; under ``gunicorn --preload`` this runs in the master, which then uses
every backend once (the workers inherit those live connections) and records what it got in
``$POSTFORK_EXAMPLE_DIR/master.jsonl``."""

from __future__ import annotations

import json
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_app.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()


def record_master(n: int) -> None:
    """Run the probe in this (the master) process and append its answer to master.jsonl."""
    from .views import probe

    line = json.dumps(probe(n))
    directory = os.environ.get("POSTFORK_EXAMPLE_DIR")
    if directory:
        with open(os.path.join(directory, "master.jsonl"), "a") as f:
            f.write(line + "\n")


record_master(-1)
