"""Live HLS / LL-HLS over HTTP: ``GET /{app}/{stream}/index.m3u8`` and the segments and parts it names.

A stream is packaged only while someone asks for it: the first request creates its packager
(fed from the GOP cache, so the first part is ready at once), and a packager nobody asked for in
``idle_seconds`` is dropped. Everything is served from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from urllib.parse import urlencode

from aiohttp import payload, web
from aiohttp.abc import AbstractStreamWriter

from relay.access import AccessRequest, Authorizer, allow_all, decide
from relay.hls import HlsSettings, LivePlaylist
from relay.http_flv import CORS
from relay.hub import Hub
from relay.stream import LiveStream

log = logging.getLogger("minilive.hls")

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
MEDIA_NAME = re.compile(
    r"^(?P<prefix>[0-9a-f]{8})-"
    r"(?:init(?P<init>\d{1,9})\.mp4|(?P<msn>\d{1,9})(?:\.(?P<part>\d{1,4}))?\.(?P<ext>ts|m4s))$"
)
MEDIA_TYPES = {"ts": "video/mp2t", "m4s": "video/iso.segment"}
INIT_TYPE = "video/mp4"


class _Packager:
    """Connects one live stream to its LivePlaylist (a sink of the stream)."""

    def __init__(self, stream: LiveStream, settings: HlsSettings) -> None:
        self.stream = stream
        self.playlist = LivePlaylist(settings, secrets.token_hex(4))
        self.feed = self.playlist.feed

    def new_publisher(self) -> None:
        self.playlist.new_publisher()

    def end(self) -> None:
        self.playlist.finish()


class HlsPlayback:
    def __init__(self, hub: Hub, settings: HlsSettings | None = None, authorize_play: Authorizer = allow_all) -> None:
        self.hub = hub
        self.settings = settings or HlsSettings()
        self.authorize_play = authorize_play
        self.packagers: dict[str, _Packager] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(r"/{app}/{name}/index.m3u8", self.playlist),
            web.get(r"/{app}/{name}/{file:[0-9a-f]{8}-[0-9a-z.]+\.(?:ts|m4s|mp4)}", self.media),
        ]

    async def cleanup_ctx(self, app: web.Application):  # type: ignore[no-untyped-def]
        self._sweeper = asyncio.create_task(self._sweep())
        yield
        self._sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sweeper
        for packager in self.packagers.values():
            packager.stream.remove_sink(packager)
        self.packagers.clear()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(5)
            now = time.monotonic()
            for key, packager in list(self.packagers.items()):
                idle = now - packager.playlist.last_request > self.settings.idle_seconds
                if idle or packager.stream.ended:
                    packager.stream.remove_sink(packager)
                    del self.packagers[key]
                    log.info("hls packaging of %s stopped (%s)", key, "idle" if idle else "stream ended")

    async def _packager(self, request: web.Request) -> _Packager:
        app, name = request.match_info["app"], request.match_info["name"]
        access = AccessRequest("play", "hls", app, name, request.query_string, request.remote or "")
        decision = await decide(self.authorize_play, access, log)
        if not decision.allowed:
            raise web.HTTPForbidden(text=decision.reason + "\n", headers=CORS)
        key = f"{app}/{name}"
        packager = self.packagers.get(key)
        stream = self.hub.get(app, name)
        if packager is not None and packager.stream is stream:
            packager.playlist.last_request = time.monotonic()
            return packager
        if stream is None:
            if packager is not None:  # the stream is over; its last playlist still answers
                return packager
            raise web.HTTPNotFound(text=f"no live stream named {key}\n", headers=CORS)
        if packager is not None:
            packager.stream.remove_sink(packager)
        packager = self.packagers[key] = _Packager(stream, self.settings)
        stream.add_sink(packager)
        log.info("hls packaging of %s started", key)
        return packager

    async def playlist(self, request: web.Request) -> web.Response:
        packager = await self._packager(request)
        playlist = packager.playlist
        timeout = self.settings.blocking_timeout_seconds
        msn_arg, part_arg = request.query.get("_HLS_msn"), request.query.get("_HLS_part")
        if msn_arg is not None or part_arg is not None:
            try:
                msn = int(msn_arg) if msn_arg is not None else -1
                part = int(part_arg) if part_arg is not None else None
            except ValueError:
                raise web.HTTPBadRequest(text="_HLS_msn and _HLS_part must be integers\n", headers=CORS) from None
            if msn < 0 or (part is not None and part < 0):
                raise web.HTTPBadRequest(text="_HLS_part needs _HLS_msn\n", headers=CORS)
            # The draft: a request more than two segments ahead of the playlist is an error.
            if msn > playlist.last_msn + 2:
                raise web.HTTPBadRequest(text=f"_HLS_msn {msn} is too far ahead\n", headers=CORS)
            if not await playlist.wait_for(msn, part, timeout):
                raise web.HTTPServiceUnavailable(text="the requested part did not appear in time\n", headers=CORS)
        elif not playlist.segments and not await playlist.wait_for(0, 0, timeout):
            raise web.HTTPServiceUnavailable(text="the stream has not produced a segment yet\n", headers=CORS)
        # A signed play URL's parameters go on to every listed URI, authorized like the playlist.
        query = urlencode([(k, v) for k, v in request.query.items() if not k.startswith("_HLS_")])
        return web.Response(
            text=playlist.playlist(query),
            content_type=PLAYLIST_TYPE,
            headers={"Cache-Control": "no-cache", **CORS},
        )

    async def media(self, request: web.Request) -> web.Response:
        match = MEDIA_NAME.match(request.match_info["file"])
        if match is None:
            raise web.HTTPNotFound(headers=CORS)
        packager = await self._packager(request)
        playlist = packager.playlist
        if match["prefix"] != playlist.prefix:
            raise web.HTTPNotFound(text="segment of an earlier run of this stream\n", headers=CORS)
        if match["init"] is not None:
            init = playlist.find_init(int(match["init"]))
            if init is None:
                raise web.HTTPNotFound(headers=CORS)
            return _media_response(init.data, INIT_TYPE)
        msn = int(match["msn"])
        part = int(match["part"]) if match["part"] is not None else None
        # A preload-hinted part (or the segment being written) is held until it exists.
        if msn <= playlist.last_msn + 1 and not playlist.has(msn, part):
            await playlist.wait_for(msn, part, self.settings.blocking_timeout_seconds)
        segment = playlist.find(msn)
        if segment is None or (segment.init is not None) != (match["ext"] == "m4s"):
            raise web.HTTPNotFound(headers=CORS)
        if part is None:
            if not segment.complete:
                raise web.HTTPNotFound(headers=CORS)
            return _media_response(_Pieces(segment.pieces), MEDIA_TYPES[match["ext"]])
        if part >= len(segment.parts):
            raise web.HTTPNotFound(headers=CORS)
        return _media_response(segment.parts[part].data, MEDIA_TYPES[match["ext"]])


def _media_response(data: bytes | memoryview | payload.Payload, content_type: str) -> web.Response:
    # Media names are never reused (a packager's random prefix, versioned init segments).
    return web.Response(
        body=data,
        content_type=content_type,
        headers={"Cache-Control": "public, max-age=3600, immutable", **CORS},
    )


class _Pieces(payload.Payload):
    """A body sent as the pieces it is made of (a segment's parts), without joining them first."""

    _value: list[bytes | memoryview]

    def __init__(self, pieces: list[bytes | memoryview]) -> None:
        super().__init__(pieces)
        self._size = sum(len(piece) for piece in pieces)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._value).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        # Queued without waiting in between (the transport sends them as one stream); one drain at the end.
        for piece in self._value:
            await writer.write(piece, drain=False)  # type: ignore[call-arg]
        await writer.drain()
