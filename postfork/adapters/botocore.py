"""botocore / boto3: a client (or a boto3 resource) gets connections of its own in the child, and
the credential-refresh lock is renewed.

What a child inherits (botocore 1.3x, read from ``botocore/endpoint.py``, ``httpsession.py``,
``credentials.py``, ``tokens.py``, ``signers.py``) and what the reset does about it:

- ``client._endpoint.http_session``: a ``URLLib3Session`` whose urllib3 ``PoolManager`` (and one
  ``ProxyManager`` per proxy) keeps the master's keep-alive connections. Shared, a worker's
  request goes down the master's connection and two processes read each other's responses
  (measured: workers hung waiting for a response another process had read, and S3 answered a
  worker's GetObject with another key's body, caught only by the checksum: botocore#1246). Each
  manager is handed to the urllib3 family's adapter through the family table (see
  :mod:`postfork.adapters._http_pools`): its idle connections are closed in this process only
  (detach + close: no ``shutdown()``, no TLS ``close_notify``) and its pools emptied; urllib3
  connects again on the first request.
- ``client._endpoint._lock``: a lock; a master thread may hold it at fork. Renewed.
- The credentials (``client._request_signer._credentials``, shared with the session that built
  the client): a ``RefreshableCredentials`` refreshes under ``_refresh_lock``. A master thread
  refreshing at fork (running a ``credential_process``, calling STS or the instance metadata
  service) holds it forever in the child: the worker's first request past the mandatory
  refresh time waits for ever (measured). The lock is renewed (never acquired), as is an SSO
  token provider's (``_auth_token``). The credentials themselves are kept: they are valid in
  the worker too, and refreshing is the worker's own I/O when it comes.

Nothing is sent: no request, no goodbye, no refresh. A ``boto3`` resource is reset through its
``meta.client``; a ``boto3.Session`` (or a botocore ``Session``) renews the refresh locks of
the credentials it caches, which the clients it builds in the worker share.
"""

from __future__ import annotations

from typing import Any, Iterable, List

from .._contract import Adapter
from .._locks import renew
from ._http_pools import reset_http

__all__ = ["reset_client", "reset_resource", "reset_session"]


def _renew_credentials(holder: Any) -> None:
    """The refresh locks of the credentials and bearer token ``holder`` keeps (a request
    signer or a botocore session)."""
    for name in ("_credentials", "_auth_token"):
        value = getattr(holder, name, None)
        if value is not None:
            renew(value, "_refresh_lock")


def _http_managers(client: Any) -> List[Any]:
    session = client._endpoint.http_session
    managers = [getattr(session, "_manager", None)]
    managers += list(getattr(session, "_proxy_managers", {}).values())
    return [m for m in managers if m is not None]


def reset_client(client: Any) -> None:
    """A botocore client (``boto3.client(...)``): no byte sent; it connects on its next call."""
    endpoint = client._endpoint
    renew(endpoint, "_lock")
    session = endpoint.http_session
    if not hasattr(session, "_manager"):  # not botocore's URLLib3Session: let the table decide
        reset_http(session)
    for manager in _http_managers(client):
        reset_http(manager)
    _renew_credentials(client._request_signer)


def manages_client(client: Any) -> Iterable[Any]:
    """For the guard: the connection managers a client's reset covers (a urllib3
    ``PoolManager`` the urllib3 family tracks is this client's, not a finding of its own)."""
    return _http_managers(client)


def reset_resource(resource: Any) -> None:
    """A boto3 resource (``boto3.resource("s3")``, ``s3.Bucket(...)``): its client."""
    reset_client(resource.meta.client)


def manages_resource(resource: Any) -> Iterable[Any]:
    client = resource.meta.client
    return [client, *manages_client(client)]


def reset_session(session: Any) -> None:
    """A ``boto3.Session`` or a botocore ``Session``: the refresh locks of its credentials."""
    _renew_credentials(getattr(session, "_session", session))


def _close_resource(resource: Any) -> None:
    resource.meta.client.close()


def _close_nothing(session: Any) -> None:
    """A session has no connection of its own (its clients are closed on their own)."""


client = Adapter(reset_client, manages=manages_client)
resource = Adapter(reset_resource, close=_close_resource, manages=manages_resource)
session = Adapter(reset_session, close=_close_nothing)
