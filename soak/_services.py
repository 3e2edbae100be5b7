"""A Redis server and a PostgreSQL server of the soak's own: a free 127.0.0.1 port, a temporary
data directory, started, stopped and restarted (same port, same data) by the soak itself.

PostgreSQL's ``initdb`` and ``postgres`` refuse to run as root: as root they run as the
``postgres`` user (the PostgreSQL packages create it) in a directory that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
        return True
    except OSError:
        return False


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class _Restartable:
    """A server the soak stops and starts again on the same port and data; ``outages`` holds
    each restart's window (monotonic seconds from stopped to accepting again), so that the
    soak can show requests were in flight during it."""

    restarts: int
    outages: List[Tuple[float, float]]

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self, down: float = 1.0) -> None:
        self.stop()
        stopped = time.monotonic()
        time.sleep(down)
        self.start()
        self.outages.append((stopped, time.monotonic()))
        self.restarts += 1


class RedisServer(_Restartable):
    """``redis-server`` on a free port, no persistence."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True)
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self.restarts = 0
        self.outages = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        log = open(self.dir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        _wait(lambda: port_open(self.port), 20, f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.proc = None



def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))  # Debian keeps them off PATH
    binary = found[-1] if found else shutil.which(name)
    if binary is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed")
    return binary


class PostgresServer(_Restartable):
    """``postgres`` on a free port with a data directory made by ``initdb`` (trust auth, no
    fsync: the data is thrown away)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = workdir("postfork-soak-pg-")  # not the caller's: it may be private to root
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self.restarts = 0
        self.outages = []
        self._user: Dict[str, Any] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            self._user = {"user": entry.pw_uid, "group": entry.pw_gid}
        self._chown(self.dir)
        self._run([_pg_bin("initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres",
                   "--no-sync", "-E", "UTF8"])

    def _chown(self, path: Path) -> None:
        if self._user:
            os.chown(path, self._user["user"], self._user["group"])

    def _run(self, argv: List[str]) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, **self._user)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout}{done.stderr}")

    def dsn(self, application_name: str) -> str:
        return (f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
                f"?application_name={application_name}")

    def start(self) -> None:
        log = open(self.dir / "postgres.log", "ab")
        self.proc = subprocess.Popen(
            [_pg_bin("postgres"), "-D", str(self.dir / "data"), "-p", str(self.port),
             "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
             "-c", "max_connections=100"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, **self._user)
        log.close()
        _wait(self._ready, 30, f"postgres on port {self.port}")

    def _ready(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.dsn("postfork_soak_probe"), connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        # SIGINT: "fast" shutdown, as an operator's restart does it: every client connection is
        # terminated by the server.
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2)
            self.proc.wait(30)
        self.proc = None


    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def workdir(prefix: str = "postfork-soak-") -> Path:
    """A temporary directory the ``postgres`` user can enter (PostgreSQL runs as it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path
