"""WHIP ingest and WHEP playback behind one object for the composition root."""

from __future__ import annotations

from aiohttp import web

from relay.hub import Authorizer, Hub
from signaling.sessions import Locator, Registry, WebRtcSettings
from signaling.whep import WhepEndpoint
from signaling.whip import WhipEndpoint


class WebRtc:
    def __init__(
        self,
        hub: Hub,
        authorize_publish: Authorizer,
        authorize_play: Authorizer,
        settings: WebRtcSettings | None = None,
        app: str = "live",
        play_wait_seconds: float = 0.0,
        locator: Locator | None = None,
    ) -> None:
        self.registry = Registry(settings or WebRtcSettings(), locator)
        self.whip = WhipEndpoint(self.registry, hub, authorize_publish, app)
        self.whep = WhepEndpoint(self.registry, hub, authorize_play, app, play_wait_seconds)

    def routes(self) -> list[web.RouteDef]:
        return self.whip.routes() + self.whep.routes()

    def session_routes(self) -> list[web.RouteDef]:
        """DELETE and PATCH of the sessions, which other processes of a cluster forward here."""
        return [route for route in self.routes() if route.method in ("DELETE", "PATCH")]

    async def close(self) -> None:
        await self.registry.close_all("server shutting down")
