"""The registry, ``local``, the report and strict mode, in real forked children.

These use no client library: the objects are plain Python objects with resets that record
what ran where, so each test isolates one rule of the contract (SPEC.md, Public API).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, List

import pytest

import postfork
from _polling import wait_until
from postfork import _lookup as _adapters
from postfork._registry import REGISTRY
from postfork.testing import ChildError, fork_child, run_in_child


class Client:
    """A stand-in for the application's own object type (not for a client library)."""

    def __init__(self) -> None:
        self.resets: List[int] = []


def record(client: Client) -> None:
    client.resets.append(os.getpid())


pytestmark = pytest.mark.usefixtures("clean_registry")


# -- registration --------------------------------------------------------------------------


def test_register_returns_the_object_and_keeps_one_entry() -> None:
    c = Client()
    assert postfork.register(c, record) is c
    assert postfork.register(c, record) is c
    assert postfork.registered(c)
    assert sum(1 for o in REGISTRY.objects() if o is c) == 1
    assert postfork.unregister(c) is True
    assert postfork.unregister(c) is False
    assert not postfork.registered(c)


def test_resets_run_in_registration_order_once_per_child() -> None:
    order: List[str] = []
    objs = [Client() for _ in range(5)]
    for i, o in enumerate(objs):
        postfork.register(o, lambda _o, i=i: order.append(f"client{i}"))
    postfork.after_fork(lambda: order.append("callback"))

    def child() -> Any:
        first = list(order)  # the at-fork hook already ran every reset
        report = postfork.reset_all()  # an integration calling again: a no-op
        return first, list(order), len(report.entries)

    first, after_second, n = run_in_child(child, reset=False)
    assert first == [f"client{i}" for i in range(5)] + ["callback"]
    assert after_second == first
    assert n >= 6
    assert order == []  # nothing ran in the parent


@pytest.mark.parametrize("enabled", [True, False], ids=["gc-on", "gc-off"])
def test_the_at_fork_resets_run_with_the_collector_paused(enabled: bool) -> None:
    """A collection in a new child walks every object the master built (copy-on-write faults
    over the whole heap): the at-fork resets run with the cyclic collector paused, and its
    state is the application's again afterwards, off if the application had it off."""
    seen: List[bool] = []
    client = postfork.register(Client(), lambda _o: seen.append(gc.isenabled()))
    if not enabled:
        gc.disable()
    try:
        during, after = run_in_child(lambda: (list(seen), gc.isenabled()), reset=False)
    finally:
        gc.enable()
    assert during and not any(during), during
    assert after is enabled
    assert postfork.registered(client)


def test_weakly_held_object_leaves_the_registry_when_collected() -> None:
    c = Client()
    postfork.register(c, record)
    n = len(REGISTRY.live())
    del c
    gc.collect()
    assert len(REGISTRY.live()) == n - 1


def test_object_without_weakref_support_is_held_strongly() -> None:
    value = [1, 2, 3]  # a list cannot be weakly referenced
    seen: List[Any] = []
    postfork.register(value, seen.append)
    assert postfork.registered(value)
    assert run_in_child(lambda: seen == [[1, 2, 3]], reset=False)


# -- local ---------------------------------------------------------------------------------


def test_local_builds_one_instance_per_process() -> None:
    built: List[int] = []

    def factory() -> Client:
        built.append(os.getpid())
        return Client()

    lo = postfork.local(factory)
    assert not lo.built
    a = lo.get()
    assert lo() is a and lo.get() is a and lo.resets is a.resets  # attribute forwarding
    assert built == [os.getpid()]

    def child() -> Any:
        b = lo.get()
        return id(b) != id(a), lo.get() is b, built[-1] == os.getpid(), len(built)

    differs, same_again, built_here, n = run_in_child(child)
    assert differs and same_again and built_here and n == 2
    assert lo.get() is a  # the parent keeps its own
    # a child of a child gets its own, too
    grand = run_in_child(lambda: run_in_child(lambda: (lo.get(), os.getpid() == built[-1])[1]))
    assert grand is True


def test_local_resolve_makes_no_getpid_call(monkeypatch: pytest.MonkeyPatch) -> None:
    lo = postfork.local(Client)
    lo.get()
    calls = []
    real = os.getpid
    monkeypatch.setattr(os, "getpid", lambda: calls.append(1) or real())
    for _ in range(1000):
        lo.get()
        lo.resets  # forwarded attribute access
        lo()
    assert calls == []


def test_local_get_with_arguments_is_the_instance_get() -> None:
    """``cache.get("key")`` on a local redis client must be redis' GET, not the resolver."""
    lo = postfork.local(dict)
    lo()["key"] = "value"
    assert lo.get("key") == "value"
    assert lo.get("missing", "default") == "default"
    assert lo.get() is lo()


