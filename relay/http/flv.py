"""HTTP-FLV and WebSocket-FLV playback (``GET /{app}/{stream}.flv``), on the shared aiohttp server.

After the response headers are out, the hub writes merged batches straight to the
connection's transport: chunk framing (HTTP/1.1), nothing (close-delimited) or a WebSocket
binary frame per batch, built once per flush for all viewers of that framing.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import WSMsgType, web

from relay.formats.output import CHUNKED_FLV, FLV, RELAY_FLV, WS_FLV, OutputFormat
from relay.http.cors import CORS
from relay.http.raw import CloseDelimitedResponse, check_websocket_handshake, take_transport
from relay.hub import AccessRequest, Authorizer, Hub, StreamRefused, Viewer, allow_all, decide

log = logging.getLogger("minilive.flv")


class FlvPlayback:
    def __init__(
        self,
        hub: Hub,
        authorize_play: Authorizer = allow_all,
        play_wait_seconds: float = 0.0,
        chunked: bool = True,
        relay: bool = False,
    ) -> None:
        self.hub = hub
        self.authorize_play = authorize_play
        self.play_wait_seconds = play_wait_seconds
        self.chunked = chunked or relay
        # Serving other nodes' pulls (relay.cluster.listener): chunked (the last chunk says the stream
        # ended), counted as "relay".
        self.relay = relay

    def routes(self) -> list[web.RouteDef]:
        return [web.get(r"/{app}/{name:[^/]+}.flv", self.handle)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        app = request.match_info["app"]
        name = request.match_info["name"]
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        protocol = "ws-flv" if websocket else "http-flv"
        if websocket:
            check_websocket_handshake(request)
        remote = f"{request.remote}"
        access = AccessRequest("play", protocol, app, name, request.query_string, remote)
        decision = await decide(self.authorize_play, access, log)
        if not decision.allowed:
            raise web.HTTPForbidden(text=decision.reason + "\n", headers=CORS)
        try:
            found = await self.hub.wait_for(app, name, self.play_wait_seconds)
        except StreamRefused as exc:
            raise web.HTTPServiceUnavailable(text=f"{exc}\n", headers=CORS) from None
        if not found:
            raise web.HTTPNotFound(text=f"no live stream named {app}/{name}\n", headers=CORS)
        if websocket:
            return await self._websocket(request, app, name)
        return await self._http(request, app, name)

    async def _http(self, request: web.Request, app: str, name: str) -> web.StreamResponse:
        headers = {"Content-Type": "video/x-flv", "Cache-Control": "no-cache, no-store", **CORS}
        chunked = self.chunked and request.version >= (1, 1)
        if chunked:
            response = web.StreamResponse(headers=headers)
            response.enable_chunked_encoding()
            fmt: OutputFormat = RELAY_FLV if self.relay else CHUNKED_FLV
        else:
            response = CloseDelimitedResponse(headers=headers)
            response.force_close()
            fmt = FLV
        transport = await take_transport(request, response)
        if transport is None:
            return response

        def end(reason: str) -> None:
            if reason == "too slow":
                transport.abort()

        viewer = Viewer(transport, fmt, remote=request.remote or "", end=end)
        await self._serve(app, name, viewer)
        if not transport.is_closing():
            await response.write_eof()
        response.force_close()
        return response

    async def _websocket(self, request: web.Request, app: str, name: str) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=64 * 1024, autoping=True)
        ws.headers.update({"Access-Control-Allow-Origin": "*"})
        transport = await take_transport(request, ws)
        if transport is None:
            return ws
        viewer = Viewer(transport, WS_FLV, remote=request.remote or "", end=lambda reason: None)

        async def read() -> None:
            # Incoming frames are only pings and the close handshake; aiohttp answers them.
            async for message in ws:
                if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break

        reader = asyncio.ensure_future(read())
        reader.add_done_callback(lambda _: viewer.finish("closed"))
        await self._serve(app, name, viewer)
        reader.cancel()
        if not transport.is_closing():
            await ws.close()
        return ws

    async def _serve(self, app: str, name: str, viewer: Viewer) -> None:
        protocol = viewer.format.name
        subscription = self.hub.add_viewer(app, name, viewer)
        if subscription is None:  # the stream ended while the response headers went out
            return
        log.info("%s play start %s/%s from %s", protocol, app, name, viewer.remote)
        try:
            reason = await viewer.done
        finally:
            subscription.close()
        log.info(
            "%s play end %s/%s from %s (%s): %.1f s, %.2f MB, %d skips",
            protocol,
            app,
            name,
            viewer.remote,
            reason,
            time.monotonic() - viewer.joined_at,
            viewer.bytes_out / 1e6,
            viewer.skips,
        )
