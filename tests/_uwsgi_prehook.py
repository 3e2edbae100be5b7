"""Imported by uWSGI before postfork's integration: a post_fork_hook of the user's own.

It appends this process's pid to the file named by POSTFORK_TEST_PREHOOK_FILE, so a test can
tell that postfork kept the hook (and did not drop it by importing uwsgidecorators).
"""

from __future__ import annotations

import os

import uwsgi


def user_post_fork_hook() -> None:
    with open(os.environ["POSTFORK_TEST_PREHOOK_FILE"], "a") as f:
        f.write(f"{os.getpid()}\n")


uwsgi.post_fork_hook = user_post_fork_hook
