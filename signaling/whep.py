"""WHEP playback: any live stream to WebRTC viewers, H.264 as it is, AAC transcoded to Opus once
per stream.

A :class:`WhepFeed` is the stream in WebRTC form: one hub sink per stream with WHEP viewers,
holding the Annex-B access units and Opus packets since the last keyframe, so that a viewer that
connects starts on that keyframe at once. Each viewer's tracks hand aiortc ``av.Packet`` objects,
which its RTP sender packetizes without encoding.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from fractions import Fraction

import av
from aiohttp import web
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from relay.formats import codecs
from relay.formats.h264 import FlvToAnnexB
from relay.formats.packet import AUDIO, VIDEO, Packet
from relay.hub import AccessRequest, Authorizer, Hub, StreamRefused, Subscription, decide
from relay.transcode.audio import OPUS_RATE, AacToOpus
from signaling import ice
from signaling.endpoint import Endpoint
from signaling.sessions import Registry, Session

log = logging.getLogger("minilive.webrtc")

VIDEO_TIME_BASE = Fraction(1, 1000)  # the hub's milliseconds
AUDIO_TIME_BASE = Fraction(1, OPUS_RATE)
# Audio frames waiting for the transcoder; past it (a stalled thread) audio is dropped, not queued.
MAX_TRANSCODE_BACKLOG = 100
MAX_CACHED_FRAMES = 5000


class PacketTrack(MediaStreamTrack):
    """A track of already encoded packets, bounded: a viewer that falls behind skips to a keyframe."""

    def __init__(self, kind: str, limit: int) -> None:
        super().__init__()
        self.kind = kind
        self.limit = limit
        self.time_base = VIDEO_TIME_BASE if kind == "video" else AUDIO_TIME_BASE
        self.queue: deque[tuple[int, bytes]] = deque()
        self.ready = asyncio.Event()
        self.waiting = kind == "video"  # for a keyframe
        self.sent = 0
        self.skips = 0

    def put(self, pts: int, data: bytes, keyframe: bool = True) -> None:
        if len(self.queue) >= self.limit:
            self.queue.clear()
            self.skips += 1
            self.waiting = self.kind == "video"
        if self.waiting:
            if not keyframe:
                return
            self.waiting = False
        self.queue.append((pts, data))
        self.ready.set()

    async def recv(self) -> av.Packet:
        while not self.queue:
            if self.readyState != "live":
                raise MediaStreamError
            self.ready.clear()
            await self.ready.wait()
        pts, data = self.queue.popleft()
        packet = av.Packet(data)
        packet.pts = pts
        packet.time_base = self.time_base
        self.sent += 1
        return packet

    def stop(self) -> None:
        super().stop()
        self.ready.set()


class WhepFeed:
    """A stream's packets for its WHEP viewers (a hub sink)."""

    def __init__(self, endpoint: WhepEndpoint, app: str, name: str) -> None:
        self.endpoint = endpoint
        self.app = app
        self.name = name
        self.key = f"{app}/{name}"
        self.subscription: Subscription | None = None
        self.sessions: set[WhepSession] = set()  # connecting or connected
        self.live: set[WhepSession] = set()  # connected: receiving packets
        self.video = FlvToAnnexB()
        self.video_cache: list[tuple[int, bytes, bool]] = []
        self.audio_cache: list[tuple[int, bytes]] = []
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="whep-opus")
        self.transcoder: AacToOpus | None = None
        self.backlog = 0
        self.dropped_audio = 0
        self.closed = False
        self.loop = asyncio.get_running_loop()

    # ------------------------------------------------------------ Sink

    def feed(self, packet: Packet) -> None:
        if packet.kind == VIDEO:
            self._video(packet)
        elif packet.kind == AUDIO:
            self._audio(packet)

    def new_publisher(self) -> None:
        """Nothing to do: a new encoder's configuration comes in the packets that follow."""

    def end(self) -> None:
        for session in list(self.sessions):
            session.end("stream ended")
        self.close()

    def failed(self, error: Exception) -> None:
        for session in list(self.sessions):
            session.end("the stream could not be converted for WebRTC")
        self.close()

    # ------------------------------------------------------------ media

    def _video(self, packet: Packet) -> None:
        if packet.config:
            self.video.configure(packet.payload)
            return
        frame = codecs.coded_frame(packet.payload)
        if frame is None:
            return
        composition, data = frame
        access_unit = self.video.convert(data, packet.keyframe)
        if access_unit is None:
            return
        item = (packet.timestamp + composition, access_unit, packet.keyframe)
        cache = self.video_cache
        if packet.keyframe:
            self.video_cache = [item]
            self.audio_cache = []
        elif cache and len(cache) < MAX_CACHED_FRAMES:
            cache.append(item)
        for session in self.live:
            session.video.put(*item)

    def _audio(self, packet: Packet) -> None:
        payload = packet.payload
        if len(payload) < 2 or payload[0] >> 4 != 10:  # AAC only; other FLV audio has no Opus path
            return
        if self.backlog >= MAX_TRANSCODE_BACKLOG:
            self.dropped_audio += 1
            return
        self.backlog += 1
        if packet.config:
            future = self.executor.submit(self._configure, payload[2:])
        else:
            future = self.executor.submit(self._transcode, packet.timestamp, payload[2:])
        future.add_done_callback(lambda done: self.loop.call_soon_threadsafe(self._transcoded, done))

    def _configure(self, audio_specific_config: bytes) -> list[tuple[int, bytes]]:
        self.transcoder = AacToOpus(audio_specific_config)
        return []

    def _transcode(self, timestamp: int, frame: bytes) -> list[tuple[int, bytes]]:
        return self.transcoder.encode(timestamp, frame) if self.transcoder else []

    def _transcoded(self, future: Future[list[tuple[int, bytes]]]) -> None:
        self.backlog -= 1
        if self.closed or future.cancelled():
            return
        try:
            packets = future.result()
        except Exception:
            log.exception("whep %s: AAC to Opus failed", self.key)
            return
        if len(self.audio_cache) < MAX_CACHED_FRAMES:
            self.audio_cache += packets
        for session in self.live:
            for pts, data in packets:
                session.audio.put(pts, data)

    # ------------------------------------------------------------ viewers

    def join(self, session: WhepSession) -> None:
        """A connected viewer: the cached keyframe and what followed it, then everything live."""
        self.live.add(session)
        self._report()
        for item in self.video_cache:
            session.video.put(*item)
        for pts, data in self.audio_cache:
            session.audio.put(pts, data)

    def leave(self, session: WhepSession) -> None:
        self.sessions.discard(session)
        self.live.discard(session)
        self._report()
        if not self.sessions:
            self.close()

    def _report(self) -> None:
        if self.subscription is not None:
            self.subscription.set_audience("whep", len(self.live))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.subscription is not None:
            self.subscription.close()
            # The subscription holds this feed: a cycle, freed only by a full collection (rare with
            # the server's GC thresholds), with the transcoder's FFmpeg threads (found by the soak).
            self.subscription = None
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.endpoint.feeds.get(self.key) is self:
            del self.endpoint.feeds[self.key]


