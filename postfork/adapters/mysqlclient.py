"""mysqlclient (``MySQLdb``): a bare ``Connection`` is retired in the child.

What the child inherits (mysqlclient 2.x, ``MySQLdb/_mysql.c``): ``MySQLdb.connections.
Connection`` is a Python subclass of the C type ``_mysql.connection``, which embeds libmysqlclient's
(here MariaDB Connector/C's) ``MYSQL`` handle on the parent's socket. Both ``close()`` and the
C deallocator call ``mysql_close()``, which sends COM_QUIT: in a child, closing the inherited
connection *or merely letting it be garbage-collected* (a module global cleared at exit, the
old pool SQLAlchemy's ``dispose(close=False)`` drops) ends the parent's session (measured:
``OperationalError (2013, 'Lost connection to server during query')`` in the parent). Under TLS
``mysql_close()`` also sends a TLS close_notify. Used from both processes, the two read each
other's replies.

The reset sends nothing: the descriptor the ``MYSQL`` handle holds (``conn.fileno()``) is
retired (a dead socket ``dup2``-ed onto the same number), so whatever the C library writes on
it later, the COM_QUIT of ``close()`` or of the deallocator included, goes nowhere, and the
number stays taken until ``mysql_close()`` frees it. Every method that talks to the server
raises :class:`postfork.RetiredError`, also a ``MySQLdb.OperationalError``, naming
``postfork.local`` (instance attributes: the Python subclass has a ``__dict__``). A connection
cannot be reconnected in place without a new server session (``ping(True)`` is deprecated
auto-reconnect), so ``ping`` is retired too.

What the C type does not allow: its lock is a C ``PyThread_type_lock`` inside the object, taken
without waiting by every method (``fileno()`` and ``close()`` included), and postfork cannot
replace it. A parent thread inside a query at fork leaves it held in the child, where every C
method then raises ``ProgrammingError`` ("already in use from another thread") while the
deallocator, which takes no lock, would still send COM_QUIT. There the descriptor is read from
the ``MYSQL`` handle itself (``net.fd``, the socket both client libraries keep at the same
place), checked to be a socket, and retired all the same; ``close()`` then does nothing (the
deallocator's ``mysql_close()`` writes into the dead socket).
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any, Optional

from .._contract import Adapter
from ._retire import retire_fd, retire_methods

if TYPE_CHECKING:
    from MySQLdb.connections import Connection

__all__ = ["reset_connection", "retire_connection"]

# What an application calls on a connection (MySQLdb's Python methods and the C type's), each
# raising postfork.RetiredError on a retired one. close() and the pure accessors stay
# mysqlclient's own; a cursor's execute() goes through query().
_ENTRY_POINTS = ("query", "cursor", "ping", "commit", "rollback", "begin", "select_db",
                 "autocommit", "show_warnings", "kill", "next_result", "store_result",
                 "use_result", "read_query_result", "send_query", "discard_result",
                 "set_character_set", "set_sql_mode", "set_server_option", "change_user",
                 "stat", "shutdown", "dump_debug_info")


def _fd_in_handle(conn: Any) -> Optional[int]:
    """The socket of ``conn``'s ``MYSQL`` handle, read without the connection's lock.

    ``_mysql_ConnectionObject`` is ``{PyObject_HEAD; MYSQL connection; ...}`` and ``MYSQL``
    starts with ``NET net``, whose ``my_socket fd`` ("for Perl DBI/dbd") follows five pointers
    in both MariaDB Connector/C and MySQL's libmysqlclient. This is where ``fileno()`` reads
    it. Returns None unless that number is an open socket in this process."""
    import ctypes

    offset = object.__basicsize__ + 5 * ctypes.sizeof(ctypes.c_void_p)
    fd = ctypes.c_int.from_address(id(conn) + offset).value
    try:
        is_socket = fd >= 0 and stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return None
    return fd if is_socket else None


def retire_connection(conn: "Connection") -> bool:
    """Retire the socket of ``conn`` in this process, sending nothing; False when there was
    none (the connection was closed: ``mysql_close()`` freed its socket already)."""
    import MySQLdb

    if conn.closed:  # read without the lock
        return False
    try:
        fd: Optional[int] = conn.fileno()
    except MySQLdb.ProgrammingError:  # a parent thread held the connection's lock at fork
        fd = _fd_in_handle(conn)
        if fd is None:
            raise
        conn.close = _closed_by_the_deallocator
    if fd is None or fd < 0:
        return False
    retire_fd(fd)
    return True


def _closed_by_the_deallocator(*args: Any, **kwargs: Any) -> None:
    """``close()`` of a retired connection whose lock a parent thread held: the C method would
    raise; the deallocator's ``mysql_close()`` frees the handle (into the dead socket)."""


def reset_connection(conn: "Connection") -> None:
    """Retire an inherited ``MySQLdb`` connection: using it raises ``postfork.RetiredError``
    (a ``MySQLdb.OperationalError`` too); closing or collecting it sends nothing."""
    import MySQLdb

    retire_connection(conn)
    retire_methods(conn, _ENTRY_POINTS, "MySQLdb.connect(...)", MySQLdb.OperationalError)


connection = Adapter(reset_connection, retires=True)
