"""postfork: fork-safe network clients for prefork servers.

Register a client once (``postfork.register(client)``) or build it per process
(``postfork.local(factory)``); every process forked afterwards resets it before use. The first
registration (or ``postfork.guard()``) installs the ``os.register_at_fork`` hook that runs
:func:`reset_all` in each child; the server integrations in ``postfork.integrations`` run it
again where a server skips that hook. ``import postfork`` alone imports no client library and
not ``logging``.
"""

from __future__ import annotations

from ._contract import Adapter
from ._errors import ConfigError, ForkSafetyError, ForkSafetyWarning, ResetError, RetiredError
from ._guard import check, guard
from ._local import Local, local
from ._lookup import adapter
from ._mphooks import multiprocessing_after_fork
from ._registry import after_fork, close_all, register, registered, reset_all, unregister
from ._report import Entry, Finding, Report

__all__ = [
    "register",
    "unregister",
    "registered",
    "after_fork",
    "multiprocessing_after_fork",
    "local",
    "Local",
    "reset_all",
    "close_all",
    "Report",
    "Entry",
    "ResetError",
    "RetiredError",
    "ConfigError",
    "adapter",
    "Adapter",
    "guard",
    "check",
    "Finding",
    "ForkSafetyWarning",
    "ForkSafetyError",
]

__version__ = "0.1.0"
