"""PyMySQL: a bare ``Connection`` is retired in the child.

What the child inherits (PyMySQL 1.x, ``pymysql/connections.py``): a ``Connection`` holds a
Python socket ``_sock`` (an ``ssl.SSLSocket`` under TLS) and a buffered reader ``_rfile`` over
it, both on the parent's connection. ``close()`` writes COM_QUIT on ``_sock`` before closing it:
called in a child it ends the parent's session (measured: the parent's next query fails with
``OperationalError (2013, 'Lost connection to MySQL server during query')``, sqlalchemy#7815).
``__del__`` is ``_force_close()``, which only closes this process's copy, sends nothing. Used
from both processes, the two read each other's replies: a query answered with the other
process's row, silently.

The reset sends nothing: the descriptor under ``_sock`` is retired (a dead socket ``dup2``-ed
onto the same number: reads see EOF, writes fail, the number stays taken while PyMySQL holds
it), and every method that talks to the server raises :class:`postfork.RetiredError`, also a
``pymysql.err.OperationalError``, naming ``postfork.local``. ``close()`` stays PyMySQL's own
and is harmless: its COM_QUIT goes into the dead socket (PyMySQL swallows the ``EPIPE``) and it
then closes that socket. The buffered reader over the socket is taken from PyMySQL without
being closed: a parent thread waiting for a reply at fork holds its lock forever in the child,
where closing it would hang (:func:`_let_go_of_the_reader`).

PyMySQL could reconnect in place (``connect()``, ``ping(reconnect=True)``), but that would be a
new server session behind the application's back: the parent's open transaction, session
variables, temporary tables, ``select_db()`` and ``LAST_INSERT_ID()`` would be gone while the
code goes on as if in the same session. So a retired connection stays unusable, ``ping(True)``
and ``connect()`` included: build one per process with
``postfork.local(lambda: pymysql.connect(...))``. PyMySQL takes no lock of its own: a parent
thread inside a query at fork leaves only the reader's lock held, which the reset never takes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._contract import Adapter
from ._retire import retire_fd, retire_methods

if TYPE_CHECKING:
    from pymysql.connections import Connection

__all__ = ["reset_connection", "retire_connection"]

# What an application calls on a connection, and the two internal funnels every command and
# every result read goes through (so that a cursor, autocommit() or an unbuffered result the
# parent left half read raise too). close() and the pure accessors stay PyMySQL's own.
_ENTRY_POINTS = ("query", "cursor", "ping", "commit", "rollback", "begin", "select_db",
                 "autocommit", "show_warnings", "kill", "next_result", "set_charset",
                 "set_character_set", "connect", "_execute_command", "_read_packet")


def retire_connection(conn: "Connection") -> bool:
    """Retire the socket under ``conn`` in this process, sending nothing; False when PyMySQL
    held no socket (the connection was closed)."""
    sock = conn._sock
    if sock is None:
        return False
    try:
        fd = sock.fileno()
    except OSError:
        return False
    if fd < 0:
        return False
    retire_fd(fd)
    return True


def _let_go_of_the_reader(conn: "Connection") -> None:
    """Take the buffered reader ``_rfile`` away from PyMySQL without touching its lock.

    A parent thread waiting for a reply at fork was inside ``_rfile.read()``, holding the
    ``BufferedReader``'s lock: in the child that lock is never released, and ``close()`` on
    the reader (PyMySQL's ``_force_close``, from ``close()`` or ``__del__``) waits for it
    forever (measured: the child hangs). Its raw ``SocketIO`` is closed instead (no lock there),
    so the reader counts as closed and its finalizer does not call ``close()`` either; PyMySQL
    is left with no reader, and the retired methods make sure it never needs one."""
    rfile = conn._rfile
    if rfile is None:
        return
    conn._rfile = None
    raw = getattr(rfile, "raw", None)
    if raw is not None:
        raw.close()


def reset_connection(conn: "Connection") -> None:
    """Retire an inherited PyMySQL ``Connection``: using it raises ``postfork.RetiredError``
    (a ``pymysql.err.OperationalError`` too); closing or collecting it sends nothing."""
    import pymysql

    retire_connection(conn)
    _let_go_of_the_reader(conn)
    result = conn._result
    if result is not None:
        # An unbuffered result the parent was streaming: its __del__ would read the rest of it.
        result.unbuffered_active = False
    retire_methods(conn, _ENTRY_POINTS, "pymysql.connect(...)", pymysql.err.OperationalError)


connection = Adapter(reset_connection, retires=True)