def test_local_is_generic_at_run_time_without_typing() -> None:
    assert postfork.Local[Client] is not None  # Local[Redis] in annotations evaluated at run time


def test_local_forwards_attribute_writes_and_rejects_a_non_callable() -> None:
    lo = postfork.local(Client)
    lo.name = "x"
    assert lo.get().name == "x"
    with pytest.raises(TypeError, match="factory"):
        postfork.local(42)  # type: ignore[arg-type]


# -- reports, errors, strict mode ----------------------------------------------------------


def _three_good_one_bad() -> List[Client]:
    good = [Client() for _ in range(3)]
    postfork.register(good[0], record, name="good-0")

    def explode(_: Client) -> None:
        raise ConnectionError("boom: cannot reset")

    bad = Client()
    postfork.register(bad, explode, name="bad")
    postfork.register(good[1], record, name="good-1")
    postfork.register(good[2], record, name="good-2")
    good[0].keep_alive = bad  # held weakly by the registry: keep it alive for the test
    return good


def test_one_failing_reset_never_stops_the_others(caplog: pytest.LogCaptureFixture) -> None:
    good = _three_good_one_bad()

    def child() -> Any:
        report = postfork.reset_all()
        again = postfork.reset_all()
        forced = postfork.reset_all(force=True)
        return (
            [(e.name, e.ok) for e in report.entries if e.name.startswith(("good", "bad"))],
            [(e.name, type(e.error).__name__, str(e.error)) for e in report.failed],
            [len(g.resets) for g in good],
            again is report,
            forced is not report,
            str(report),
            report.ok,
        )

    entries, failed, counts, same, new_on_force, line, ok = run_in_child(child, reset=False)
    assert entries == [("good-0", True), ("bad", False), ("good-1", True), ("good-2", True)]
    assert failed == [("bad", "ConnectionError", "boom: cannot reset")]
    assert counts == [2, 2, 2]  # the at-fork run and the forced one; the repeat ran nothing
    assert same and new_on_force and not ok
    assert "1 failed" in line and "(pid " in line and "bad" in line


