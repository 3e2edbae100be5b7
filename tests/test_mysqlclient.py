"""mysqlclient (``MySQLdb``) and ``mysql+mysqldb`` SQLAlchemy engines against the real MariaDB,
forking for real.

mysqlclient's C deallocator calls ``mysql_close()``, which sends COM_QUIT: unmanaged, a child
ends the parent's session not only by closing the inherited connection but by merely letting it
be garbage-collected, or by exiting normally; and SQLAlchemy's own fork recipe,
``engine.dispose(close=False)``, drops the parent's pooled connections for the child to collect
(sqlalchemy#7815). Registered, the inherited connection is retired (its descriptor a dead socket,
every method ``postfork.RetiredError``, also ``MySQLdb.OperationalError``), and the parent's
session is the same one afterwards: same ``CONNECTION_ID()``, still in
``information_schema.PROCESSLIST``, and its ``Questions`` count shows that not one statement
from 20 children reached it.
"""

from __future__ import annotations

import gc
from typing import Any, Dict, Iterator, List, Tuple

import pytest

import postfork
from _mysql import (RETIRED_USES, assert_children_kept_the_parents_session,
                    assert_engine_children_kept_the_parents_session,
                    assert_guard_names_an_unmanaged_connection_and_its_line, connect_kwargs,
                    connection_id, in_a_query_at_fork, replies_crossed, retired_use, session_ended,
                    sessions, sessions_after_a_child_exits_normally, unmanaged_engine_child)
from postfork.testing import run_in_child

MySQLdb = pytest.importorskip("MySQLdb")

CALLS = "postfork.local(lambda: MySQLdb.connect(...))"
RETIRED = "MySQLdb.OperationalError,postfork.RetiredError"


@pytest.fixture
def kwargs(mysql_url: str) -> Dict[str, Any]:
    return connect_kwargs(mysql_url, MySQLdb)


@pytest.fixture
def observer(kwargs: Dict[str, Any]) -> Iterator[Any]:
    """A session of the test's own, to look at the others from the server's side."""
    conn = MySQLdb.connect(**kwargs, autocommit=True)
    yield conn
    conn.close()


def _collect(holder: List[Any]) -> bool:
    """In the child: drop the only reference to the connection and collect it (the C
    deallocator runs ``mysql_close()``)."""
    holder.clear()
    gc.collect()
    return True


# -- the hazards, unmanaged ------------------------------------------------------------------

@pytest.mark.parametrize("how", ["close", "garbage-collected"])
def test_unmanaged_connection_closed_or_collected_in_a_child_ends_the_parents_session(
        kwargs: Dict[str, Any], observer: Any, how: str) -> None:
    holder = [MySQLdb.connect(**kwargs)]  # the only reference, so that the child can drop it
    parent = connection_id(holder[0])
    run_in_child(holder[0].close if how == "close" else lambda: _collect(holder))
    with pytest.raises(MySQLdb.OperationalError) as info:
        connection_id(holder[0])
    assert info.value.args[0] == 2013  # Lost connection to server during query
    assert session_ended(observer, parent)


def test_unmanaged_connection_used_by_parent_and_child_crosses_replies(
        kwargs: Dict[str, Any]) -> None:
    """Both ask ``SELECT <own tag>, i`` on the one connection for half a second: replies land
    in the wrong process, silently (measured: most answers were the other process's)."""
    mine, theirs = replies_crossed(MySQLdb.connect(**kwargs))
    assert mine["wrong"] + theirs["wrong"] > 0, (mine, theirs)


def test_unmanaged_engine_dropped_in_a_child_ends_the_parents_session(mysql_url: str) -> None:
    """SQLAlchemy's recipe for a child, ``engine.dispose(close=False)``, drops the parent's
    pooled connection without closing it; collected in the child, mysqlclient closes it."""

    def dispose_and_collect(engine: Any) -> None:
        engine.dispose(close=False)
        gc.collect()

    parent, error = unmanaged_engine_child(mysql_url, "mysqldb", dispose_and_collect)
    assert parent > 0 and "2013" in error, error


