"""Live HLS / LL-HLS over HTTP: ``GET /{app}/{stream}/index.m3u8`` and the segments and parts it names,
and ``GET /{app}/{stream}/master.m3u8``, the stream and its renditions.

A stream is packaged only while someone asks for it: the first request creates its packager
(fed from the GOP cache, so the first part is ready at once), and a packager nobody asked for in
``idle_seconds`` is dropped. Everything is served from memory.

A rendition (``demo_480p``, see :class:`RenditionCatalog`) is packaged following its source's
packager, which is created with it: the same segments and parts, so that a player switches between
them seamlessly, and LL-HLS playlists report each other's last part (EXT-X-RENDITION-REPORT).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode

from aiohttp import web

from relay.formats import h264
from relay.formats.codecs import video_info
from relay.formats.hls import HlsSettings, LivePlaylist, RenditionReport, Variant, codecs_of, master_playlist
from relay.http.fast import Body, Client, Reply, Route, aiohttp_handler, request_client
from relay.http.latency import histograms
from relay.hub import AccessRequest, Authorizer, Hub, StreamRefused, Subscription, allow_all, decide

log = logging.getLogger("minilive.hls")

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
MEDIA_NAME = re.compile(
    r"^(?P<prefix>[0-9a-f]{8})-"
    r"(?:init(?P<init>\d{1,9})\.mp4|(?P<msn>\d{1,9})(?:\.(?P<part>\d{1,4}))?\.(?P<ext>ts|m4s))$"
)
# The same paths as the aiohttp routes, for relay.http.fast (which reads only plain paths).
PLAYLIST_PATH = re.compile(r"/(?P<app>[^/]+)/(?P<name>[^/]+)/index\.m3u8")
MASTER_PATH = re.compile(r"/(?P<app>[^/]+)/(?P<name>[^/]+)/master\.m3u8")
MEDIA_PATH = re.compile(r"/(?P<app>[^/]+)/(?P<name>[^/]+)/(?P<file>[0-9a-f]{8}-[0-9a-z.]+\.(?:ts|m4s|mp4))")
MEDIA_TYPES = {"ts": "video/mp2t", "m4s": "video/iso.segment"}
INIT_TYPE = "video/mp4"
# What /metrics times HLS requests by: playlists (master ones too), blocking playlist reloads (LL-HLS's
# _HLS_msn), parts, and segments (init segments too).
LATENCY_KINDS = ("playlist", "blocking", "part", "segment")


# Distinct players an HLS packager remembers for its audience count; past this, new ones are not counted.
MAX_TRACKED_CLIENTS = 100_000
# A stream that could not be packaged (video HLS cannot carry) is answered 503 this long without trying again.
REFUSAL_SECONDS = 5.0
# A rendition's bitrate in a master playlist before its segments measure it: its rung's, plus audio
# (64 kbit/s a channel, what live encoders default to for AAC) and 10 % of TS or fMP4 overhead.
AUDIO_BITRATE_PER_CHANNEL = 64_000
CONTAINER_OVERHEAD = 1.1
# Without a measured segment, a stream's peak is taken as its last second's bitrate times this.
PEAK_OVER_AVERAGE = 1.2


class RenditionFacts(Protocol):
    """A rendition as a master playlist lists it (``relay.transcode.renditions.VariantFacts``)."""

    stream: str  # its hub stream, e.g. demo_480p
    width: int  # 0 and 0: audio only
    height: int
    video_bitrate: int  # bit/s
    max_rate: int  # bit/s
    fps_cap: float
    video_codec: str  # RFC 6381; "" for audio only


class RenditionCatalog(Protocol):
    """What HLS needs to know of renditions (``relay.transcode.renditions.Renditions``, injected)."""

    def source_of(self, app: str, name: str) -> tuple[str, object] | None:
        """(source stream, rung) when ``name`` names a rendition that a source here can have now."""
        ...

    def variants(self, app: str, source: str) -> Sequence[RenditionFacts]:
        """The renditions that ``source`` can have now, in ladder order."""
        ...

    def keep_warm(self, app: str, source: str) -> None:
        """Players may switch to the running renditions of ``source`` at any moment: keep them running."""
        ...


class _Packager:
    """Connects one live stream to its LivePlaylist (a sink of the stream), and counts its players: an
    HLS viewer is a client (address and User-Agent) that asked for the playlist or media lately.

    A rendition's packager follows its ``leader``, the source's; a source's knows its ``followers``
    and the players that came through its master playlist (``master_clients``)."""

    def __init__(self, settings: HlsSettings, app: str, name: str, leader: _Packager | None = None) -> None:
        self.settings = settings
        self.app = app
        self.name = name
        self.leader = leader
        self.followers: list[_Packager] = []
        self.playlist = LivePlaylist(settings, secrets.token_hex(4), leader.playlist if leader else None)
        self.feed = self.playlist.feed
        self.subscription: Subscription | None = None
        self.failure = ""  # why the hub detached this packager, if it did
        self.clients: dict[Client, float] = {}  # last request, monotonic
        self.master_clients: dict[Client, float] = {}  # their last request of any of the family, monotonic

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
        for client in [client for client, last in self.master_clients.items() if last < since]:
            del self.master_clients[client]

    @property
    def family(self) -> list[_Packager]:
        """The source's packager and its renditions', source first: the streams a master playlist lists."""
        leader = self.leader or self
        return [leader, *leader.followers]

    def reports(self) -> tuple[RenditionReport, ...]:
        """The other members of the family that are packaging, for this one's LL-HLS playlist."""
        found = []
        for other in self.family:
            if other is not self and other.live:
                report = other.playlist.report(f"../{other.name}/index.m3u8")
                if report is not None:
                    found.append(report)
        return tuple(found)

    def _report(self) -> None:
        if self.subscription is not None:
            self.subscription.set_audience("hls", len(self.clients))

    def stop(self) -> None:
        if self.subscription is not None:
            self.subscription.close()
        self.playlist.close()


