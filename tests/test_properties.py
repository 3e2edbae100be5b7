"""Property tests: any sequence of register, unregister, after_fork, local creation and
resolution, garbage collection and forks (children and grandchildren). In every child each live
registration is reset exactly once, in registration order; unregistered and collected ones
never; every local is invalidated; nothing raises.
"""

from __future__ import annotations

import gc
import os
from typing import Any, Dict, List, Tuple

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import postfork  # noqa: E402
from postfork.testing import run_in_child  # noqa: E402

RESETS: List[str] = []  # what ran in this process since the last clear, in order


class Client:
    def __init__(self, key: str) -> None:
        self.key = key


def reset(client: Client) -> None:
    RESETS.append(client.key)


class World:
    """The operations, and a model of what the registry should hold."""

    def __init__(self) -> None:
        self.clients: Dict[str, Client] = {}    # referenced by the test (alive)
        self.functions: Dict[str, Any] = {}
        self.locals: Dict[str, Any] = {}
        self.model: Dict[str, str] = {}          # key -> "client" | "callback", in order
        self.n = 0

    def new_key(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    def apply(self, op: Tuple[str, int]) -> None:
        name, pick = op
        if name == "register":
            key = self.new_key("c")
            self.clients[key] = postfork.register(Client(key), reset=reset)
            self.model[key] = "client"
        elif name == "register_again" and self.clients:
            key = sorted(self.clients)[pick % len(self.clients)]
            postfork.register(self.clients[key], reset=reset)  # one entry, in place
            self.model.setdefault(key, "client")
        elif name == "unregister" and self.clients:
            key = sorted(self.clients)[pick % len(self.clients)]
            assert postfork.unregister(self.clients[key]) is (key in self.model)
            self.model.pop(key, None)
        elif name == "collect" and self.clients:
            key = sorted(self.clients)[pick % len(self.clients)]
            del self.clients[key]
            gc.collect()
            self.model.pop(key, None)
        elif name == "after_fork":
            key = self.new_key("f")

            def callback(key: str = key) -> None:
                RESETS.append(key)

            self.functions[key] = postfork.after_fork(callback)
            self.model[key] = "callback"
        elif name == "after_fork_remove" and self.functions:
            key = sorted(self.functions)[pick % len(self.functions)]
            postfork.unregister(self.functions.pop(key))
            self.model.pop(key, None)
        elif name == "local":
            key = self.new_key("l")
            self.locals[key] = postfork.local(lambda key=key: Client(key), name=key)
        elif name == "resolve" and self.locals:
            self.locals[sorted(self.locals)[pick % len(self.locals)]].get()

    def expected(self) -> List[str]:
        return list(self.model)

    def check_child(self, depth: int) -> Dict[str, Any]:
        ran = list(RESETS)
        unbuilt = all(not lo.built for lo in self.locals.values())
        result: Dict[str, Any] = {"ran": ran, "unbuilt": unbuilt}
        if depth:
            for lo in self.locals.values():
                lo.get()  # the child builds its own, then forks a grandchild
            RESETS.clear()
            result["grandchild"] = run_in_child(lambda: self.check_child(depth - 1), reset=False)
        return result


OPS = st.lists(st.tuples(st.sampled_from(["register", "register_again", "unregister", "collect",
                                          "after_fork", "after_fork_remove", "local", "resolve",
                                          "fork"]),
                         st.integers(0, 50)), max_size=30)


@pytest.mark.usefixtures("clean_registry")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_any_sequence_resets_each_live_registration_once_in_order(ops: List[Tuple[str, int]]) -> None:
    world = World()
    try:
        for op in ops + [("fork", 1)]:
            if op[0] != "fork":
                world.apply(op)
                continue
            RESETS.clear()
            seen = run_in_child(lambda: world.check_child(depth=op[1] % 2), reset=False)
            expected = world.expected()
            assert seen["ran"] == expected and seen["unbuilt"]
            if "grandchild" in seen:  # everything is still registered there, in the same order
                assert seen["grandchild"]["ran"] == expected and seen["grandchild"]["unbuilt"]
            assert RESETS == []  # nothing ran in the parent
    finally:
        for obj in list(world.clients.values()) + list(world.functions.values()):
            postfork.unregister(obj)
