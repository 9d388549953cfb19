"""The cluster's part in a server: on when the server is one of several (``--workers N``, ``--redis``,
or a chained edge with ``[cluster] origin``), off for one process on one box.

Which registry: Redis with ``--redis`` (nodes on many boxes), else a SQLite file in the data dir
(the workers of one box). The node credential: ``[cluster] secret`` if set, else the supervisor's
(``MINILIVE_NODE_SECRET``), else one shared through the registry, so a cluster needs no setup.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from api import supervisor
from relay.cluster import credential
from relay.cluster.hls import HlsGateway
from relay.cluster.listener import ClusterListener
from relay.cluster.node import HOPS, Cluster
from relay.cluster.registry import Registry, RegistryUnavailable
from relay.http.cors import CORS
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


def address_towards(url: str) -> str:
    """This machine's address on the way to ``url``'s host (the Redis every node reaches): where the
    other nodes can reach this one too, in a container network as on a LAN, unless told otherwise
    (``[cluster] advertise_host``)."""
    parts = urlsplit(url)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((parts.hostname or "127.0.0.1", parts.port or 6379))  # no packet is sent
            return probe.getsockname()[0]
    except OSError:
        return socket.gethostname()


# What a forwarded WebRTC session request may carry, and which of its answer's headers go back.
MAX_FORWARDED_BODY = 64 * 1024
FORWARDED_HEADERS = ("Content-Type", "Allow", "ETag", "Location", "Link")


class SessionLocator:
    """signaling.sessions.Locator for a cluster: each WebRTC session is held in the registry (as
    ``webrtc/ID``) by its process, and a DELETE or PATCH that lands on another process goes there."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._tasks: set[asyncio.Task[Any]] = set()
        self._client: aiohttp.ClientSession | None = None

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def opened(self, session_id: str) -> None:
        self._spawn(self.cluster.lock(f"webrtc/{session_id}"))

    def closed(self, session_id: str) -> None:
        self._spawn(self.cluster.unlock(f"webrtc/{session_id}"))

    async def forward(self, request: web.Request) -> web.StreamResponse | None:
        if HOPS.get():  # forwarded here already: the session is nowhere
            return None
        try:
            holder = await self.cluster.registry.lookup(f"webrtc/{request.match_info['session']}")
        except RegistryUnavailable:
            return None
        if holder is None or holder.node == self.cluster.node:
            return None
        if (request.content_length or 0) > MAX_FORWARDED_BODY:
            return web.Response(status=413, text="request body too large\n", headers=CORS)
        path = request.rel_url.raw_path
        headers = {
            credential.HEADER: credential.sign(self.cluster.secret, self.cluster.node, path),
            credential.HOPS_HEADER: "1",
        }
        if request.content_type:
            headers["Content-Type"] = request.content_type
        body = await request.read() if request.can_read_body else None
        if self._client is None:
            self._client = aiohttp.ClientSession()
        try:
            async with self._client.request(
                request.method, holder.url + path, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=10)
            ) as answer:
                kept = {name: answer.headers[name] for name in FORWARDED_HEADERS if name in answer.headers}
                return web.Response(status=answer.status, body=await answer.read(), headers={**CORS, **kept})
        except (aiohttp.ClientError, TimeoutError) as exc:
            return web.Response(status=502, text=f"the node holding this session did not answer: {exc}\n", headers=CORS)

    async def close(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()


class ClusterPart:
    def __init__(self, settings: Settings, hub: Hub, hls: HlsPlayback, authorize_play: Authorizer) -> None:
        self.settings = settings
        self.registry = open_registry(settings)
        self.cluster = Cluster(hub, settings.cluster, self.registry, node_id(), secret="")
        self.gateway = HlsGateway(hls, self.cluster, authorize_play)
        self.listener = ClusterListener(self.cluster, hub, self.gateway, settings.play_wait_seconds)
        self.sessions = SessionLocator(self.cluster)

    async def start(self) -> None:
        s = self.settings
        c = s.cluster
        await self.registry.open()
        secret = c.secret or os.environ.get(supervisor.ENV_NODE_SECRET)
        self.cluster.secret = secret or await self.registry.shared_secret(secrets.token_hex(16))
        port = c.port + worker()[0] if c.port else 0
        host = c.listen_host or (s.host if s.redis else "127.0.0.1")
        bound = await self.listener.start(host, port)
        advertise = c.advertise_host or (address_towards(s.redis) if s.redis else "127.0.0.1")
        await self.cluster.start(f"http://{advertise}:{bound}")

    async def stop(self) -> None:
        await self.sessions.close()
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