class HlsPlayback:
    def __init__(
        self,
        hub: Hub,
        settings: HlsSettings | None = None,
        authorize_play: Authorizer = allow_all,
        renditions: RenditionCatalog | None = None,
    ) -> None:
        self.hub = hub
        self.settings = settings or HlsSettings()
        self.authorize_play = authorize_play
        self.renditions = renditions  # None: no transcoding, a master playlist lists the stream alone
        self.packagers: dict[str, _Packager] = {}
        self._refused: dict[str, tuple[float, str]] = {}  # stream -> (until, why), see REFUSAL_SECONDS
        self._sweeper: asyncio.Task[None] | None = None
        # Time to an answer by kind of request, from the handler's start (for /metrics): a clock read
        # and a bucket increment per request, on the lean path too.
        self.latency = histograms(LATENCY_KINDS)

    def routes(self) -> list[web.RouteDef]:
        """The aiohttp routes, for connections that aiohttp serves (see ``fast_routes``)."""
        return aiohttp_routes(self)

    def fast_routes(self) -> list[Route]:
        """The same routes for ``relay.http.fast``, which answers most HLS requests."""
        return [(PLAYLIST_PATH, self.playlist), (MASTER_PATH, self.master), (MEDIA_PATH, self.media)]

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
        """Forget players gone quiet; stop packaging what nobody asked for lately or what ended; keep
        the renditions of a stream running while players that came through its master playlist play."""
        self._refused = {key: refused for key, refused in self._refused.items() if refused[0] > now}
        for key, packager in list(self.packagers.items()):
            if self.packagers.get(key) is not packager:
                continue  # stopped in this sweep with its source
            packager.expire_clients(now)
            if packager.master_clients:
                self._keep_warm(packager, now)
            idle = now - packager.playlist.last_request > self.settings.idle_seconds
            if idle or not packager.live:
                self._stop(packager, "idle" if idle else packager.failure or "stream ended")

    def _keep_warm(self, source: _Packager, now: float) -> None:
        if self.renditions is not None:
            self.renditions.keep_warm(source.app, source.name)
        for follower in source.followers:
            follower.playlist.last_request = now

    def _stop(self, packager: _Packager, reason: str) -> None:
        """Stop ``packager``, and its followers with it (they cannot follow a playlist that stopped)."""
        for follower in list(packager.followers):
            self._stop(follower, f"its source's packaging stopped ({reason})")
        if packager.leader is not None and packager in packager.leader.followers:
            packager.leader.followers.remove(packager)
        packager.stop()
        key = f"{packager.app}/{packager.name}"
        if self.packagers.get(key) is packager:
            del self.packagers[key]
        log.info("hls packaging of %s stopped (%s)", key, reason)

    async def _packager(self, app: str, name: str, query: str, client: Client) -> _Packager | Reply:
        """The packager of stream ``app/name``, started if need be; or why not (a Reply)."""
        if not client.trusted:  # (a node of the cluster authorized the player it asks for)
            request = AccessRequest("play", "hls", app, name, query, client.remote)
            decision = await decide(self.authorize_play, request, log)
            if not decision.allowed:
                return _text(403, decision.reason)
        packager = self._start(app, name)
        if isinstance(packager, Reply):
            return packager
        now = time.monotonic()
        packager.seen(client, now)
        source = packager.leader or packager
        if source is not packager:
            source.playlist.last_request = now  # followed: it is not idle while its renditions play
        if client in source.master_clients:
            source.master_clients[client] = now
        return packager

    def _start(self, app: str, name: str) -> _Packager | Reply:
        """The packager of stream ``app/name`` (a rendition's following its source's, which starts
        too), started if it is not running; or why not (a Reply)."""
        key = f"{app}/{name}"
        packager = self.packagers.get(key)
        if packager is not None and packager.live:
            return packager
        refused = self._refused.get(key)
        if refused is not None:
            if refused[0] > time.monotonic():
                return _text(503, refused[1])
            del self._refused[key]
        try:
            here = self.hub.demand(app, name)
        except StreamRefused as exc:
            return _text(503, str(exc))
        if not here:
            if packager is not None and not packager.failure:  # the stream is over; its last playlist answers
                return packager
            return _text(404, f"no live stream named {key}")
        found = self.renditions.source_of(app, name) if self.renditions is not None else None
        leader = self._start(app, found[0]) if found is not None else None
        if isinstance(leader, Reply) or (leader is not None and not leader.live):
            leader = None  # a source that cannot be packaged (or ended): the rendition is packaged on its own
        packager = self.packagers.get(key)  # (a source started anew stopped its followers)
        if packager is not None:
            self._stop(packager, "the stream is new")
        packager = self.packagers[key] = _Packager(self.settings, app, name, leader)
        if leader is not None:
            leader.followers.append(packager)
        packager.subscription = self.hub.add_sink(app, name, packager)
        if packager.failure:
            self._stop(packager, packager.failure)
            reason = f"stream {key} cannot be packaged as HLS: {packager.failure}"
            # Answered from memory for a while: a player polling the playlist must not make every
            # request another failed packager, and another log line.
            self._refused[key] = (time.monotonic() + REFUSAL_SECONDS, reason)
            return _text(503, reason)
        log.info("hls packaging of %s started%s", key, f" (following {leader.name})" if leader else "")
        return packager

    async def playlist(self, path: Mapping[str, str], query: str, client: Client) -> Reply:
        start = time.monotonic()
        reply = await self._playlist(path, query, client)
        self.latency["blocking" if "_HLS_msn" in query else "playlist"].observe(time.monotonic() - start)
        return reply

    async def _playlist(self, path: Mapping[str, str], query: str, client: Client) -> Reply:
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
        text = playlist.playlist(_passed_on(params), packager.reports())
        return Reply(200, text.encode(), PLAYLIST_TYPE, "no-cache")

    async def master(self, path: Mapping[str, str], query: str, client: Client) -> Reply:
        start = time.monotonic()
        reply = await self._master(path, query, client)
        self.latency["playlist"].observe(time.monotonic() - start)
        return reply

    async def _master(self, path: Mapping[str, str], query: str, client: Client) -> Reply:
        """``GET /{app}/{name}/master.m3u8``: the stream and the renditions it can have now.

        The renditions listed are started (and packaged, following the stream), so that a player's
        first switch finds their segments made; they keep running while players that came through this
        playlist play any of them. A rendition refused (``max_transcodes``) is not listed."""
        app, name = path["app"], path["name"]
        found = self.renditions.source_of(app, name) if self.renditions is not None else None
        if found is not None:
            return _text(404, f"{app}/{name} is a rendition: the master playlist is /{app}/{found[0]}/master.m3u8")
        source = await self._packager(app, name, query, client)
        if isinstance(source, Reply):
            return source
        if not source.live:
            return _text(404, f"{app}/{name} is not live")
        if not await source.playlist.wait_for_segment(self.settings.first_segment_wait_seconds):
            return _text(503, "the stream has not completed a segment yet (is its keyframe interval very long?)")
        if len(source.master_clients) < MAX_TRACKED_CLIENTS:
            source.master_clients[client] = time.monotonic()
        passed_on = _passed_on(parse_qsl(query, keep_blank_values=True))
        suffix = f"?{passed_on}" if passed_on else ""
        stats = self.hub.stats(app, name) or {}
        top = _source_variant(source.playlist, stats, f"index.m3u8{suffix}")
        variants = [top]
        # Renditions pass the source's audio through.
        audio = codecs_of(None, source.playlist.segmenter.audio_config)
        audio_bitrate = AUDIO_BITRATE_PER_CHANNEL * ((stats.get("audio") or {}).get("channels") or 2) if audio else 0
        for facts in self.renditions.variants(app, name) if self.renditions is not None else ():
            rendition = self._start(app, facts.stream)
            if isinstance(rendition, Reply):
                log.info("hls master of %s/%s leaves %s out: %s", app, name, facts.stream, rendition.body)
                continue
            uri = f"../{facts.stream}/index.m3u8{suffix}"
            variants.append(_rendition_variant(facts, rendition.playlist, uri, audio, audio_bitrate, top.frame_rate))
        return Reply(200, master_playlist(variants).encode(), PLAYLIST_TYPE, "no-cache")

    async def media(self, path: Mapping[str, str], query: str, client: Client) -> Reply:
        """``GET /{app}/{name}/{file}``: an init segment, a segment or a part the playlist lists."""
        start = time.monotonic()
        match = MEDIA_NAME.match(path["file"])
        if match is None:
            return _text(404, "no such segment")
        reply = await self._media(match, path, query, client)
        self.latency["segment" if match["part"] is None else "part"].observe(time.monotonic() - start)
        return reply

    async def _media(self, match: re.Match[str], path: Mapping[str, str], query: str, client: Client) -> Reply:
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
        if segment.gap:
            return _text(404, "no such segment: a gap (EXT-X-GAP) of this rendition")
        if part is None:
            if not segment.complete:
                return _text(404, "the segment is not complete yet")
            return _media(segment.pieces, MEDIA_TYPES[match["ext"]])
        if part >= len(segment.parts):
            return _text(404, "no such part")
        return _media(segment.parts[part].data, MEDIA_TYPES[match["ext"]])


