"""The cluster's part in a server: on when the server is one of several (``--workers N``, ``--redis``,
or a chained edge with ``[cluster] origin``), off for one process on one box.

Which registry: Redis with ``--redis`` (nodes on many boxes), else a SQLite file in the data dir
(the workers of one box). The node credential: ``[cluster] secret`` if set, else the supervisor's
(``MINILIVE_NODE_SECRET``), else one shared through the registry, so a cluster needs no setup.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import socket
from typing import TYPE_CHECKING, Any

from api import supervisor
from relay.cluster.hls import HlsGateway
from relay.cluster.listener import ClusterListener
from relay.cluster.node import Cluster
from relay.cluster.registry import Registry, RegistryUnavailable
from relay.http.hls import HlsPlayback
from relay.hub import Authorizer, Hub

if TYPE_CHECKING:
    from api.config import Settings

log = logging.getLogger("minilive.cluster")


def worker() -> tuple[int, int]:
    """(this process's index, how many workers) under a supervisor; (0, 1) for a lone server."""
    try:
        return int(os.environ.get(supervisor.ENV_INDEX, "0")), int(os.environ.get(supervisor.ENV_WORKERS, "1"))
    except ValueError:
        return 0, 1


def enabled(settings: Settings) -> bool:
    return bool(settings.redis) or worker()[1] > 1 or bool(settings.cluster.origin)


_servers = itertools.count()


def node_id(pid: int | None = None) -> str:
    """A node's id: its host and process (the supervisor names a dead worker's node by its pid); a
    second server in one process (tests) gets a suffix."""
    if pid is not None:
        return f"{socket.gethostname()}/{pid}"
    n = next(_servers)
    return f"{socket.gethostname()}/{os.getpid()}" + (f".{n}" if n else "")


def open_registry(settings: Settings) -> Registry:
    ttl = settings.cluster.ttl_seconds
    if settings.redis:
        from relay.cluster.redis_registry import RedisRegistry

        return RedisRegistry(settings.redis, ttl=ttl)
    from relay.cluster.sqlite_registry import SqliteRegistry

    return SqliteRegistry(settings.data_dir / "cluster.sqlite", ttl=ttl)


def forget_worker(settings: Settings) -> supervisor.WorkerExitHook:
    """The supervisor's hook: a worker that died leaves the registry at once, not a TTL later, so its
    streams may publish on another worker and its replays are finalized without delay."""

    async def forget(index: int, pid: int) -> None:
        registry = open_registry(settings)
        try:
            await registry.open()
            await registry.forget_node(node_id(pid))
        except RegistryUnavailable as exc:
            log.warning("worker %d (pid %d) stays in the registry until its entries expire: %s", index, pid, exc)
        finally:
            await registry.close()

    return forget


class ClusterPart:
    def __init__(self, settings: Settings, hub: Hub, hls: HlsPlayback, authorize_play: Authorizer) -> None:
        self.settings = settings
        self.registry = open_registry(settings)
        self.cluster = Cluster(hub, settings.cluster, self.registry, node_id(), secret="")
        self.gateway = HlsGateway(hls, self.cluster, authorize_play)
        self.listener = ClusterListener(self.cluster, hub, self.gateway, settings.play_wait_seconds)

    async def start(self) -> None:
        s = self.settings
        c = s.cluster
        await self.registry.open()
        secret = c.secret or os.environ.get(supervisor.ENV_NODE_SECRET)
        self.cluster.secret = secret or await self.registry.shared_secret(secrets.token_hex(16))
        port = c.port + worker()[0] if c.port else 0
        host = c.listen_host or (s.host if s.redis else "127.0.0.1")
        bound = await self.listener.start(host, port)
        advertise = c.advertise_host or (s.public_host if s.redis else "127.0.0.1")
        await self.cluster.start(f"http://{advertise}:{bound}")

    async def stop(self) -> None:
        await self.listener.stop()
        await self.cluster.stop()
        await self.gateway.close()

    def describe(self) -> dict[str, Any]:
        return {
            **self.cluster.describe(),
            **self.gateway.describe(),
            "pulls_running": len(self.cluster.pulls),
            "credentials_refused": self.listener.refused,
        }
