"""The stream registry: which node originates which stream, and which nodes are alive.

A node is one server process (a worker of ``--workers N``, or a whole box): it has an id and the
base URL of its cluster listener, which other nodes pull from. Every stream a node originates (an
anchor publishes it there) is an entry ``app/name`` -> holder, kept alive by the node's heartbeat
with a TTL, so that a node that dies without a word loses its entries within ``ttl`` seconds.

Two implementations keep the same contract (tests/test_cluster_registry.py runs both):
``SqliteRegistry``, a file in the data dir shared by the processes of one box, and
``RedisRegistry``, shared by the nodes of a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

LIVE = "live"  # the holder has its publisher connected
GRACE = "grace"  # the holder waits for its publisher to come back


class RegistryUnavailable(Exception):
    """The registry cannot be reached; the message says which server and why."""


@dataclass(frozen=True, slots=True)
class Holder:
    """Who originates a stream."""

    node: str  # node id
    url: str  # base URL of the node's cluster listener, e.g. http://10.0.0.5:41234
    state: str = LIVE  # LIVE or GRACE
    since: float = 0.0  # time.time() of the claim


@dataclass(frozen=True, slots=True)
class Node:
    """A live node: its cluster listener and what it last reported."""

    node: str
    url: str
    info: dict[str, Any] = field(default_factory=dict)


class Registry(Protocol):
    ttl: float  # seconds an entry or a node lives without a heartbeat

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def claim(self, key: str, node: str, url: str, takeover: bool) -> Holder | None:
        """Make ``node`` the holder of ``key``, in state LIVE. It may when nobody holds ``key``, the
        entry expired, ``node`` holds it already, the holder is in GRACE, or ``takeover``. Returns
        None when it did, else the holder that keeps it."""
        ...

    async def set_state(self, key: str, node: str, state: str) -> bool:
        """Set the state of ``node``'s entry ``key`` (and refresh its TTL); False if ``node`` does not hold it."""
        ...

    async def release(self, key: str, node: str) -> None:
        """Drop entry ``key`` if ``node`` holds it."""
        ...

    async def lookup(self, key: str) -> Holder | None:
        """The holder of ``key``, unless its entry expired."""
        ...

    async def heartbeat(self, node: str, url: str, entries: dict[str, str], info: dict[str, Any]) -> list[str]:
        """``node`` is alive (with ``info``) and still holds ``entries`` (key -> state): their TTLs
        start again. An entry that expired meanwhile (the registry was unreachable) is written again
        unless another node holds it now. Returns the keys of ``entries`` that another node holds."""
        ...

    async def nodes(self) -> list[Node]:
        """The nodes whose heartbeat is younger than ``ttl``."""
        ...

    async def forget_node(self, node: str) -> None:
        """``node`` is known dead (its supervisor saw it exit): drop it and its entries now."""
        ...

    async def shared_secret(self, proposed: str) -> str:
        """The cluster's node credential: the first node's ``proposed`` one, kept for every node after
        (whoever can write the registry is a node already)."""
        ...
