"""PyMySQL and ``mysql+pymysql`` SQLAlchemy engines against the real MariaDB, forking for real.

The hazards first, unmanaged: ``close()`` in a child sends COM_QUIT on the parent's socket and
ends the parent's session (sqlalchemy#7815); a connection used from both processes answers each
with the other's rows. Then postfork: a registered bare connection is retired in the child
(``postfork.RetiredError``, also PyMySQL's ``OperationalError``, naming ``postfork.local``),
an engine's pool reconnects, and the parent's session is the same one afterwards: same
``CONNECTION_ID()``, still in ``information_schema.PROCESSLIST``, and its ``Questions`` count
shows that not one statement from 20 children reached it.
"""

from __future__ import annotations

import gc
from typing import Any, Dict, Iterator

import pytest

import postfork
from _mysql import (RETIRED_USES, assert_children_kept_the_parents_session,
                    assert_engine_children_kept_the_parents_session,
                    assert_guard_names_an_unmanaged_connection_and_its_line, connect_kwargs,
                    connection_id, in_a_query_at_fork, replies_crossed, retired_use, session_ended,
                    sessions_after_a_child_exits_normally, unmanaged_engine_child)
from postfork.testing import ChildError, fork_child, run_in_child

pymysql = pytest.importorskip("pymysql")

CALLS = "postfork.local(lambda: pymysql.connect(...))"
RETIRED = "postfork.RetiredError,pymysql.OperationalError"


@pytest.fixture
def kwargs(mysql_url: str) -> Dict[str, Any]:
    return connect_kwargs(mysql_url, pymysql)


@pytest.fixture
def observer(kwargs: Dict[str, Any]) -> Iterator[Any]:
    """A session of the test's own, to look at the others from the server's side."""
    conn = pymysql.connect(**kwargs, autocommit=True)
    yield conn
    conn.close()


# -- the hazards, unmanaged ------------------------------------------------------------------

def test_unmanaged_connection_closed_in_a_child_ends_the_parents_session(
        kwargs: Dict[str, Any], observer: Any) -> None:
    conn = pymysql.connect(**kwargs)
    parent = connection_id(conn)
    run_in_child(conn.close)  # COM_QUIT on the parent's socket
    with pytest.raises(pymysql.err.OperationalError) as info:
        connection_id(conn)
    assert info.value.args[0] == 2013  # Lost connection to MySQL server during query
    assert session_ended(observer, parent)


def test_unmanaged_connection_used_by_parent_and_child_crosses_replies(
        kwargs: Dict[str, Any]) -> None:
    """Both ask ``SELECT <own tag>, i`` on the one connection for half a second: replies land
    in the wrong process, silently (measured: most answers were the other process's)."""
    conn = pymysql.connect(**kwargs)
    try:
        mine, theirs = replies_crossed(conn)
    finally:
        conn._force_close()  # its state is garbage: no COM_QUIT
    assert mine["wrong"] + theirs["wrong"] > 0, (mine, theirs)


def test_unmanaged_engine_disposed_in_a_child_ends_the_parents_session(mysql_url: str) -> None:
    """SQLAlchemy's former recipe, ``engine.dispose()`` in the child, closes the parent's pooled
    connection (sqlalchemy#7815): the parent's next query fails."""
    parent, error = unmanaged_engine_child(mysql_url, "pymysql", lambda e: e.dispose())
    assert parent > 0 and "2013" in error, error


# -- postfork ----------------------------------------------------------------------------------

def test_registered_connection_is_retired_and_the_parents_session_survives_20_children(
        kwargs: Dict[str, Any], observer: Any) -> None:
    assert_children_kept_the_parents_session(pymysql, kwargs, observer, CALLS, RETIRED)


def test_retired_connection_refuses_every_way_back(kwargs: Dict[str, Any],
                                                   observer: Any) -> None:
    """Retired means unusable: no silent reconnection behind the application's back
    (``ping(reconnect=True)``, ``connect()``), no command, no cursor. Closing and collecting it
    in the child send nothing."""
    conn = postfork.register(pymysql.connect(**kwargs))
    parent = connection_id(conn)
    uses = {
        **RETIRED_USES,
        "ping(reconnect=True)": lambda c: c.ping(reconnect=True),
        "connect()": lambda c: c.connect(),
    }
    cursor = conn.cursor()  # a cursor the parent made before the fork

    def child() -> Dict[str, Any]:
        sock = conn._sock
        out: Dict[str, Any] = {name: retired_use(conn, use)[0] for name, use in uses.items()}
        out["cursor made before fork"] = retired_use(cursor, lambda c: c.execute("SELECT 1"))[0]
        out["same dead socket"] = conn._sock is sock  # nothing reconnected
        conn.close()
        gc.collect()
        return out

    try:
        seen = run_in_child(child)
    finally:
        postfork.unregister(conn)
    assert seen.pop("same dead socket") is True
    assert seen == {name: RETIRED for name in seen}, seen
    assert connection_id(conn) == parent
    conn.close()


def test_unmanaged_connection_with_a_parent_thread_in_a_query_hangs_the_childs_close(
        kwargs: Dict[str, Any], observer: Any) -> None:
    """The hazard when a parent thread is waiting for a reply at fork: the child's ``close()``
    writes COM_QUIT on the parent's socket, then waits forever for the lock of the buffered
    reader that the parent thread held. The parent gets its answer, then loses its session."""
    conn = pymysql.connect(**kwargs)
    parent = connection_id(conn)

    with in_a_query_at_fork(conn, observer, blocked_in="readinto") as answer:
        child = fork_child(conn.close)
        with pytest.raises(ChildError, match="did not finish within 3"):
            child.result(timeout=3)  # then killed
    assert answer["row"] == (0, "parent")
    with pytest.raises(pymysql.err.OperationalError):
        connection_id(conn)
    assert session_ended(observer, parent)


def test_parent_thread_inside_a_query_at_fork(kwargs: Dict[str, Any], observer: Any) -> None:
    """A parent thread is waiting for its ``SELECT SLEEP`` reply on the connection when the
    child is forked: the child's reset sends nothing, and the parent thread gets its own
    answer, on the same session."""
    conn = postfork.register(pymysql.connect(**kwargs))
    parent = connection_id(conn)

    def child() -> Any:
        report = postfork.reset_all()
        error = retired_use(conn)[0]
        conn.close()
        return report.ok, report.seconds, error

    try:
        with in_a_query_at_fork(conn, observer, blocked_in="readinto") as answer:
            ok, seconds, error = run_in_child(child, timeout=20)
        assert ok and seconds < 1.0 and error == RETIRED
        assert answer["row"] == (0, "parent")
        assert connection_id(conn) == parent
    finally:
        postfork.unregister(conn)
        conn.close()


def test_child_exiting_normally(kwargs: Dict[str, Any]) -> None:
    """A worker leaving through ``sys.exit``: PyMySQL's finalizer sends nothing (it only closes
    the process's copy), so every kind of connection survives; the test keeps it so."""
    assert sessions_after_a_child_exits_normally("pymysql", kwargs) == {
        "plain": True, "registered": True, "local": True}


def test_registered_engine_pool_reconnects_and_the_parents_session_survives_20_children(
        mysql_url: str) -> None:
    assert_engine_children_kept_the_parents_session(mysql_url, "pymysql", CALLS, RETIRED)


# -- the guard ---------------------------------------------------------------------------------

def test_guard_names_an_unmanaged_connection_and_its_line(kwargs: Dict[str, Any],
                                                          restore_guard: None) -> None:
    assert_guard_names_an_unmanaged_connection_and_its_line(pymysql, kwargs)
