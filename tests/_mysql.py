"""What tests/test_pymysql.py and tests/test_mysqlclient.py share: connection parameters from
the ``mysql_url`` fixture, the server's view of a session, and the hazards of sharing one.

Both DB-API drivers are driven through the same few calls (``cursor()``, ``execute``,
``fetchone``), so the helpers take the driver module as an argument.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Tuple
from urllib.parse import urlparse


def connect_kwargs(url: str, driver: Any) -> Dict[str, Any]:
    """Keyword arguments of ``driver.connect`` (PyMySQL or MySQLdb) for ``url``."""
    u = urlparse(url)
    kwargs: Dict[str, Any] = dict(host=u.hostname or "127.0.0.1", port=u.port or 3306,
                                  user=u.username or "root", password=u.password or "",
                                  database=u.path.lstrip("/"), connect_timeout=5)
    # Every read is bounded: a reply the other process took would otherwise be waited for forever.
    kwargs.update(read_timeout=5, write_timeout=5)
    return kwargs


def engine_url(url: str, driver: str) -> str:
    """``mysql+pymysql://...`` or ``mysql+mysqldb://...``."""
    return url.replace("mysql://", f"mysql+{driver}://", 1)


def one(conn: Any, sql: str) -> Any:
    cur = conn.cursor()
    try:
        cur.execute(sql)
        row = cur.fetchone()
    finally:
        cur.close()
    return row


def fd_of(conn: Any) -> int:
    """The descriptor under a MySQLdb (``fileno()``) or PyMySQL (``_sock``) connection."""
    return int(conn.fileno()) if hasattr(conn, "fileno") else int(conn._sock.fileno())


def connection_id(conn: Any) -> int:
    return int(one(conn, "SELECT CONNECTION_ID()")[0])


def questions(conn: Any) -> int:
    """The statements this session has received so far (COM_QUERY; a ping is not counted). If
    a child wrote a query on the parent's session, the parent's count would show it."""
    return int(one(conn, "SHOW SESSION STATUS LIKE 'Questions'")[1])


def session_ended(observer: Any, session: int, within: float = 10.0) -> bool:
    """The server ended ``session``: it leaves PROCESSLIST a moment after the server closed its
    socket (the client has seen EOF by then, the list not yet)."""
    from _polling import wait_until

    return bool(wait_until(lambda: session not in sessions(observer), within))


def sessions(observer: Any) -> Dict[int, Tuple[str, str]]:
    """The server's sessions: ``{id: (command, info)}`` from ``information_schema.PROCESSLIST``."""
    cur = observer.cursor()
    try:
        cur.execute("SELECT ID, COMMAND, COALESCE(INFO, '') FROM information_schema.PROCESSLIST")
        return {int(i): (str(c), str(info)) for i, c, info in cur.fetchall()}
    finally:
        cur.close()


def crossed_replies(conn: Any, tag: int, seconds: float) -> Dict[str, Any]:
    """Ask ``SELECT tag, i`` on ``conn`` for ``seconds`` (or until an error) and count the
    answers that were not this process's own. Parent and child run it at the same time on a
    shared connection."""
    ok = wrong = 0
    error = None
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        i += 1
        try:
            row = one(conn, f"SELECT {tag}, {i}")
        except Exception as exc:  # noqa: BLE001 - the hazard: whatever the driver raises
            error = f"{type(exc).__name__}: {exc}"
            break
        if row is not None and tuple(row) == (tag, i):
            ok += 1
        else:
            wrong += 1
    return {"pid": os.getpid(), "ok": ok, "wrong": wrong, "error": error}


