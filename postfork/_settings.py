"""The two environment variables postfork reads, checked so that a typo is an error, not off.

``POSTFORK_GUARD`` (``off``, ``warn``, ``reset``, ``raise``) and ``POSTFORK_STRICT`` (``1``/``0``,
``true``/``false``, ``yes``/``no``, ``on``/``off``). A bad value raises :class:`ConfigError`
from the first postfork call that reads it, naming the variable and the values it takes; it
never switches anything off silently.
"""

from __future__ import annotations

import os

from ._errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

__all__ = ["GUARD_MODES", "GUARD_ENV", "STRICT_ENV", "parse_guard", "env_guard", "strict", "check"]

GUARD_MODES = ("off", "warn", "reset", "raise")
GUARD_ENV = "POSTFORK_GUARD"
STRICT_ENV = "POSTFORK_STRICT"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def parse_guard(value: object, source: str) -> str:
    mode = value.strip().lower() if isinstance(value, str) else None
    if mode not in GUARD_MODES:
        raise ConfigError(
            f"{source} takes one of {', '.join(repr(m) for m in GUARD_MODES)}; got {value!r}. "
            f"Use 'warn' to be told about unmanaged clients, 'raise' to fail in CI."
        )
    return mode


def env_guard() -> Optional[str]:
    """``POSTFORK_GUARD``'s mode, None when unset or empty."""
    value = os.environ.get(GUARD_ENV, "")
    if not value.strip():
        return None
    return parse_guard(value, f"the environment variable {GUARD_ENV}")


def strict() -> bool:
    """``POSTFORK_STRICT``: raise after the resets when one failed."""
    value = os.environ.get(STRICT_ENV, "")
    flag = value.strip().lower()
    if flag in _TRUE:
        return True
    if flag in _FALSE:
        return False
    raise ConfigError(
        f"the environment variable {STRICT_ENV} takes 1 (raise when a reset fails: for CI and "
        f"staging) or 0 (log it and go on, the default); got {value!r}"
    )


def check() -> None:
    """Raise :class:`ConfigError` now if either variable has a value postfork does not take."""
    env_guard()
    strict()
