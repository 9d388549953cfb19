"""The cluster listener: the port other nodes pull streams and HLS from, and nothing else.

Every request must carry a node credential (relay.cluster.credential) for its own path: a pull
without one is refused (403), so this port can never serve a viewer who skipped the play rules, nor
an anchor's secret. Requests arrive from nodes that authorized their viewers already; X-Forwarded-For
names the player for HLS audience counting.
"""

from __future__ import annotations

import logging

from aiohttp import web

from relay.cluster import credential
from relay.cluster.hls import HlsGateway
from relay.cluster.node import HOPS, Cluster
from relay.http.fast import Client
from relay.http.flv import FlvPlayback
from relay.http.hls import aiohttp_routes
from relay.hub import Hub, allow_all

log = logging.getLogger("minilive.cluster")

REFUSED = "this port serves other minilive nodes only: a valid node credential (X-Minilive-Node) is required"


def _trusted_client(request: web.Request) -> Client:
    remote = request.headers.get(credential.FORWARDED_FOR, "") or request.remote or ""
    return Client(remote[:64], request.headers.get("User-Agent", "")[:256], trusted=True)


class ClusterListener:
    def __init__(self, cluster: Cluster, hub: Hub, gateway: HlsGateway, play_wait_seconds: float = 0.0) -> None:
        self.cluster = cluster
        self.flv = FlvPlayback(hub, allow_all, play_wait_seconds, relay=True)
        self.gateway = gateway
        self.refused = 0
        self.extra_routes: list[web.RouteDef] = []  # more of this node that other nodes may reach
        self._runner: web.AppRunner | None = None
        self.port = 0

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._credential])
        app.add_routes(
            [
                web.get("/_cluster/ping", self._ping),
                *aiohttp_routes(self.gateway, _trusted_client),
                web.get(r"/{app}/{name:[^/]+}.flv", self.flv.handle),
                *self.extra_routes,
            ]
        )
        return app

    @web.middleware
    async def _credential(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        node = credential.verify(
            self.cluster.secret, request.headers.get(credential.HEADER, ""), request.rel_url.raw_path
        )
        if node is None:
            self.refused += 1
            log.info("cluster listener: refused %s %s from %s: no valid node credential",
                     request.method, request.rel_url.raw_path[:200], request.remote)  # fmt: skip
            return web.json_response({"error": REFUSED}, status=403)
        try:
            hops = max(0, min(int(request.headers.get(credential.HOPS_HEADER, "1")), credential.MAX_HOPS))
        except ValueError:
            hops = credential.MAX_HOPS
        token = HOPS.set(hops)
        try:
            return await handler(request)
        finally:
            HOPS.reset(token)

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({"node": self.cluster.node})

    async def start(self, host: str, port: int) -> int:
        self._runner = web.AppRunner(self.build_app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True, backlog=1024)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