@contextmanager
def in_a_query_at_fork(conn: Any, observer: Any, seconds: float = 1.5,
                       blocked_in: str = "") -> Iterator[Dict[str, Any]]:
    """A parent thread is inside ``SELECT SLEEP(seconds)`` on ``conn`` for the whole block (seen
    on the server's side before the block starts, and with ``blocked_in`` the name of the
    function the thread is then waiting in: PyMySQL's reply is read in ``readinto``); its
    answer is in ``result["row"]`` after."""
    session = connection_id(conn)
    result: Dict[str, Any] = {}

    def query() -> None:
        try:
            result["row"] = tuple(one(conn, f"SELECT SLEEP({seconds}), 'parent'"))
        except Exception as exc:  # noqa: BLE001 - reported to the test
            result["row"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=query, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while "SLEEP" not in sessions(observer).get(session, ("", ""))[1]:
        assert time.monotonic() < deadline, "the parent's query never reached the server"
        time.sleep(0.01)
    while blocked_in:
        frame = sys._current_frames().get(thread.ident or 0)
        if frame is not None and frame.f_code.co_name == blocked_in:
            break
        assert time.monotonic() < deadline, f"the parent thread never waited in {blocked_in}"
        time.sleep(0.001)
    try:
        yield result
    finally:
        thread.join(seconds + 10)
        assert not thread.is_alive()


# -- scenarios both drivers go through ---------------------------------------------------------

CHILDREN = 20


def retired_use(conn: Any, use: Any = None) -> Tuple[str, str]:
    """(error class names, message) of using the retired ``conn`` in this process: its
    ``RetiredError`` and ``OperationalError`` classes, else the error's own class name."""
    try:
        (use or connection_id)(conn)
    except Exception as exc:  # noqa: BLE001 - what the driver's user would see
        names = ",".join(sorted({c.__module__.split(".")[0] + "." + c.__name__
                                 for c in type(exc).__mro__ if c.__name__ in
                                 ("RetiredError", "OperationalError")}))
        return names or type(exc).__name__, str(exc)
    return "no error", ""


def children_keep_the_parents_session(driver: Any, kwargs: Dict[str, Any], observer: Any,
                                      children: int = CHILDREN) -> Dict[str, Any]:
    """A registered connection and a ``postfork.local`` one, both used in the parent; then
    ``children`` forked at once, each: the inherited connection raises, this process's own
    (the local) answers with a session of its own, the retired one is closed, and the child
    exits. Returns what the parent and the children saw, for the test's asserts."""
    import gc

    import postfork
    from postfork.testing import fork_child

    conn = postfork.register(driver.connect(**kwargs))
    own = postfork.local(lambda: driver.connect(**kwargs))
    try:
        parent, parent_own = connection_id(conn), connection_id(own)
        inherited_fd = fd_of(conn)
        q0 = questions(conn)
        q1 = questions(conn)  # q1 - q0: what one questions() adds to the count, the SHOW itself

        def child() -> Dict[str, Any]:
            error, message = retired_use(conn)
            mine, again = connection_id(own), connection_id(own)
            fd = fd_of(own())
            conn.close()  # harmless: the COM_QUIT goes into the dead socket
            own.close()
            gc.collect()
            return {"error": error, "message": message, "mine": mine, "again": again,
                    "other_number": fd != inherited_fd}

        # No automatic collection between the fork and the child's check: the dropped pool is a
        # reference cycle, and a collection the at-fork hook's allocations happen to trigger
        # would finalize it before the child could look (seen once in a full run: 'collected').
        gc.disable()
        try:
            forked = [fork_child(child) for _ in range(children)]
        finally:
            gc.enable()
        results = [c.result(timeout=60) for c in forked]
        q2 = questions(conn)
        return {"parent": parent, "parent_own": parent_own, "after": connection_id(conn),
                "own_after": connection_id(own), "questions": (q1 - q0, q2 - q1),
                "alive": parent in sessions(observer), "children": results}
    finally:
        postfork.unregister(conn)
        conn.close()
        own.close()


def engine_children_keep_the_parents_session(url: str, driver: str,
                                             children: int = CHILDREN) -> Dict[str, Any]:
    """A registered ``mysql+<driver>`` engine whose pool holds the parent's connection at
    fork; ``children`` forked at once, each: the dropped DBAPI connection raises, the engine
    answers on a connection of the child's own (the pool reconnects), ``dispose()`` closes it,
    and the dropped one stays referenced (the engine's adapter keeps what its reset dropped, so
    no finalizer of the parent's connection runs in the child)."""
    import gc
    import weakref

    import sqlalchemy
    from sqlalchemy import text

    import postfork
    from postfork.testing import fork_child

    engine = postfork.register(sqlalchemy.create_engine(engine_url(url, driver), pool_size=1,
                                                        max_overflow=0))

    def session() -> int:
        with engine.connect() as conn:
            return int(conn.scalar(text("SELECT CONNECTION_ID()")))

    def count() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("SHOW SESSION STATUS LIKE 'Questions'")).fetchone()[1])

    try:
        parent = session()
        # Weakly: the child must be able to collect it. Alive in the child until the
        # pool SQLAlchemy dropped (a reference cycle) is collected.
        dropped = weakref.ref(engine.pool._pool.queue[0].driver_connection)
        q0 = count()
        q1 = count()

        def child() -> Dict[str, Any]:
            conn = dropped()
            error, message = retired_use(conn) if conn is not None else ("collected", "")
            del conn
            mine, again = session(), session()
            engine.dispose()  # the child's own connection: its COM_QUIT ends the child's session
            gc.collect()  # the parent's dropped connection is finalized here, in the child
            return {"error": error, "message": message, "mine": mine, "again": again,
                    "collected": dropped() is None}

        # No automatic collection between the fork and the child's check: the dropped pool is a
        # reference cycle, and a collection the at-fork hook's allocations happen to trigger
        # would finalize it before the child could look (seen once in a full run: 'collected').
        gc.disable()
        try:
            forked = [fork_child(child) for _ in range(children)]
        finally:
            gc.enable()
        results = [c.result(timeout=60) for c in forked]
        q2 = count()
        return {"parent": parent, "after": session(), "questions": (q1 - q0, q2 - q1),
                "children": results}
    finally:
        postfork.unregister(engine)
        engine.dispose()


