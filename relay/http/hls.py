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
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode

from aiohttp import web

from relay.formats.hls import HlsSettings, LivePlaylist
from relay.http.fast import Body, Client, Reply, Route, aiohttp_handler
from relay.hub import AccessRequest, Authorizer, Hub, StreamRefused, Subscription, allow_all, decide

log = logging.getLogger("minilive.hls")

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
MEDIA_NAME = re.compile(
    r"^(?P<prefix>[0-9a-f]{8})-"
    r"(?:init(?P<init>\d{1,9})\.mp4|(?P<msn>\d{1,9})(?:\.(?P<part>\d{1,4}))?\.(?P<ext>ts|m4s))$"
)
# The same paths as the aiohttp routes, for relay.http.fast (which reads only plain paths).
PLAYLIST_PATH = re.compile(r"/(?P<app>[^/]+)/(?P<name>[^/]+)/index\.m3u8")
MEDIA_PATH = re.compile(r"/(?P<app>[^/]+)/(?P<name>[^/]+)/(?P<file>[0-9a-f]{8}-[0-9a-z.]+\.(?:ts|m4s|mp4))")
MEDIA_TYPES = {"ts": "video/mp2t", "m4s": "video/iso.segment"}
INIT_TYPE = "video/mp4"


# Distinct players an HLS packager remembers for its audience count; past this, new ones are not counted.
MAX_TRACKED_CLIENTS = 100_000


class _Packager:
    """Connects one live stream to its LivePlaylist (a sink of the stream), and counts its players: an
    HLS viewer is a client (address and User-Agent) that asked for the playlist or media lately."""

    def __init__(self, settings: HlsSettings) -> None:
        self.settings = settings
        self.playlist = LivePlaylist(settings, secrets.token_hex(4))
        self.feed = self.playlist.feed
        self.subscription: Subscription | None = None
        self.failure = ""  # why the hub detached this packager, if it did
        self.clients: dict[Client, float] = {}  # last request, monotonic

    def new_publisher(self) -> None:
        self.playlist.new_publisher()

    def end(self) -> None:
        self.playlist.finish()

    def failed(self, error: Exception) -> None:
        self.failure = f"{type(error).__name__}: {error}"
        self.playlist.finish()

    @property
    def live(self) -> bool:
        """Still fed by a stream that is here."""
        return self.subscription is not None and not self.subscription.ended and not self.failure

    def seen(self, client: Client, now: float) -> None:
        clients = self.clients
        if client not in clients:
            if len(clients) >= MAX_TRACKED_CLIENTS:
                return
            clients[client] = now
            self._report()
        else:
            clients[client] = now
        self.playlist.last_request = now

    def expire_clients(self, now: float) -> None:
        since = now - self.settings.audience_seconds
        gone = [client for client, last in self.clients.items() if last < since]
        for client in gone:
            del self.clients[client]
        if gone:
            self._report()

    def _report(self) -> None:
        if self.subscription is not None:
            self.subscription.set_audience("hls", len(self.clients))

    def stop(self) -> None:
        if self.subscription is not None:
            self.subscription.close()


