"""Test instrumentation only (postfork is set up by INSTALLED_APPS alone): before each fork the
master uses its own connections again and records the answers, so a test can check, after the
workers served, that the master's sessions are the same ones and still answer (send SIGTTIN:
gunicorn forks one more worker, running this hook first)."""

import itertools

_count = itertools.count(-2, -1)


def pre_fork(server, worker):
    from django_app.wsgi import record_master

    record_master(next(_count))