def test_failure_is_logged_with_traceback() -> None:
    good = _three_good_one_bad()  # noqa: F841 - held: the registry holds them weakly

    def child() -> Any:
        import logging

        records: List[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        logging.getLogger("postfork").addHandler(handler)
        report = postfork.reset_all(force=True)
        return len(report.failed), [(r.levelname, r.getMessage(), bool(r.exc_info)) for r in records]

    failed, logged = run_in_child(child, reset=False)
    assert failed == 1
    assert any(level == "ERROR" and "bad" in msg and tb for level, msg, tb in logged)


def test_strict_mode_raises_after_every_reset_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    good = _three_good_one_bad()
    monkeypatch.setenv("POSTFORK_STRICT", "1")

    def child() -> Any:
        # The at-fork hook ran the resets and could not raise; every call now raises.
        outcomes = []
        for _ in range(2):
            try:
                postfork.reset_all()
                outcomes.append("returned")
            except postfork.ResetError as exc:
                outcomes.append((type(exc).__name__, len(exc.report.failed), "bad" in str(exc)))
        return outcomes, [len(g.resets) for g in good]

    outcomes, counts = run_in_child(child, reset=False)
    assert outcomes == [("ResetError", 1, True)] * 2
    assert counts == [1, 1, 1]


def test_strict_mode_surfaces_through_run_in_child(monkeypatch: pytest.MonkeyPatch) -> None:
    good = _three_good_one_bad()  # noqa: F841
    monkeypatch.setenv("POSTFORK_STRICT", "1")
    with pytest.raises(ChildError, match="ResetError"):
        run_in_child(lambda: None)


def test_a_child_that_finished_is_never_called_hung() -> None:
    """``Child.result`` reads what already arrived before it looks at the deadline: a finished
    child's answer is returned even at ``timeout=0`` (it used to be killed as "did not finish"
    when the deadline passed between two reads of a complete answer). A child with no answer is
    still killed."""
    done = fork_child(lambda: "x" * 1000)  # within a pipe's buffer: the child can exit
    assert wait_until(lambda: _exited(done.pid), 30)
    assert done.result(timeout=0) == "x" * 1000
    silent = fork_child(lambda: __import__("time").sleep(60))
    with pytest.raises(ChildError, match="did not finish within 0.2 s"):
        silent.result(timeout=0.2)


def _exited(pid: int) -> bool:
    """The child has exited and waits to be reaped: everything it wrote is in the pipe."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "Z"


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, fix",
    [
        (lambda: postfork.register(None), "local"),
        (lambda: postfork.register(Client), "instance"),
        (lambda: postfork.register(object()), "reset="),
        (lambda: postfork.register(Client(), reset=42), "callable"),  # type: ignore[arg-type]
        (lambda: postfork.adapter("pkg.mod.Class")(42), "callable"),  # type: ignore[arg-type]
        (lambda: postfork.adapter(42), "qualified name"),  # type: ignore[arg-type]
        (lambda: postfork.after_fork(42), "function"),  # type: ignore[arg-type]
    ],
)
def test_bad_input_names_the_fix_and_changes_nothing(call: Any, fix: str) -> None:
    before = list(REGISTRY.state()[0].items())
    adapters_before = dict(_adapters._user)
    with pytest.raises(TypeError) as info:
        call()
    assert fix in str(info.value)
    assert list(REGISTRY.state()[0].items()) == before
    assert _adapters._user == adapters_before


def test_unknown_type_message_names_both_ways_out() -> None:
    with pytest.raises(TypeError) as info:
        postfork.register(Client())
    msg = str(info.value)
    assert f"{__name__}.Client" in msg and "reset=" in msg and "postfork.local" in msg


# -- adapters ------------------------------------------------------------------------------


def test_adapter_decorator_applies_along_the_mro() -> None:
    class Base:
        pass

    class Derived(Base):
        pass

    seen: List[str] = []
    key = f"{Base.__module__}.{Base.__qualname__}"
    try:
        postfork.adapter(key)(lambda o: seen.append(type(o).__name__))
        d = postfork.register(Derived())
        assert run_in_child(lambda: seen, reset=False) == ["Derived"]
        assert postfork.registered(d)
    finally:
        _adapters._user.pop(key, None)


def test_adapter_from_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package that ships an adapter through the ``postfork.adapters`` entry point group."""
    pkg = tmp_path / "thirdparty_client.py"
    pkg.write_text(textwrap.dedent("""
        import os
        class Conn:
            def __init__(self):
                self.reset_in = None
        def reset(conn):
            conn.reset_in = os.getpid()
    """))
    dist = tmp_path / "thirdparty_client-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-client\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[postfork.adapters]\nthirdparty_client.Conn = thirdparty_client:reset\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_adapters, "_entry_points", None)  # rescan with the new distribution
    import thirdparty_client  # type: ignore[import-not-found]

    conn = postfork.register(thirdparty_client.Conn())
    child_pid, reset_in = run_in_child(lambda: (os.getpid(), conn.reset_in), reset=False)
    assert reset_in == child_pid
    assert conn.reset_in is None
    _adapters._user.pop("thirdparty_client.Conn", None)
    sys.modules.pop("thirdparty_client", None)


# -- forks without any integration ---------------------------------------------------------


def test_plain_os_fork_child_is_reset_by_the_at_fork_hook() -> None:
    c = postfork.register(Client(), record)
    lo = postfork.local(Client)
    parent_instance = lo.get()
    # reset=False: the child calls nothing itself; only the hook installed on import runs.
    resets, built_at_start, fresh_instance = fork_child(
        lambda: (c.resets, lo.built, lo.get() is not parent_instance),
        reset=False,
    ).result(30)
    assert len(resets) == 1 and resets[0] != os.getpid()
    assert built_at_start is False  # the hook invalidated the parent's instance...
    assert fresh_instance is True  # ...and the child's first use built its own
    assert c.resets == [] and lo.get() is parent_instance


def _mp_child(queue: Any) -> None:
    queue.put(os.getpid())


_MP_CLIENT = Client()


def _mp_report(queue: Any) -> None:
    queue.put((os.getpid(), list(_MP_CLIENT.resets)))


def test_multiprocessing_fork_context_child_is_reset() -> None:
    postfork.register(_MP_CLIENT, record)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_mp_report, args=(queue,))
    proc.start()
    pid, resets = queue.get(timeout=30)
    proc.join(30)
    assert proc.exitcode == 0
    assert resets == [pid]
    assert _MP_CLIENT.resets == []


def test_hookless_fork_resets_only_when_the_integration_calls_reset_all() -> None:
    """What uWSGI does without --py-call-osafterfork: no at-fork hook; the integration's
    reset_all() call is the one that resets (once)."""
    c = postfork.register(Client(), record)
    assert run_in_child(lambda: c.resets, reset=False, hooks=False) == []
    resets = run_in_child(lambda: (c.resets, postfork.reset_all().entries and c.resets)[1],
                          reset=True, hooks=False)
    assert len(resets) == 1 and resets[0] != os.getpid()
