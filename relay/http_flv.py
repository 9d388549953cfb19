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

from relay.access import AccessRequest, Authorizer, allow_all, decide
from relay.formats import CHUNKED_FLV, FLV, WS_FLV, OutputFormat
from relay.hub import Hub
from relay.stream import LiveStream
from relay.viewer import Viewer

log = logging.getLogger("minilive.flv")

CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "*",
    "Access-Control-Expose-Headers": "*",
}


class _CloseDelimitedResponse(web.StreamResponse):
    """A response whose body ends when the connection closes (no length, no chunking)."""

    _length_check = False


class FlvPlayback:
    def __init__(
        self,
        hub: Hub,
        authorize_play: Authorizer = allow_all,
        play_wait_seconds: float = 0.0,
        chunked: bool = True,
    ) -> None:
        self.hub = hub
        self.authorize_play = authorize_play
        self.play_wait_seconds = play_wait_seconds
        self.chunked = chunked

    def routes(self) -> list[web.RouteDef]:
        return [web.get(r"/{app}/{name:[^/]+}.flv", self.handle)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        app = request.match_info["app"]
        name = request.match_info["name"]
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        protocol = "ws-flv" if websocket else "http-flv"
        remote = f"{request.remote}"
        access = AccessRequest("play", protocol, app, name, request.query_string, remote)
        decision = await decide(self.authorize_play, access, log)
        if not decision.allowed:
            raise web.HTTPForbidden(text=decision.reason + "\n", headers=CORS)
        stream = await self.hub.wait_for(app, name, self.play_wait_seconds)
        if stream is None:
            raise web.HTTPNotFound(text=f"no live stream named {app}/{name}\n", headers=CORS)
        if websocket:
            return await self._websocket(request, stream)
        return await self._http(request, stream)

    async def _http(self, request: web.Request, stream: LiveStream) -> web.StreamResponse:
        headers = {"Content-Type": "video/x-flv", "Cache-Control": "no-cache, no-store", **CORS}
        chunked = self.chunked and request.version >= (1, 1)
        if chunked:
            response = web.StreamResponse(headers=headers)
            response.enable_chunked_encoding()
            fmt: OutputFormat = CHUNKED_FLV
        else:
            response = _CloseDelimitedResponse(headers=headers)
            response.force_close()
            fmt = FLV
        await response.prepare(request)
        transport = request.transport
        if transport is None or transport.is_closing():
            return response

        def end(reason: str) -> None:
            if reason == "too slow":
                transport.abort()

        viewer = Viewer(transport, fmt, remote=request.remote or "", end=end)
        await self._serve(stream, viewer, "http-flv")
        if not transport.is_closing():
            await response.write_eof()
        response.force_close()
        return response

    async def _websocket(self, request: web.Request, stream: LiveStream) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=64 * 1024, autoping=True)
        ws.headers.update({"Access-Control-Allow-Origin": "*"})
        await ws.prepare(request)
        transport = request.transport
        if transport is None or transport.is_closing():
            return ws
        viewer = Viewer(transport, WS_FLV, remote=request.remote or "", end=lambda reason: None)

        async def read() -> None:
            # Incoming frames are only pings and the close handshake; aiohttp answers them.
            async for message in ws:
                if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break

        reader = asyncio.ensure_future(read())
        reader.add_done_callback(lambda _: viewer.finish("closed"))
        await self._serve(stream, viewer, "ws-flv")
        reader.cancel()
        if not transport.is_closing():
            await ws.close()
        return ws

    async def _serve(self, stream: LiveStream, viewer: Viewer, protocol: str) -> None:
        stream.attach(viewer)
        log.info("%s play start %s from %s", protocol, stream.key, viewer.remote)
        try:
            reason = await viewer.done
        finally:
            stream.detach(viewer)
        log.info(
            "%s play end %s from %s (%s): %.1f s, %.2f MB, %d skips",
            protocol,
            stream.key,
            viewer.remote,
            reason,
            time.monotonic() - viewer.joined_at,
            viewer.bytes_out / 1e6,
            viewer.skips,
        )