def unmanaged_engine_child(url: str, driver: str, in_child: Any) -> Tuple[int, str]:
    """The hazard of an unmanaged ``mysql+<driver>`` engine: the child runs
    ``in_child(engine)``; returns (the parent's session, what its next query then raised)."""
    import sqlalchemy
    from sqlalchemy import text

    from postfork.testing import run_in_child

    engine = sqlalchemy.create_engine(engine_url(url, driver), pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            parent = int(conn.scalar(text("SELECT CONNECTION_ID()")))
        run_in_child(in_child, engine)
        try:
            with engine.connect() as conn:
                conn.scalar(text("SELECT CONNECTION_ID()"))
        except sqlalchemy.exc.OperationalError as exc:
            return parent, str(exc.orig)
        return parent, "no error"
    finally:
        engine.dispose()


# A worker that exits normally (sys.exit: the interpreter finalizes, module globals are
# cleared, finalizers run), in a process of its own so that pytest is not the one exiting.
_EXIT_SCRIPT = r"""
import json, os, sys
import postfork
driver = __import__(sys.argv[1])
kwargs = json.loads(sys.argv[2])

def session(conn):
    cur = conn.cursor(); cur.execute("SELECT CONNECTION_ID()"); row = cur.fetchone(); cur.close()
    return int(row[0])

plain = driver.connect(**kwargs)
registered = postfork.register(driver.connect(**kwargs))
local = postfork.local(lambda: driver.connect(**kwargs))
before = {name: session(c) for name, c in
          (("plain", plain), ("registered", registered), ("local", local))}
pid = os.fork()
if pid == 0:
    sys.exit(0)  # the child touches nothing and exits normally
os.waitpid(pid, 0)
after = {}
for name, conn in (("plain", plain), ("registered", registered), ("local", local)):
    try:
        after[name] = session(conn) == before[name]
    except Exception as exc:
        after[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(after))
"""


def sessions_after_a_child_exits_normally(driver: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """{"plain"|"registered"|"local": True if the parent's session answers as before, else the
    error} after a forked child exits through ``sys.exit``."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _EXIT_SCRIPT, driver, json.dumps(kwargs)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- the claims both drivers' tests make ---------------------------------------------------------

# What a retired connection refuses in the child, in both drivers (each test adds its driver's own).
RETIRED_USES: Dict[str, Callable[[Any], Any]] = {
    "ping()": lambda c: c.ping(),
    "cursor()": lambda c: c.cursor(),
    "query": lambda c: c.query("SELECT 1"),
    "commit": lambda c: c.commit(),
    "rollback": lambda c: c.rollback(),
    "begin": lambda c: c.begin(),
    "select_db": lambda c: c.select_db("test"),
    "autocommit": lambda c: c.autocommit(True),
}


def replies_crossed(conn: Any) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Parent and a forked child both ask ``SELECT <own tag>, i`` on ``conn`` for half a second;
    (the parent's count, the child's)."""
    from _gate import Gate
    from postfork.testing import fork_child

    gate = Gate()  # both start asking together: a child slow to start still overlaps the parent

    def child() -> Dict[str, Any]:
        gate.wait()
        return crossed_replies(conn, 2, 0.5)

    try:
        started = fork_child(child)
        gate.open(1)
        mine = crossed_replies(conn, 1, 0.5)
        return mine, started.result(timeout=30)
    finally:
        gate.close()


def assert_children_kept_the_parents_session(driver: Any, kwargs: Dict[str, Any], observer: Any,
                                             calls: str, retired: str) -> None:
    """``children_keep_the_parents_session``, and what must hold of it: every child was refused
    the inherited connection (``retired``, naming ``calls``) and kept a session of its own; the
    parent's sessions are the same ones afterwards and received nothing from the children."""
    seen = children_keep_the_parents_session(driver, kwargs, observer)
    children = seen["children"]
    assert len(children) == CHILDREN
    for child in children:
        assert child["error"] == retired
        assert calls in child["message"] and "retired" in child["message"]
        assert child["again"] == child["mine"]  # one session per child, kept
        assert child["other_number"]  # the retired descriptor number stayed taken
    own = {child["mine"] for child in children}
    assert len(own) == CHILDREN  # each child its own session ...
    assert not own & {seen["parent"], seen["parent_own"]}  # ... none of the parent's
    assert seen["after"] == seen["parent"] and seen["own_after"] == seen["parent_own"]
    assert seen["alive"]
    base, after = seen["questions"]
    assert after == base  # only the parent's own SHOW reached its session


def assert_engine_children_kept_the_parents_session(url: str, driver: str, calls: str,
                                                    retired: str) -> None:
    """``engine_children_keep_the_parents_session``, and what must hold of it."""
    seen = engine_children_keep_the_parents_session(url, driver)
    children = seen["children"]
    for child in children:
        assert child["error"] == retired, child  # the dropped idle connection was retired
        assert calls in child["message"]
        assert child["again"] == child["mine"]
        # and kept referenced by the engine's adapter: no finalizer of it runs in the child
        # (mysqlclient's deallocator would send COM_QUIT), not even into the dead socket
        assert not child["collected"]
    own = {child["mine"] for child in children}
    assert len(own) == CHILDREN and seen["parent"] not in own
    assert seen["after"] == seen["parent"]
    base, after = seen["questions"]
    assert after == base


def assert_guard_names_an_unmanaged_connection_and_its_line(driver: Any,
                                                            kwargs: Dict[str, Any]) -> None:
    """With the guard warning, three connections built here: the child's reset names the
    unmanaged one, at its line (here), and its fix; not the registered one, not the local one."""
    import postfork
    from _guard_findings import quietly_in_a_child, reset_report

    postfork.guard("warn")
    unmanaged = driver.connect(**kwargs)
    line = sys._getframe().f_lineno - 1
    managed = postfork.register(driver.connect(**kwargs))
    managed_line = sys._getframe().f_lineno - 1
    local = postfork.local(lambda: driver.connect(**kwargs))
    local_line = sys._getframe().f_lineno - 1
    for conn in (unmanaged, managed, local):
        connection_id(conn)
    here = os.path.relpath(__file__)

    def in_child() -> List[Any]:
        return [(f.kind, f.subject, f.created_at, str(f)) for f in reset_report().findings
                if f.created_at is not None and f.created_at.startswith(here + ":")]

    try:
        findings = quietly_in_a_child(in_child)
    finally:
        postfork.unregister(managed)
    name = driver.__name__
    assert [(kind, subject, site) for kind, subject, site, _ in findings] == [
        ("client", f"{name}.Connection", f"{here}:{line}")], findings
    assert f"{name}.connect(...)" in findings[0][3]  # the fix names what to build per process
    assert f"{here}:{managed_line}" not in str(findings) and f"{here}:{local_line}" not in str(findings)
    for conn in (unmanaged, managed, local):
        conn.close()
