"""``dramatiq`` started in a process that has imported the app already, as Flask-Dramatiq's
``flask worker`` and launcher scripts do: the worker processes fork from this one, and
inherit every client the app built here. Arguments as the ``dramatiq`` command's."""

import sys

import _dramatiq_app  # noqa: F401  (the app, built in this process)
from dramatiq.cli import main

sys.exit(main())
