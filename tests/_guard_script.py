"""A small application run as a script of its own, then forked, for the tests that the guard
names an unmanaged client at its line (tests/test_elasticsearch.py, test_http_client.py,
test_sentry.py): in a script, the line is the application's and the process is fresh."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

# Appended to the application: a child forked after it prints its client findings.
_FORK_AND_CHECK = """
pid = os.fork()
if pid == 0:
    findings = postfork.check()
    print([(f.kind, f.subject, f.created_at) for f in findings if f.kind == "client"])
    os._exit(0)
os.waitpid(pid, 0)
"""


def client_findings(tmp_path: Path, app: str) -> "subprocess.CompletedProcess[str]":
    """Run ``app`` (indented Python source that imports ``os`` and ``postfork`` and turns the
    guard on; its lines keep their numbers) as ``tmp_path/app.py``, then fork: the child's
    stdout is ``[(kind, subject, created_at), ...]`` of the guard's client findings."""
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(app).rstrip() + "\n" + _FORK_AND_CHECK)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
