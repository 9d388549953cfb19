"""WHIP ingest: a WebRTC publisher's H.264 or VP8 goes into the hub as it is, its Opus becomes AAC.

Video is never decoded: aiortc's receiver hands over depacketized frames (see ``passthrough``).
H.264 access units become FLV AVC tags with a sequence header built from the SPS/PPS; VP8 frames,
from a browser that offers no H.264, become Enhanced RTMP ``vp08`` tags, which players get as the
transcoder's H.264 rendition (``STREAM_h264``). Audio is decoded by aiortc's receiver thread and
encoded to AAC on the session's own thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from aiortc import RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from relay.formats.h264 import AnnexBToFlv
from relay.formats.packet import AUDIO, VIDEO
from relay.formats.vp8 import Vp8ToFlv
from relay.hub import AccessRequest, Authorizer, Hub, PublisherInfo, PublishSession, StreamBusy, decide
from relay.transcode.audio import OpusToAac
from signaling import ice
from signaling.endpoint import Endpoint, bearer_query
from signaling.passthrough import pass_through
from signaling.sessions import Registry, Session

log = logging.getLogger("minilive.webrtc")

KEYFRAME_REQUEST_INTERVAL = 0.5


class WhipSession(Session):
    protocol = "whip"

    def __init__(self, registry: Registry, hub: Hub, app: str, name: str, remote: str, query: str) -> None:
        super().__init__(registry, app, name, remote)
        self.hub = hub
        self.query = query
        self.publish: PublishSession | None = None
        self.video: AnnexBToFlv | Vp8ToFlv = AnnexBToFlv()  # the negotiated codec's, once answered
        self.aac: OpusToAac | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="whip-aac")
        self.video_receiver: RTCRtpReceiver | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.media_start = 0.0
        self.anchors: dict[int, float] = {}
        self.last_media = time.monotonic()
        self.last_keyframe_request = 0.0
        self.keyframe_requests = 0
        self.pc.on("track", self._track)

    async def answer(self, offer: str) -> str:
        with ice.policy(self.registry.settings.ice):
            await self.pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video":
                if pass_through(transceiver) == "vp8":
                    self.video = Vp8ToFlv()
                self.video_receiver = transceiver.receiver
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    def _track(self, track: MediaStreamTrack) -> None:
        read = self._read_video if track.kind == "video" else self._read_audio
        self.tasks.append(asyncio.ensure_future(read(track)))

    def on_connected(self) -> None:
        info = PublisherInfo("whip", self.remote, self.query)
        try:
            self.publish = self.hub.publish(self.app, self.name, info, self._kicked)
        except StreamBusy as exc:
            self.end(str(exc))
            return
        self.media_start = self.last_media = time.monotonic()
        self.tasks.append(asyncio.ensure_future(self._watch()))

    def _kicked(self, reason: str) -> None:
        self.publish = None
        self.end(reason)

    # ------------------------------------------------------------ media

    def _timestamp(self, kind: int, media_ms: float) -> int:
        """Each track's clock starts at 0 with its first frame; both are placed on the wall clock
        from the moment the connection came up."""
        anchor = self.anchors.get(kind)
        if anchor is None:
            anchor = self.anchors[kind] = (time.monotonic() - self.media_start) * 1000 - media_ms
        return max(0, int(anchor + media_ms))

    async def _read_video(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()  # a JitterFrame: H.264 access unit or VP8 frame, 90 kHz timestamp
            except MediaStreamError:
                break
            self.last_media = time.monotonic()
            publish = self.publish
            if publish is None:
                continue
            timestamp = self._timestamp(VIDEO, frame.timestamp / 90)
            for _, body in self.video.push(frame.data):
                publish.send(VIDEO, timestamp, body)
            if self.video.needs_keyframe:
                self._request_keyframe()
        self.end("publisher's video track ended")

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await track.recv()  # decoded Opus, 48 kHz s16
            except MediaStreamError:
                break
            self.last_media = time.monotonic()
            if self.publish is None:
                continue
            if self.aac is None:
                self.aac = await loop.run_in_executor(self.executor, OpusToAac)
                if self.publish is None:
                    continue
                self.publish.send(AUDIO, self._timestamp(AUDIO, 0), b"\xaf\x00" + self.aac.audio_specific_config)
            try:
                packets = await loop.run_in_executor(self.executor, self.aac.encode, frame)
            except RuntimeError:  # executor shut down: the session is closing
                break
            publish = self.publish
            if publish is None:
                continue
            for pts, data in packets:
                publish.send(AUDIO, self._timestamp(AUDIO, pts / 48), b"\xaf\x01" + data)

    def _request_keyframe(self) -> None:
        """Send a PLI, at most every KEYFRAME_REQUEST_INTERVAL seconds."""
        receiver = self.video_receiver
        now = time.monotonic()
        if receiver is None or now - self.last_keyframe_request < KEYFRAME_REQUEST_INTERVAL:
            return
        sources = receiver.getSynchronizationSources()
        if not sources:
            return
        self.last_keyframe_request = now
        self.keyframe_requests += 1
        # aiortc has no public call for it; its receiver sends PLIs itself only on packet loss.
        self.tasks.append(asyncio.ensure_future(receiver._send_rtcp_pli(sources[0].source)))
        self.tasks = [t for t in self.tasks if not t.done()]

    async def _watch(self) -> None:
        """Once a second: a viewer or the recorder waits for a keyframe the cache lacks; silence."""
        idle = self.registry.settings.idle_timeout
        while not self.closed:
            await asyncio.sleep(KEYFRAME_REQUEST_INTERVAL)
            publish = self.publish
            if publish is None:
                return
            if self.video.needs_keyframe or publish.wants_keyframe:
                self._request_keyframe()
            if time.monotonic() - self.last_media > idle:
                self.end(f"publisher sent no media for {idle:.0f} s")

    # ------------------------------------------------------------ end

    def release(self) -> None:
        # The list is dropped, not kept: a cancelled task holds its CancelledError, whose traceback holds
        # the task's frame and so this session, a cycle only a full collection would free (issue 16).
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            if task is not asyncio.current_task():
                task.cancel()
        publish, self.publish = self.publish, None
        if publish is not None:
            publish.close("unpublish")
        self.executor.shutdown(wait=False, cancel_futures=True)

    def log_end(self) -> None:
        log.info(
            "whip end %s/%s from %s (%s): %.1f s connected=%s, %d keyframe requests",
            self.app,
            self.name,
            self.remote,
            self.close_reason,
            time.monotonic() - self.opened,
            self.connected,
            self.keyframe_requests,
        )


class WhipEndpoint(Endpoint):
    protocol = "whip"
    # H.264 goes to every player as it is; VP8, from a browser that offers no H.264, needs transcoding.
    video_codecs = ("h264", "vp8")

    def __init__(self, registry: Registry, hub: Hub, authorize_publish: Authorizer, app: str = "live") -> None:
        super().__init__(registry, app)
        self.hub = hub
        self.authorize_publish = authorize_publish

    async def open(self, request: web.Request, name: str) -> Session:
        query = bearer_query(request)
        remote = request.remote or ""
        access = AccessRequest("publish", "whip", self.app, name, query, remote)
        decision = await decide(self.authorize_publish, access, log)
        if not decision.allowed:
            log.info("whip publish refused %s/%s from %s: %s", self.app, name, remote, decision.reason)
            status = web.HTTPForbidden if query else web.HTTPUnauthorized
            headers = {} if query else {"WWW-Authenticate": "Bearer"}
            raise status(text=decision.reason, headers=headers)
        if self.hub.busy(self.app, name):
            raise web.HTTPConflict(text=f"stream {self.app}/{name} is already being published")
        return WhipSession(self.registry, self.hub, self.app, name, remote, query)
