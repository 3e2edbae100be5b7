"""elasticsearch-py / elastic-transport: the child rebuilds the node pool, with nodes (and so HTTP
connection pools) of its own.

An ``Elasticsearch`` client holds a ``Transport`` (shared with every ``client.options(...)``
copy), which holds a ``NodePool`` of nodes, one per Elasticsearch node, each with its own HTTP
connection pool (``Urllib3HttpNode.pool``, a urllib3 ``HTTPConnectionPool``;
``RequestsHttpNode.session``, a requests ``Session``). Inherited, a worker's request goes down
the master's keep-alive connection and two processes read each other's responses
(elasticsearch-py#237).

The reset (elastic-transport 8 and 9, read from ``_node_pool.py``, ``_transport.py``,
``_node/_http_urllib3.py``, ``_node/_http_requests.py``):

- The node pool is rebuilt in place: each node of the master is replaced by a new one built
  from the same ``NodeConfig`` with the same node class (which opens no connection: nodes
  connect on their first request), all of them alive, as in a new client; the dead-node queue,
  the failure counts and the write lock are new (a master thread marking a node dead or
  sniffing at fork holds them forever in the child). Sniffed nodes stay in the pool.
- The master's nodes are dropped only after their HTTP pools are reset through the family
  table (the urllib3 / requests adapters, :mod:`postfork.adapters._http_pools`): their idle
  connections are closed in this process only (detach + close: no ``shutdown()``, no TLS
  ``close_notify``), so no finalizer can touch the master's connections. A node class postfork
  does not know is kept referenced instead, unused.
- The transport's sniffing lock is renewed: held by a master thread at fork, the worker would
  never sniff again.

Nothing is sent; the worker connects on its first request.
"""

from __future__ import annotations

from collections import defaultdict
from queue import PriorityQueue
from typing import Any, Iterable, List

from .._contract import Adapter
from .._locks import renew
from ._http_pools import reset_http

__all__ = ["reset_client", "reset_transport", "rebuild_node_pool"]

# Master nodes whose HTTP client postfork cannot reset: referenced for ever in this process, so
# that no finalizer closes (and says goodbye on) the master's connections.
_kept: List[Any] = []


def _retire_node(node: Any) -> None:
    pool = getattr(node, "pool", None)  # Urllib3HttpNode
    session = getattr(node, "session", None)  # RequestsHttpNode
    target = pool if pool is not None else session
    if target is None:
        _kept.append(node)
        return
    try:
        reset_http(target)
    except TypeError:  # no adapter for that HTTP client (httpx, aiohttp...): keep it unused
        _kept.append(node)


def rebuild_node_pool(pool: Any) -> None:
    """New nodes for every node config of ``pool`` (an elastic-transport ``NodePool``)."""
    renew(pool, "_all_nodes_write_lock")
    inherited = dict(pool._all_nodes)  # read without the lock: a master thread may hold it
    fresh = {config: pool._node_class(config) for config in inherited}
    pool._all_nodes = fresh
    pool._alive_nodes = dict(fresh)
    pool._dead_nodes = PriorityQueue()
    pool._dead_consecutive_failures = defaultdict(int)
    pool._all_nodes_len_1 = len(fresh) == 1
    for node in inherited.values():
        _retire_node(node)


def reset_transport(transport: Any) -> None:
    """An elastic-transport ``Transport``: its node pool rebuilt, its sniffing lock renewed."""
    renew(transport, "_sniffing_lock")
    rebuild_node_pool(transport.node_pool)


def reset_client(client: Any) -> None:
    """An ``Elasticsearch`` client (and every ``options()`` copy: they share its transport)."""
    reset_transport(client.transport)


def manages_client(client: Any) -> Iterable[Any]:
    """For the guard: the transport and the HTTP clients of its nodes."""
    transport = client.transport
    return [transport, *manages_transport(transport)]


def manages_transport(transport: Any) -> Iterable[Any]:
    out: List[Any] = []
    for node in transport.node_pool.all():
        out += [x for x in (getattr(node, "pool", None), getattr(node, "session", None)) if x is not None]
    return out


client = Adapter(reset_client, manages=manages_client)
transport = Adapter(reset_transport, manages=manages_transport)
