"""Load client for bench.webrtc: one process of aiortc WHIP publishers, WHEP viewers, and RTMP publishers
and HTTP-FLV viewers from bench.load, driven by a JSON plan.

    python -m bench.webrtc_client PLAN.json RESULT.json

A WHIP publisher sends the fixture's H.264 as it is (aiortc packetizes the ``av.Packet`` objects its
track returns; nothing is encoded) and a tone that PyAV encodes to Opus once, looped. A WHEP viewer
receives both tracks without decoding them (``signaling.passthrough``), and counts frames.

Latency is measured per video frame at the server boundary: from the moment a publisher in this
process hands the frame to its sender (RTMP write, or aiortc's packetizer: on loopback, the
server's arrival) to the moment a viewer in this process has it whole. Frames are matched by their
content: the H.264 NAL units without parameter sets and delimiters, which every hop carries
unchanged, whether as FLV (length-prefixed) or as RTP (Annex-B).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from yarl import URL

from bench.load import FlvViewer, FrameKey, PublisherResult, Source, Timeline, _sleep_until, frame_key, publish
from relay.formats.codecs import coded_frame
from relay.formats.flv import VIDEO
from relay.formats.h264 import NAL_AUD, NAL_IDR, NAL_PPS, NAL_SPS, split_annexb
from relay.formats.mpegts import AvcConfig
from relay.transcode.audio import OPUS_FRAME, OPUS_RATE, audio_encoder
from signaling import ice
from signaling.passthrough import pass_through

LOOPBACK = ice.IceSettings(addresses=["127.0.0.1"])
VIDEO_TIME_BASE = Fraction(1, 90000)
TONE_PACKETS = 50  # one second of Opus, encoded once and looped

NalKey = tuple[int, int]


def nal_key(nals: Iterable[bytes]) -> NalKey:
    """What identifies a frame on every hop: its picture NAL units, without SPS, PPS and delimiters."""
    units = [nal for nal in nals if nal and nal[0] & 0x1F not in (NAL_SPS, NAL_PPS, NAL_AUD)]
    body = b"".join(units)
    return len(body), zlib.crc32(body)


def avcc_units(data: bytes, size: int = 4) -> list[bytes]:
    units, pos = [], 0
    while pos + size <= len(data):
        length = int.from_bytes(data[pos : pos + size], "big")
        units.append(data[pos + size : pos + size + length])
        pos += size + length
    return units


class Fixture:
    """The fixture's video as Annex-B access units, and how a received frame finds its send time."""

    def __init__(self, source: Source) -> None:
        config = AvcConfig(next(t.payload for t in source.config if t.kind == VIDEO))
        self.source = source
        self.frames: list[tuple[int, bytes, FrameKey]] = []  # (ms, Annex-B, bench.load frame key)
        self.keys: dict[NalKey, FrameKey] = {}
        for tag in source.media:
            frame = coded_frame(tag.payload) if tag.kind == VIDEO else None
            if frame is None:
                continue
            units = avcc_units(frame[1], config.length_size)
            keyframe = any(u and u[0] & 0x1F == NAL_IDR for u in units)
            annexb = (config.parameter_sets if keyframe else b"") + b"".join(b"\x00\x00\x00\x01" + u for u in units)
            self.frames.append((tag.timestamp, annexb, frame_key(tag.payload)))
            self.keys[nal_key(units)] = frame_key(tag.payload)


class FixtureVideo(MediaStreamTrack):
    """The fixture's H.264 in real time, looped, as packets for aiortc's sender to packetize."""

    kind = "video"

    def __init__(self, fixture: Fixture, sent: dict[FrameKey, float], stats: WhipResult) -> None:
        super().__init__()
        self.fixture = fixture
        self.sent = sent
        self.stats = stats
        self.index = 0
        self.offset = 0
        self.base: float | None = None

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self.base is None:
            self.base = time.monotonic()
        timestamp, data, key = self.fixture.frames[self.index]
        timestamp += self.offset
        self.index += 1
        if self.index == len(self.fixture.frames):
            self.index = 0
            self.offset += self.fixture.source.period_ms
        await _sleep_until(self.base + timestamp / 1000)
        packet = av.Packet(data)
        packet.pts = timestamp * 90
        packet.time_base = VIDEO_TIME_BASE
        self.sent[key] = time.monotonic()
        self.stats.video_frames += 1
        return packet