def test_child_exiting_normally(kwargs: Dict[str, Any]) -> None:
    """A worker leaving through ``sys.exit``: the interpreter finalizes and mysqlclient's
    deallocator closes what the worker inherited. The plain connection's session ends; the
    registered one and a ``postfork.local`` one built in the master survive (retired first)."""
    after = sessions_after_a_child_exits_normally("MySQLdb", kwargs)
    assert "2013" in str(after.pop("plain")), after
    assert after == {"registered": True, "local": True}


# -- postfork ----------------------------------------------------------------------------------

def test_registered_connection_is_retired_and_the_parents_session_survives_20_children(
        kwargs: Dict[str, Any], observer: Any) -> None:
    assert_children_kept_the_parents_session(MySQLdb, kwargs, observer, CALLS, RETIRED)


def test_retired_connection_refuses_every_use_and_closes_silently(
        kwargs: Dict[str, Any], observer: Any) -> None:
    holder = [postfork.register(MySQLdb.connect(**kwargs))]
    parent = connection_id(holder[0])
    uses = {
        **RETIRED_USES,
        "set_character_set": lambda c: c.set_character_set("utf8mb4"),
        "change_user": lambda c: c.change_user("root", ""),
        "kill": lambda c: c.kill(1),
    }
    cursor = holder[0].cursor()  # a cursor the parent made before the fork

    def child(how: str) -> Dict[str, Any]:
        conn = holder[0]
        out: Dict[str, Any] = {name: retired_use(conn, use)[0] for name, use in uses.items()}
        out["cursor made before fork"] = retired_use(cursor, lambda c: c.execute("SELECT 1"))[0]
        if how == "close":
            conn.close()  # mysql_close(): its COM_QUIT goes into the dead socket
        else:
            del conn
            cursor.connection = None
            _collect(holder)  # the deallocator's mysql_close(), the same
        return out

    try:
        for how in ("close", "garbage-collected"):
            seen = run_in_child(child, how)
            assert seen == {name: RETIRED for name in seen}, (how, seen)
            assert connection_id(holder[0]) == parent
    finally:
        postfork.unregister(holder[0])
    assert parent in sessions(observer)
    holder[0].close()


@pytest.mark.parametrize("managed", [False, True])
def test_parent_thread_inside_a_query_at_fork(kwargs: Dict[str, Any], observer: Any,
                                              managed: bool) -> None:
    """A parent thread is inside ``SELECT SLEEP`` when the child is forked: it holds the C
    connection lock, so in the child every C method raises ``ProgrammingError`` ("already in
    use from another thread"), ``fileno()`` and ``close()`` included, while the deallocator
    takes no lock and would send COM_QUIT.

    Unmanaged, the child can neither use nor close the connection. Registered, the reset
    finds the descriptor in the C handle, retires it, the connection raises ``RetiredError``
    and closes silently, and the parent thread gets its answer on a session that goes on."""
    conn = MySQLdb.connect(**kwargs)
    if managed:
        postfork.register(conn)
    parent = connection_id(conn)

    def child() -> Tuple[bool, bool, str, str]:
        report = postfork.reset_all()
        try:
            conn.fileno()
            lock_held = False
        except MySQLdb.ProgrammingError:
            lock_held = True
        error = retired_use(conn)[0]
        try:
            conn.close()
            closing = "closed"
        except Exception as exc:  # noqa: BLE001 - what the user would see
            closing = type(exc).__name__
        return report.ok, lock_held, error, closing

    try:
        with in_a_query_at_fork(conn, observer) as answer:
            ok, lock_held, error, closing = run_in_child(child, timeout=20)
        assert ok and lock_held and answer["row"] == (0, "parent")
        if managed:
            assert (error, closing) == (RETIRED, "closed")
        else:
            assert (error, closing) == ("ProgrammingError", "ProgrammingError")
        assert connection_id(conn) == parent
    finally:
        postfork.unregister(conn)
        conn.close()


def test_registered_engine_pool_reconnects_and_the_parents_session_survives_20_children(
        mysql_url: str) -> None:
    assert_engine_children_kept_the_parents_session(mysql_url, "mysqldb", CALLS, RETIRED)


# -- the guard ---------------------------------------------------------------------------------

def test_guard_names_an_unmanaged_connection_and_its_line(kwargs: Dict[str, Any],
                                                          restore_guard: None) -> None:
    assert_guard_names_an_unmanaged_connection_and_its_line(MySQLdb, kwargs)
