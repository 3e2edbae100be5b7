"""The shape of the code: postfork's modules import each other in no circle, the core knows no
server and the integrations no client library, and ``import postfork`` imports neither.

``pytest tests/test_layout.py`` is the check (``make test`` and ``.ci/run`` include it). Imports
inside functions and under ``if TYPE_CHECKING`` count: a late import hides a cycle, it does not
remove it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = ("redis", "pymongo", "bson", "sqlalchemy", "psycopg", "psycopg_pool", "psycopg2",
           "pymysql", "MySQLdb", "urllib3", "requests", "httpx", "httpcore", "aiohttp", "botocore",
           "boto3", "elasticsearch", "elastic_transport", "grpc", "opentelemetry", "sentry_sdk")
SERVERS = ("gunicorn", "uwsgi", "uwsgidecorators", "celery", "billiard", "kombu", "rq", "dramatiq",
           "huey", "uvicorn", "uvicorn_worker")


def _modules(package: str, folder: Path) -> Dict[str, Path]:
    mods = {}
    for f in folder.rglob("*.py"):
        parts = [package] + list(f.relative_to(folder).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _imports(name: str, path: Path) -> Set[str]:
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def _graph() -> Dict[str, Set[str]]:
    mods = _modules("postfork", ROOT / "postfork")
    return {m: {n for n in _imports(m, f) if n in mods and n not in (m, "postfork")}
            for m, f in mods.items()}


def test_no_import_cycle() -> None:
    graph = _graph()
    cycles: List[str] = []
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(v: str) -> None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                cycles.append(" -> ".join(stack[stack.index(w):] + [w]))
            elif w not in state:
                visit(w)
        stack.pop()
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            visit(v)
    assert cycles == []


def test_the_core_knows_no_server_and_the_integrations_no_client() -> None:
    core = _modules("postfork", ROOT / "postfork")
    for name, path in core.items():
        if name == "postfork.testing":
            continue
        roots = {i.split(".")[0] for i in _imports(name, path)}
        assert not roots & set(SERVERS), (name, roots & set(SERVERS))
    for name, path in _modules("postfork.integrations", ROOT / "integrations").items():
        roots = {i.split(".")[0] for i in _imports(name, path)}
        assert not roots & set(CLIENTS), (name, roots & set(CLIENTS))


def test_import_postfork_imports_no_client_library_or_server() -> None:
    code = ("import sys, postfork; print(' '.join(sorted(m for m in sys.modules "
            f"if m.split('.')[0] in {CLIENTS + SERVERS!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout + done.stderr
