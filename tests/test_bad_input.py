"""Bad input everywhere: each public function and the command, given wrong types, values and
environment variables, fails with an error that names the problem and the fix, and leaves the
registry exactly as it was; the command never shows a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Callable, Tuple, Type

import pytest

import postfork
from postfork import _lookup
from postfork._registry import REGISTRY

pytestmark = pytest.mark.usefixtures("clean_registry")


class Client:
    pass


CASES: Tuple[Tuple[str, Callable[[], Any], Type[BaseException], str], ...] = (
    ("register None", lambda: postfork.register(None), TypeError, "postfork.local(factory)"),
    ("register a class", lambda: postfork.register(Client), TypeError, "Register the object you built"),
    ("register unknown type", lambda: postfork.register(Client()), TypeError, "postfork.local(lambda: Client(...))"),
    ("register reset not callable", lambda: postfork.register(Client(), reset=3), TypeError, "reset function"),
    ("register name not str", lambda: postfork.register(Client(), reset=id, name=3), TypeError, "takes a str"),
    ("after_fork not callable", lambda: postfork.after_fork(3), TypeError, "decorates a function"),
    ("local not callable", lambda: postfork.local(3), TypeError, "postfork.local(lambda:"),
    ("local name not str", lambda: postfork.local(dict, name=b"x"), TypeError, "takes a str"),
    ("reset_all force not bool", lambda: postfork.reset_all(force="yes"), TypeError, "True or False"),
    ("guard bad mode", lambda: postfork.guard("loud"), ValueError, "'warn'"),
    ("guard not str", lambda: postfork.guard(1), ValueError, "takes one of"),
    ("adapter bad target", lambda: postfork.adapter("Client"), TypeError, "'package.module.Class'"),
    ("adapter decorates non-callable", lambda: postfork.adapter("a.B")(3), TypeError, "@postfork.adapter"),
    ("Adapter without reset", lambda: postfork.Adapter(None), TypeError, "needs reset="),
    ("Adapter close not callable", lambda: postfork.Adapter(id, close=3), TypeError, "close="),
)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_wrong_call_names_the_fix_and_changes_nothing(case: Tuple[str, Any, Any, str]) -> None:
    _, call, error, fix = case
    before = (REGISTRY.state(), list(REGISTRY.observers), dict(_lookup._user))
    with pytest.raises(error) as info:
        call()
    assert fix in str(info.value), str(info.value)
    assert (REGISTRY.state(), list(REGISTRY.observers), dict(_lookup._user)) == before


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("POSTFORK_")}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("variable, value, fix", [
    ("POSTFORK_GUARD", "loud", "takes one of 'off', 'warn', 'reset', 'raise'"),
    ("POSTFORK_GUARD", "1", "takes one of"),
    ("POSTFORK_STRICT", "sometimes", "takes 1 (raise when a reset fails"),
])
def test_a_bad_environment_variable_is_a_clear_error_never_a_silent_off(variable: str, value: str,
                                                                         fix: str) -> None:
    done = _python("import postfork\nclass C: pass\npostfork.register(C(), reset=id)", **{variable: value})
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"postfork._errors.ConfigError: the environment variable {variable}") \
        or last.startswith(f"postfork.ConfigError: the environment variable {variable}"), last
    assert fix in last and repr(value) in last


@pytest.mark.parametrize("argv, message", [
    (["doctor"], "the following arguments are required: MODULE[:ATTR]"),
    (["doctor", "x", "--timeout", "-1"], "takes a number of seconds above 0"),
    (["doctor", "x", "--timeout", "soon"], "is not a number of seconds"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["doctor", "no.such.module"], "no module named 'no.such.module'"),
    (["doctor", "os:nope"], "module 'os' has no attribute 'nope'"),
])
def test_the_command_never_shows_a_traceback(argv: Any, message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "postfork", *argv], capture_output=True, text=True,
                          timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("POSTFORK_")})
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