def opus_tone() -> list[bytes]:
    """One second of a 440 Hz tone as 20 ms Opus packets."""
    encoder = audio_encoder("libopus", "s16", 64000)
    packets: list[bytes] = []
    for index in range(TONE_PACKETS + 2):
        frame = av.AudioFrame(format="s16", layout="stereo", samples=OPUS_FRAME)
        level = 4000 if (index * OPUS_FRAME // 55) % 2 else -4000  # a square wave near 440 Hz
        frame.planes[0].update(level.to_bytes(2, "little", signed=True) * 2 * OPUS_FRAME)
        frame.sample_rate = OPUS_RATE
        frame.pts, frame.time_base = index * OPUS_FRAME, encoder.time_base
        packets += [bytes(p) for p in encoder.encode(frame)]
    return packets[:TONE_PACKETS]


class ToneAudio(MediaStreamTrack):
    kind = "audio"

    def __init__(self, packets: list[bytes]) -> None:
        super().__init__()
        self.packets = packets
        self.count = 0
        self.base: float | None = None

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self.base is None:
            self.base = time.monotonic()
        await _sleep_until(self.base + self.count * OPUS_FRAME / OPUS_RATE)
        packet = av.Packet(self.packets[self.count % len(self.packets)])
        packet.pts, packet.time_base = self.count * OPUS_FRAME, Fraction(1, OPUS_RATE)
        self.count += 1
        return packet


# ------------------------------------------------------------------ WebRTC sessions


async def negotiate(pc: RTCPeerConnection, url: str, http: aiohttp.ClientSession) -> str:
    """POST the offer, apply the answer; the session's resource URL."""
    with ice.policy(LOOPBACK):
        await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp"}
    async with http.post(url, data=pc.localDescription.sdp, headers=headers) as response:
        answer = await response.text()
        if response.status != 201:
            raise ConnectionError(f"POST {urlsplit(url).path}: {response.status} {answer.strip()}")
        location = str(response.url.join(URL(response.headers["Location"])))
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return location


def new_pc() -> RTCPeerConnection:
    with ice.policy(LOOPBACK):
        return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def connected(pc: RTCPeerConnection, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pc.connectionState != "connected":
        if pc.connectionState in ("failed", "closed") or time.monotonic() > deadline:
            raise ConnectionError(f"peer connection {pc.connectionState}")
        await asyncio.sleep(0.05)


@dataclass(slots=True)
class WhipResult:
    stream: str
    video_frames: int = 0
    connect_ms: float | None = None
    error: str | None = None


async def whip_publish(
    base: str,
    result: WhipResult,
    fixture: Fixture,
    tone: list[bytes],
    sent: dict[FrameKey, float],
    start: float,
    end: float,
) -> None:
    await _sleep_until(start)
    pc = new_pc()
    try:
        pc.addTransceiver(FixtureVideo(fixture, sent, result), direction="sendonly")
        pc.addTransceiver(ToneAudio(tone), direction="sendonly")
        async with aiohttp.ClientSession() as http:
            resource = await negotiate(pc, f"{base}/whip/{result.stream}", http)
            await connected(pc, 15)
            result.connect_ms = 1000 * (time.monotonic() - start)
            await _sleep_until(end)
            async with http.delete(resource):
                pass
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        await pc.close()


class FrameArrivals:
    """When each video frame's last packet (marker bit) reached a receiver.

    aiortc's jitter buffer hands a frame on only when the first packet of the next one arrives, a
    frame interval later: the viewer's own delay, not the server's. The receiver's frames carry RTP
    timestamps counted from its first frame's, which is the first marked packet's on loopback.
    """

    def __init__(self, receiver: RTCRtpReceiver) -> None:
        self.origin: int | None = None
        self.times: dict[int, float] = {}
        handle = receiver._handle_rtp_packet

        async def noting(packet, arrival_time_ms: int) -> None:  # type: ignore[no-untyped-def]
            if packet.marker:
                if self.origin is None:
                    self.origin = packet.timestamp
                self.times[packet.timestamp] = time.monotonic()
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = noting  # type: ignore[method-assign]

    def pop(self, frame_timestamp: int) -> float | None:
        if self.origin is None:
            return None
        return self.times.pop((self.origin + frame_timestamp) & 0xFFFFFFFF, None)


@dataclass(slots=True)
class ViewerResult:
    protocol: str  # "whep" or "flv"
    path: str  # what the latency spans: "rtmp>whep", "whip>whep", "whip>flv"
    sampled: bool
    first_frame_ms: float | None = None
    video_frames: int = 0  # in the window
    audio_frames: int = 0
    error: str | None = None
    unmatched: int = 0  # sampled frames in the window with no send or arrival time
    latency_ms: list[float] = field(default_factory=list)


class Viewer:
    def __init__(
        self, result: ViewerResult, url: str, start: float, fixture: Fixture, sent: dict[FrameKey, float]
    ) -> None:
        self.result = result
        self.url = url
        self.start = start
        self.fixture = fixture
        self.sent = sent

    def on_video(self, units: Iterable[bytes], timeline: Timeline, arrived: float | None) -> None:
        """A whole frame; ``arrived``: when its last byte did, if known (else no latency sample)."""
        now = time.monotonic()
        result = self.result
        if result.first_frame_ms is None:
            result.first_frame_ms = 1000 * (now - self.start)
        if not timeline.in_window(now):
            return
        result.video_frames += 1
        if result.sampled:
            key = self.fixture.keys.get(nal_key(units))
            sent = self.sent.get(key) if key else None
            if sent is None or arrived is None:
                result.unmatched += 1
            else:
                result.latency_ms.append(round(1000 * (arrived - sent), 2))

    async def run(self, timeline: Timeline) -> None:
        await _sleep_until(self.start)
        try:
            await (self._whep(timeline) if self.result.protocol == "whep" else self._flv(timeline))
        except Exception as exc:
            self.result.error = f"{type(exc).__name__}: {exc}"

    async def _flv(self, timeline: Timeline) -> None:
        def on_tag(tag) -> None:  # type: ignore[no-untyped-def]
            frame = coded_frame(tag.payload) if tag.kind == VIDEO else None
            if frame is not None:
                self.on_video(avcc_units(frame[1]), timeline, time.monotonic())

        parts = urlsplit(self.url)
        loop = asyncio.get_running_loop()
        transport, viewer = await loop.create_connection(
            lambda: FlvViewer(self.url, on_tag), parts.hostname, parts.port
        )
        await asyncio.wait_for(viewer.started, 10)
        await asyncio.wait([viewer.closed], timeout=max(0.0, timeline.end - time.monotonic()))
        transport.close()

    async def _whep(self, timeline: Timeline) -> None:
        pc = new_pc()
        readers: list[asyncio.Task[None]] = []

        async def read(track: MediaStreamTrack) -> None:
            while True:
                frame = await track.recv()  # a JitterFrame: not decoded
                if track.kind == "video":
                    self.on_video(split_annexb(frame.data), timeline, arrivals.pop(frame.timestamp))
                elif timeline.in_window(time.monotonic()):
                    self.result.audio_frames += 1

        pc.on("track", lambda track: readers.append(asyncio.ensure_future(read(track))))
        try:
            arrivals = FrameArrivals(pc.addTransceiver("video", direction="recvonly").receiver)
            pc.addTransceiver("audio", direction="recvonly")
            async with aiohttp.ClientSession() as http:
                resource = await negotiate(pc, self.url, http)
                for transceiver in pc.getTransceivers():
                    pass_through(transceiver)
                await connected(pc, 15)
                await _sleep_until(timeline.end)
                async with http.delete(resource):
                    pass
        finally:
            for reader in readers:
                reader.cancel()
            await pc.close()


# ------------------------------------------------------------------ the process


async def run(plan: dict[str, Any]) -> dict[str, Any]:
    timeline = Timeline(plan["measure"], plan["end"])
    fixture = Fixture(Source(Path(plan["fixture"])))
    sent: dict[FrameKey, float] = {}
    tasks = []
    rtmp = [PublisherResult(p["stream"]) for p in plan.get("rtmp_publishers", [])]
    for spec, result in zip(plan.get("rtmp_publishers", []), rtmp, strict=True):
        tasks.append(publish(plan["rtmp_url"], result, fixture.source, spec["start"], timeline, sent, None, 10))
    whip = [WhipResult(p["stream"]) for p in plan.get("whip_publishers", [])]
    tone = opus_tone() if whip else []
    for spec, result in zip(plan.get("whip_publishers", []), whip, strict=True):
        tasks.append(whip_publish(plan["http"], result, fixture, tone, sent, spec["start"], timeline.end + 1))
    viewers = [
        Viewer(ViewerResult(v["protocol"], v["path"], v["sampled"]), v["url"], v["start"], fixture, sent)
        for v in plan.get("viewers", [])
    ]
    tasks.extend(viewer.run(timeline) for viewer in viewers)
    running = [asyncio.ensure_future(task) for task in tasks]
    await _sleep_until(timeline.measure)
    cpu_at_measure = time.process_time()
    await _sleep_until(timeline.end)
    cpu_seconds = time.process_time() - cpu_at_measure
    await asyncio.wait(running, timeout=15)
    return {
        "cpu_seconds": cpu_seconds,
        "viewers": [asdict(viewer.result) for viewer in viewers],
        "latency_ms": [],  # per viewer, in "viewers": the paths differ
        "publishers": [asdict(r) for r in rtmp] + [asdict(r) for r in whip],
        "hls": [],
    }


def main() -> None:
    plan_path, result_path = sys.argv[1:3]
    result = asyncio.run(run(json.loads(Path(plan_path).read_text())))
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