class WhepSession(Session):
    protocol = "whep"

    def __init__(self, registry: Registry, feed: WhepFeed, remote: str) -> None:
        super().__init__(registry, feed.app, feed.name, remote)
        self.feed = feed
        limit = registry.settings.viewer_queue_frames
        self.video = PacketTrack("video", limit)
        self.audio = PacketTrack("audio", limit)
        feed.sessions.add(self)

    async def answer(self, offer: str) -> str:
        with ice.policy(self.registry.settings.ice):
            await self.pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        kinds = {t.kind for t in self.pc.getTransceivers()}
        for track in (self.video, self.audio):
            if track.kind in kinds:
                self.pc.addTrack(track)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    def on_connected(self) -> None:
        if not self.feed.closed:
            self.feed.join(self)

    def release(self) -> None:
        self.feed.leave(self)
        self.video.stop()
        self.audio.stop()

    def log_end(self) -> None:
        log.info(
            "whep end %s/%s from %s (%s): %.1f s, %d video / %d audio frames, %d skips",
            self.app,
            self.name,
            self.remote,
            self.close_reason,
            time.monotonic() - self.opened,
            self.video.sent,
            self.audio.sent,
            self.video.skips + self.audio.skips,
        )


class WhepEndpoint(Endpoint):
    protocol = "whep"

    def __init__(
        self, registry: Registry, hub: Hub, authorize_play: Authorizer, app: str = "live", wait_seconds: float = 0.0
    ) -> None:
        super().__init__(registry, app)
        self.hub = hub
        self.authorize_play = authorize_play
        self.wait_seconds = wait_seconds
        self.feeds: dict[str, WhepFeed] = {}

    async def open(self, request: web.Request, name: str) -> Session:
        remote = request.remote or ""
        access = AccessRequest("play", "whep", self.app, name, request.query_string, remote)
        decision = await decide(self.authorize_play, access, log)
        if not decision.allowed:
            raise web.HTTPForbidden(text=decision.reason)
        try:
            found = await self.hub.wait_for(self.app, name, self.wait_seconds)
        except StreamRefused as exc:
            raise web.HTTPServiceUnavailable(text=str(exc)) from None
        if not found:
            raise web.HTTPNotFound(text=f"no live stream named {self.app}/{name}")
        key = f"{self.app}/{name}"
        feed = self.feeds.get(key)
        if feed is None or feed.closed or feed.subscription is None or feed.subscription.ended:
            feed = self.feeds[key] = WhepFeed(self, self.app, name)
            feed.subscription = self.hub.add_sink(self.app, name, feed)
            if feed.closed:
                raise web.HTTPServiceUnavailable(text=f"stream {key} cannot be played over WebRTC")
        limit = self.registry.settings.max_whep_viewers
        if len(feed.sessions) >= limit:
            if not feed.sessions:
                feed.close()
            raise web.HTTPServiceUnavailable(
                text=f"stream {key} has {limit} WHEP viewers, the limit; play it over HTTP-FLV or HLS",
                headers={"Retry-After": "10"},
            )
        return WhepSession(self.registry, feed, remote)