class HlsPlayback:
    def __init__(self, hub: Hub, settings: HlsSettings | None = None, authorize_play: Authorizer = allow_all) -> None:
        self.hub = hub
        self.settings = settings or HlsSettings()
        self.authorize_play = authorize_play
        self.packagers: dict[str, _Packager] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def routes(self) -> list[web.RouteDef]:
        """The aiohttp routes, for connections that aiohttp serves (see ``fast_routes``)."""
        return [
            web.get(r"/{app}/{name}/index.m3u8", aiohttp_handler(self.playlist)),
            web.get(r"/{app}/{name}/{file:[0-9a-f]{8}-[0-9a-z.]+\.(?:ts|m4s|mp4)}", aiohttp_handler(self.media)),
        ]

    def fast_routes(self) -> list[Route]:
        """The same two routes for ``relay.http.fast``, which answers most HLS requests."""
        return [(PLAYLIST_PATH, self.playlist), (MEDIA_PATH, self.media)]

    async def cleanup_ctx(self, app: web.Application):  # type: ignore[no-untyped-def]
        self._sweeper = asyncio.create_task(self._sweep())
        yield
        self._sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sweeper
        for packager in self.packagers.values():
            packager.stop()
        self.packagers.clear()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.settings.audience_seconds / 2))
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        """Forget players gone quiet; stop packaging what nobody asked for lately or what ended."""
        for key, packager in list(self.packagers.items()):
            packager.expire_clients(now)
            idle = now - packager.playlist.last_request > self.settings.idle_seconds
            if idle or not packager.live:
                packager.stop()
                del self.packagers[key]
                reason = "idle" if idle else packager.failure or "stream ended"
                log.info("hls packaging of %s stopped (%s)", key, reason)

    async def _packager(self, app: str, name: str, query: str, client: Client) -> _Packager | Reply:
        """The packager of stream ``app/name``, started if need be; or why not (a Reply)."""
        request = AccessRequest("play", "hls", app, name, query, client.remote)
        decision = await decide(self.authorize_play, request, log)
        if not decision.allowed:
            return _text(403, decision.reason)
        key = f"{app}/{name}"
        packager = self.packagers.get(key)
        now = time.monotonic()
        if packager is None or not packager.live:
            try:
                here = self.hub.demand(app, name)
            except StreamRefused as exc:
                return _text(503, str(exc))
            if not here:
                if packager is not None and not packager.failure:  # the stream is over; its last playlist answers
                    packager.seen(client, now)
                    return packager
                return _text(404, f"no live stream named {key}")
            if packager is not None:
                packager.stop()
            packager = self.packagers[key] = _Packager(self.settings)
            packager.subscription = self.hub.add_sink(app, name, packager)
            if packager.failure:
                del self.packagers[key]
                log.info("hls packaging of %s failed: %s", key, packager.failure)
                return _text(503, f"stream {key} cannot be packaged as HLS: {packager.failure}")
            log.info("hls packaging of %s started", key)
        packager.seen(client, now)
        return packager

    async def playlist(self, path: Mapping[str, str], query: str, client: Client) -> Reply:
        """``GET /{app}/{name}/index.m3u8?{query}``: the live playlist, or after blocking until it lists
        the segment or part that ``_HLS_msn``/``_HLS_part`` ask for."""
        packager = await self._packager(path["app"], path["name"], query, client)
        if isinstance(packager, Reply):
            return packager
        playlist = packager.playlist
        timeout = self.settings.blocking_timeout_seconds
        params = parse_qsl(query, keep_blank_values=True)
        hls = {k: v for k, v in reversed(params) if k.startswith("_HLS_")}  # the first of each, as aiohttp's
        msn_arg, part_arg = hls.get("_HLS_msn"), hls.get("_HLS_part")
        if msn_arg is not None or part_arg is not None:
            try:
                msn = int(msn_arg) if msn_arg is not None else -1
                part = int(part_arg) if part_arg is not None else None
            except ValueError:
                return _text(400, "_HLS_msn and _HLS_part must be integers")
            if msn < 0 or (part is not None and part < 0):
                return _text(400, "_HLS_part needs _HLS_msn")
            # The draft: a request more than two segments ahead of the playlist is an error.
            if msn > playlist.last_msn + 2:
                return _text(400, f"_HLS_msn {msn} is too far ahead")
            if not await playlist.wait_for(msn, part, timeout):
                return _text(503, "the requested part did not appear in time")
        # Never a playlist without a complete segment: a client that does not speak LL-HLS (ffprobe, an
        # older `video` component) would find nothing to play in it and give up. The first segment
        # began at the GOP cache's keyframe, so it completes at the publisher's next keyframe.
        if not await playlist.wait_for_segment(self.settings.first_segment_wait_seconds):
            return _text(503, "the stream has not completed a segment yet (is its keyframe interval very long?)")
        # A signed play URL's parameters go on to every listed URI, authorized like the playlist.
        # (Re-encoded: what the client sent goes into quoted attributes of the playlist.)
        passed_on = urlencode([(k, v) for k, v in params if not k.startswith("_HLS_")])
        return Reply(200, playlist.playlist(passed_on).encode(), PLAYLIST_TYPE, "no-cache")

    async def media(self, path: Mapping[str, str], query: str, client: Client) -> Reply:
        """``GET /{app}/{name}/{file}``: an init segment, a segment or a part the playlist lists."""
        match = MEDIA_NAME.match(path["file"])
        if match is None:
            return _text(404, "no such segment")
        packager = await self._packager(path["app"], path["name"], query, client)
        if isinstance(packager, Reply):
            return packager
        playlist = packager.playlist
        if match["prefix"] != playlist.prefix:
            return _text(404, "segment of an earlier run of this stream")
        if match["init"] is not None:
            init = playlist.find_init(int(match["init"]))
            if init is None:
                return _text(404, "no such init segment")
            return _media(init.data, INIT_TYPE)
        msn = int(match["msn"])
        part = int(match["part"]) if match["part"] is not None else None
        # A preload-hinted part (or the segment being written) is held until it exists.
        if msn <= playlist.last_msn + 1 and not playlist.has(msn, part):
            await playlist.wait_for(msn, part, self.settings.blocking_timeout_seconds)
        segment = playlist.find(msn)
        if segment is None or (segment.init is not None) != (match["ext"] == "m4s"):
            return _text(404, "no such segment (it left the playlist, or never was)")
        if part is None:
            if not segment.complete:
                return _text(404, "the segment is not complete yet")
            return _media(segment.pieces, MEDIA_TYPES[match["ext"]])
        if part >= len(segment.parts):
            return _text(404, "no such part")
        return _media(segment.parts[part].data, MEDIA_TYPES[match["ext"]])


def _text(status: int, message: str) -> Reply:
    return Reply(status, f"{message}\n".encode())


def _media(data: Body, content_type: str) -> Reply:
    # Media names are never reused (a packager's random prefix, versioned init segments).
    return Reply(200, data, content_type, "public, max-age=3600, immutable")