class HlsHandlers(Protocol):
    """The three handlers behind HLS's paths (HlsPlayback's, or relay.cluster's that proxy them)."""

    async def playlist(self, path: Mapping[str, str], query: str, client: Client) -> Reply: ...

    async def master(self, path: Mapping[str, str], query: str, client: Client) -> Reply: ...

    async def media(self, path: Mapping[str, str], query: str, client: Client) -> Reply: ...


def aiohttp_routes(
    handlers: HlsHandlers, client_of: Callable[[web.Request], Client] = request_client
) -> list[web.RouteDef]:
    """HLS's aiohttp routes to ``handlers``; ``client_of`` tells who asks."""
    return [
        web.get(r"/{app}/{name}/index.m3u8", aiohttp_handler(handlers.playlist, client_of)),
        web.get(r"/{app}/{name}/master.m3u8", aiohttp_handler(handlers.master, client_of)),
        web.get(
            r"/{app}/{name}/{file:[0-9a-f]{8}-[0-9a-z.]+\.(?:ts|m4s|mp4)}", aiohttp_handler(handlers.media, client_of)
        ),
    ]


def _passed_on(params: list[tuple[str, str]]) -> str:
    """A signed play URL's parameters, to go on to every URI a playlist lists (authorized like the
    playlist); re-encoded, since what the client sent goes into quoted attributes of the playlist."""
    return urlencode([(k, v) for k, v in params if not k.startswith("_HLS_")])


