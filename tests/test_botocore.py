"""botocore / boto3 against moto's server mode (S3 and SQS) on 127.0.0.1, forking for real.

Evidence from the server's side: the moto peer (``tests/_moto_peer.py``) records, per client
connection (its port as the server sees it), every request it received, the bytes, and whether
the client closed it. Fake credentials, never an AWS endpoint.

Unmanaged, a worker's requests go down the master's keep-alive connection (deterministic for a
worker that runs alone), and workers running together read each other's responses: measured
with 4 workers each reading its own S3 object 50 times over an inherited client, 2 hung (20 s)
waiting for a response another process had read and one got another object's body, caught only
by botocore's checksum (``FlexibleChecksumError``) — botocore#1246. A master thread refreshing
credentials at fork leaves the refresh lock held for ever in the worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

import postfork
from _locks import held_by_a_parent_thread
from postfork.testing import ChildError, fork_child, run_in_child

boto3 = pytest.importorskip("boto3")
from botocore.config import Config  # noqa: E402

pytestmark = pytest.mark.usefixtures("clean_registry")

FAKE = dict(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
CONFIG = Config(retries={"max_attempts": 1}, read_timeout=5, connect_timeout=5)


def s3_client(moto: Any, **kwargs: Any) -> Any:
    return boto3.client("s3", endpoint_url=moto.url, config=CONFIG, **{**FAKE, **kwargs})


@pytest.fixture
def bucket(moto_server: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A bucket of the test's own."""
    name = f"postfork-{request.node.name.lower().replace('_', '-')[:40]}-{os.getpid()}"
    admin = s3_client(moto_server)
    admin.create_bucket(Bucket=name)
    yield name
    for obj in admin.list_objects_v2(Bucket=name).get("Contents", []):
        admin.delete_object(Bucket=name, Key=obj["Key"])
    admin.delete_bucket(Bucket=name)
    admin.close()


def connection_of(moto: Any, path: str) -> Dict[str, Any]:
    """The server's record of the one connection that carried ``path``."""
    found = [c for c in moto.connections() if path in c["requests"]]
    assert len(found) == 1, found
    return found[0]


# -- the hazard ------------------------------------------------------------------------------

def test_unmanaged_worker_sends_on_the_masters_connection(moto_server: Any, bucket: str) -> None:
    s3 = s3_client(moto_server)
    s3.put_object(Bucket=bucket, Key="master", Body=b"m")
    master = connection_of(moto_server, f"/{bucket}/master")

    def worker() -> bytes:
        s3.put_object(Bucket=bucket, Key=f"worker-{os.getpid()}", Body=b"w")
        return s3.get_object(Bucket=bucket, Key=f"worker-{os.getpid()}")["Body"].read()  # type: ignore[no-any-return]

    child = fork_child(worker)  # nothing registered: postfork's hook has nothing to reset
    assert child.result(30) == b"w"
    shared = moto_server.connection(master["port"])
    # The worker's requests arrived on the master's connection, as the server sees it.
    assert f"/{bucket}/worker-{child.pid}" in shared["requests"]
    s3.close()


# -- the fix ---------------------------------------------------------------------------------

def test_registered_client_and_resource_each_worker_its_own_connections(
        moto_server: Any, bucket: str) -> None:
    s3 = postfork.register(s3_client(moto_server))
    sqs = postfork.register(boto3.resource("sqs", endpoint_url=moto_server.url, config=CONFIG, **FAKE))
    queue = sqs.create_queue(QueueName=f"{bucket}-q")
    s3.put_object(Bucket=bucket, Key="master-before", Body=b"m")
    master = connection_of(moto_server, f"/{bucket}/master-before")
    pools = s3._endpoint.http_session._manager.pools

    def worker() -> Dict[str, Any]:
        pid = os.getpid()
        for n in range(3):
            s3.put_object(Bucket=bucket, Key=f"w{pid}-{n}", Body=f"{pid}-{n}".encode())
        bodies = [s3.get_object(Bucket=bucket, Key=f"w{pid}-{n}")["Body"].read().decode()
                  for n in range(3)]
        queue.send_message(MessageBody=str(pid))
        return {"pid": pid, "bodies": bodies}

    with held_by_a_parent_thread(pools.lock, s3._endpoint._lock):  # held at every fork
        before = moto_server.connection(master["port"])
        children = [fork_child(worker) for _ in range(4)]
        results = [c.result(60) for c in children]
    assert all(r["bodies"] == [f"{r['pid']}-{n}" for n in range(3)] for r in results)

    records = moto_server.connections()
    for r in results:
        mine = [c for c in records if any(f"/w{r['pid']}-" in p for p in c["requests"])]
        assert mine and all(all(f"/w{r['pid']}-" in p for p in c["requests"]) for c in mine), mine
        assert master["port"] not in [c["port"] for c in mine]
    # The master's connection saw nothing from a worker, was not closed, and still answers.
    after = moto_server.connection(master["port"])
    assert after == before and not after["closed_by_client"]
    s3.put_object(Bucket=bucket, Key="master-after", Body=b"m")
    assert connection_of(moto_server, f"/{bucket}/master-after")["port"] == master["port"]
    # Every worker's message arrived, once.
    got: List[str] = []
    for _ in range(10):
        got += [m.body for m in queue.receive_messages(MaxNumberOfMessages=10, WaitTimeSeconds=0)]
        if len(got) >= 4:
            break
    assert sorted(got) == sorted(str(r["pid"]) for r in results)
    queue.delete()


