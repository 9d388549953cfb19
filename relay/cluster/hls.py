"""HLS in a cluster: segmented at the stream's origin only, and proxied there from every other node.

Why not segment everywhere: a player's playlist and segment requests may land on different nodes
(workers behind SO_REUSEPORT, nodes behind a load balancer). Segmenting only at the origin gives them
one playlist, with the same media sequence numbers, names and bytes, whatever node answers; a
deterministic segmenter on every node would have to agree on where segments start and on every
part boundary of LL-HLS, from whenever each node happened to join the stream.

The cost is a hop for the requests that land on an edge: playlists (and LL-HLS blocking requests) go
through; segments and parts, immutable once named, are kept here for a while, and concurrent
requests for one of them make one upstream request (as nginx's ``proxy_cache_lock``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping

import aiohttp
from aiohttp import web

from relay.cluster import credential
from relay.cluster.node import HOPS, Cluster
from relay.http.fast import Client, Handler, Reply, Route
from relay.http.hls import MASTER_PATH, MEDIA_PATH, PLAYLIST_PATH, HlsPlayback, aiohttp_routes
from relay.hub import AccessRequest, Authorizer, decide

log = logging.getLogger("minilive.cluster")

CACHE_BYTES = 64 * 1024 * 1024
CACHE_SECONDS = 30.0
PROXY_SLACK_SECONDS = 5.0  # on top of an LL-HLS blocking request's own timeout


class _Cache:
    """Media answers by path: bounded in bytes, each kept ``CACHE_SECONDS``; one fetch per path at a time."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.items: OrderedDict[str, tuple[float, Reply]] = OrderedDict()
        self.fetching: dict[str, asyncio.Future[Reply]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: str, now: float) -> Reply | None:
        item = self.items.get(key)
        if item is None:
            return None
        if item[0] < now:
            self._drop(key)
            return None
        self.items.move_to_end(key)
        return item[1]

    def put(self, key: str, reply: Reply, now: float) -> None:
        length = reply.length
        if reply.status != 200 or length > self.max_bytes // 8:
            return
        if key in self.items:
            self._drop(key)
        self.items[key] = (now + CACHE_SECONDS, reply)
        self.size += length
        while self.size > self.max_bytes and self.items:
            self._drop(next(iter(self.items)))

    def _drop(self, key: str) -> None:
        _, reply = self.items.pop(key)
        self.size -= reply.length


class HlsGateway:
    """The HLS routes of a node in a cluster: served here when the stream is originated here (or
    nowhere), else proxied to its origin."""

    def __init__(self, hls: HlsPlayback, cluster: Cluster, authorize_play: Authorizer) -> None:
        self.hls = hls
        self.cluster = cluster
        self.authorize_play = authorize_play
        self.cache = _Cache()
        self._session: aiohttp.ClientSession | None = None
        self.proxied = 0
        self.upstream_errors = 0

    def routes(self) -> list[web.RouteDef]:
        """The aiohttp routes (the same paths as HlsPlayback's)."""
        return aiohttp_routes(self)

    def fast_routes(self) -> list[Route]:
        return [(PLAYLIST_PATH, self.playlist), (MASTER_PATH, self.master), (MEDIA_PATH, self.media)]

    async def playlist(self, path: Mapping[str, str], query: str, client: Client) -> Reply:
        return await self._serve(self.hls.playlist, "index.m3u8", path, query, client)

    async def master(self, path: Mapping[str, str], query: str, client: Client) -> Reply:
        return await self._serve(self.hls.master, "master.m3u8", path, query, client)

    async def media(self, path: Mapping[str, str], query: str, client: Client) -> Reply:
        return await self._serve(self.hls.media, path["file"], path, query, client)

    async def _serve(self, local: Handler, file: str, path: Mapping[str, str], query: str, client: Client) -> Reply:
        app, name = path["app"], path["name"]
        upstream = await self.cluster.hls_upstream(app, name)
        if upstream is None:
            return await local(path, query, client)
        if not client.trusted:
            decision = await decide(
                self.authorize_play, AccessRequest("play", "hls", app, name, query, client.remote), log
            )
            if not decision.allowed:
                return Reply(403, f"{decision.reason}\n".encode())
        target = f"/{app}/{name}/{file}"
        if file.endswith(".m3u8"):
            return await self._fetch(upstream, target, query, client)
        now = time.monotonic()
        cache = self.cache
        hit = cache.get(target, now)
        if hit is not None:
            cache.hits += 1
            return hit
        pending = cache.fetching.get(target)
        if pending is not None:
            cache.hits += 1
            return await asyncio.shield(pending)
        cache.misses += 1
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        cache.fetching[target] = future
        try:
            reply = await self._fetch(upstream, target, query, client)
            cache.put(target, reply, time.monotonic())
            future.set_result(reply)
            return reply
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it, nobody else needs to
            raise
        finally:
            del cache.fetching[target]

    async def _fetch(self, upstream: str, target: str, query: str, client: Client) -> Reply:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=256, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        headers = {
            credential.HEADER: credential.sign(self.cluster.secret, self.cluster.node, target),
            credential.HOPS_HEADER: str(HOPS.get() + 1),
            credential.FORWARDED_FOR: client.remote,
            "User-Agent": client.agent,
        }
        url = f"{upstream}{target}?{query}" if query else f"{upstream}{target}"
        timeout = aiohttp.ClientTimeout(total=self.hls.settings.blocking_timeout_seconds + PROXY_SLACK_SECONDS)
        self.proxied += 1
        try:
            async with self._session.get(url, headers=headers, timeout=timeout, allow_redirects=False) as response:
                body = await response.read()
                return Reply(
                    response.status,
                    body,
                    response.headers.get("Content-Type", "application/octet-stream"),
                    response.headers.get("Cache-Control"),
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.upstream_errors += 1
            log.info("hls %s from %s failed: %s", target, upstream, exc or type(exc).__name__)
            return Reply(
                502, f"the stream's origin node ({upstream}) did not answer: {exc or type(exc).__name__}\n".encode()
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def describe(self) -> dict[str, int]:
        return {
            "hls_proxied": self.proxied,
            "hls_upstream_errors": self.upstream_errors,
            "hls_cache_hits": self.cache.hits,
            "hls_cache_misses": self.cache.misses,
            "hls_cache_bytes": self.cache.size,
        }