def _source_variant(playlist: LivePlaylist, stats: dict[str, Any], uri: str) -> Variant:
    """A stream as its master playlist lists it: bitrates measured on its segments (on its last second
    before one is complete), codecs from its sequence headers, frame rate from its SPS (else measured)."""
    video = stats.get("video") or {}
    segmenter = playlist.segmenter
    peak, average = playlist.bitrates() or _estimate(stats.get("bitrate_in", 0))
    fps = _frame_rate(segmenter.video_config) or video.get("fps") or 0.0
    codecs = codecs_of(segmenter.video_config, segmenter.audio_config)
    width, height = video.get("width") or 0, video.get("height") or 0
    return Variant(uri, peak, average, codecs, width, height, round(fps, 3))


def _rendition_variant(
    facts: RenditionFacts, playlist: LivePlaylist, uri: str, audio: list[str], audio_bitrate: int, source_fps: float
) -> Variant:
    """A rendition as its source's master playlist lists it: bitrates
    measured on its segments, else its rung's plus audio and overhead; its own codec once it has a
    sequence header; the source's frame rate up to the rung's cap."""
    config = playlist.segmenter.video_config
    made = codecs_of(config, None) if config is not None else []
    video = made or ([facts.video_codec] if facts.video_codec else [])
    peak, average = playlist.bitrates() or (
        round((facts.max_rate + audio_bitrate) * CONTAINER_OVERHEAD),
        round((facts.video_bitrate + audio_bitrate) * CONTAINER_OVERHEAD),
    )
    rate = round(min(source_fps, facts.fps_cap), 3) if facts.height else 0.0
    return Variant(uri, peak, average, video + audio, facts.width, facts.height, rate)


def _frame_rate(video_config: bytes | None) -> float | None:
    """The frame rate an H.264 stream's SPS declares (None for other codecs, or an SPS that says none)."""
    if video_config is None or video_info(video_config).codec != "h264":
        return None
    return h264.frame_rate(video_config)


def _estimate(bitrate: int) -> tuple[int, int]:
    """(peak, average) of a stream no segment has measured yet, from its last second's bitrate."""
    return round(bitrate * PEAK_OVER_AVERAGE), bitrate


def _text(status: int, message: str) -> Reply:
    return Reply(status, f"{message}\n".encode())


def _media(data: Body, content_type: str) -> Reply:
    # Media names are never reused (a packager's random prefix, versioned init segments).
    return Reply(200, data, content_type, "public, max-age=3600, immutable")