def test_reset_sends_nothing_and_opens_nothing(moto_server: Any, bucket: str) -> None:
    s3 = postfork.register(s3_client(moto_server))
    s3.put_object(Bucket=bucket, Key="one", Body=b"1")
    master = connection_of(moto_server, f"/{bucket}/one")
    count = len(moto_server.connections())

    def worker() -> int:
        return len(moto_server.connections())  # (the control requests are not counted)

    assert run_in_child(worker) == count  # the reset opened no connection
    assert moto_server.connection(master["port"]) == master  # and sent no byte on the master's
    s3.close()


# -- credentials: the refresh lock -----------------------------------------------------------

CREDENTIAL_PROCESS = """\
import datetime, json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
slow = os.path.join(here, "slow")
if os.path.exists(slow):  # the master's refresh: slow, and a worker is forked meanwhile
    os.unlink(slow)
    open(os.path.join(here, "refreshing"), "w").close()
    time.sleep(4)
expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)
print(json.dumps({"Version": 1, "AccessKeyId": f"AKIDPOSTFORK{os.getpid()}",
                  "SecretAccessKey": "testing", "Expiration": expires.isoformat()}))
"""


@pytest.fixture
def refreshing_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A boto3 Session whose credentials come from a credential_process and expire within
    botocore's mandatory refresh window: every use refreshes them under ``_refresh_lock``."""
    script = tmp_path / "creds.py"
    script.write_text(CREDENTIAL_PROCESS)
    config = tmp_path / "config"
    config.write_text(f"[profile postfork]\ncredential_process = {sys.executable} {script}\n"
                      f"region = us-east-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return boto3.Session(profile_name="postfork")


def _refreshing_in_a_master_thread(session: Any, folder: Path) -> threading.Thread:
    """A master thread refreshing the credentials (the credential_process takes 4 s): returns
    once it is inside the refresh, holding the refresh lock."""
    (folder / "slow").touch()
    thread = threading.Thread(target=session.get_credentials().get_frozen_credentials, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not (folder / "refreshing").exists():
        assert time.monotonic() < deadline, "the credential process did not start"
        time.sleep(0.01)
    return thread


@pytest.mark.parametrize("managed", [False, True], ids=["unmanaged", "registered"])
def test_credential_refresh_lock_held_at_fork(managed: bool, refreshing_session: Any,
                                             moto_server: Any, bucket: str, tmp_path: Path) -> None:
    s3 = refreshing_session.client("s3", endpoint_url=moto_server.url, config=CONFIG)
    s3.head_bucket(Bucket=bucket)
    masters_key = s3._request_signer._credentials.access_key
    if managed:
        postfork.register(s3)
    thread = _refreshing_in_a_master_thread(refreshing_session, tmp_path)

    def worker() -> str:
        s3.put_object(Bucket=bucket, Key=f"creds-{os.getpid()}", Body=b"c")  # refreshes first
        return s3._request_signer._credentials.access_key  # type: ignore[no-any-return]

    child = fork_child(worker)
    if managed:
        key = child.result(30)
        # refreshed by the worker itself (its own credential process), at once
        assert key.startswith("AKIDPOSTFORK") and key != masters_key
    else:
        with pytest.raises(ChildError, match="did not finish"):
            child.result(6)  # waits for a lock whose holder does not exist in the worker
    thread.join(10)
    s3.head_bucket(Bucket=bucket)  # the master goes on
    s3.close()


# -- the guard -------------------------------------------------------------------------------

def test_guard_names_an_unmanaged_client_and_resource_with_their_lines(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import os, boto3, postfork
        postfork.guard("warn")
        kw = dict(aws_access_key_id="x", aws_secret_access_key="y", region_name="us-east-1",
                  endpoint_url="http://127.0.0.1:9")
        s3 = boto3.client("s3", **kw)
        sqs = boto3.resource("sqs", **kw)
        managed = postfork.register(boto3.client("s3", **kw))
        managed_resource = postfork.register(boto3.resource("sqs", **kw))
        pid = os.fork()
        if pid == 0:
            findings = postfork.check()
            print(sorted((f.kind, f.subject, f.created_at) for f in findings if f.kind == "client"))
            os._exit(0)
        os.waitpid(pid, 0)
    """)
    script = tmp_path / "app.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    expected = [("client", "botocore.S3", "app.py:6"), ("client", "botocore.SQS", "app.py:7")]
    assert done.stdout.strip() == str(expected), done.stderr
