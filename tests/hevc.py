"""HEVC test media and a publisher for it. Debian's ffmpeg 5.1 cannot publish HEVC over RTMP, so HEVC
frames made by libx265 (Annex-B) are turned here into an hvcC and length-prefixed samples, with AAC,
as the FLV packets that :class:`PacketPublisher` (the project's own RTMP client) sends as legacy
codec-id-12 tags."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from ingest.rtmp.client import RtmpClient, connect
from relay.formats.packet import AUDIO, VIDEO, Packet

FPS = 25


def nal_units(annexb: bytes) -> list[bytes]:
    return [nal.rstrip(b"\x00") for nal in annexb.split(b"\x00\x00\x01") if nal.rstrip(b"\x00")]


def hevc_stream(annexb: bytes) -> tuple[bytes, list[tuple[bool, bytes]]]:
    """(HEVCDecoderConfigurationRecord, [(keyframe, length-prefixed access unit)]), one slice a picture."""
    sets: dict[int, bytes] = {}
    frames, pending = [], b""
    for nal in nal_units(annexb):
        nal_type = (nal[0] >> 1) & 0x3F
        if nal_type in (32, 33, 34):  # VPS, SPS, PPS: in the hvcC only, as hvc1 wants
            sets.setdefault(nal_type, nal)
            continue
        pending += len(nal).to_bytes(4, "big") + nal
        if nal_type < 32:  # a picture's slice ends its access unit
            frames.append((16 <= nal_type <= 23, pending))
            pending = b""
    profile_tier_level = sets[33][3:].replace(b"\x00\x00\x03", b"\x00\x00")[:12]
    record = b"\x01" + profile_tier_level + b"\xf0\x00\xfc\xfd\xf8\xf8\x00\x00\x0f\x03"
    for nal_type in (32, 33, 34):
        record += bytes((0x80 | nal_type,)) + b"\x00\x01" + len(sets[nal_type]).to_bytes(2, "big") + sets[nal_type]
    return record, frames


def adts_frames(adts: bytes) -> tuple[bytes, list[bytes]]:
    """(AudioSpecificConfig, raw AAC frames) of an ADTS stream."""
    h = adts[:7]
    object_type, rate_index = (h[2] >> 6) + 1, (h[2] >> 2) & 0x0F
    channels = ((h[2] & 1) << 2) | (h[3] >> 6)
    asc = bytes(((object_type << 3) | (rate_index >> 1), ((rate_index & 1) << 7) | (channels << 3)))
    frames, pos = [], 0
    while pos + 7 <= len(adts):
        length = ((adts[pos + 3] & 3) << 11) | (adts[pos + 4] << 3) | (adts[pos + 5] >> 5)
        header = 7 if adts[pos + 1] & 1 else 9
        frames.append(adts[pos + header : pos + length])
        pos += length
    return asc, frames


def has_x265(ffmpeg: str) -> bool:
    encoders = subprocess.run([ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    return "libx265" in encoders


def hevc_packets(ffmpeg: str, folder: Path, seconds: int = 6, size: str = "320x240") -> list[Packet]:
    """``seconds`` of HEVC (libx265, 25 fps, a keyframe a second, no B-frames) and AAC, as FLV packets
    in stream order, sequence headers first; ``folder`` holds the encoder's output."""
    folder.mkdir(parents=True, exist_ok=True)
    args = (
        f"-v error -t {seconds} -f lavfi -i testsrc=size={size}:rate={FPS} "
        f"-t {seconds} -f lavfi -i sine=sample_rate=44100 "
        "-map 0:v -c:v libx265 -preset ultrafast -pix_fmt yuv420p "
        f"-x265-params keyint={FPS}:min-keyint={FPS}:scenecut=0:bframes=0:log-level=error "
        f"-f hevc {folder / 'v.hevc'} -map 1:a -c:a aac -f adts {folder / 'a.aac'}"
    )
    subprocess.run([ffmpeg, "-y", *args.split()], check=True, timeout=60)
    record, frames = hevc_stream((folder / "v.hevc").read_bytes())
    asc, audio = adts_frames((folder / "a.aac").read_bytes())
    packets = [
        Packet(VIDEO, 0, b"\x1c\x00\x00\x00\x00" + record, config=True),
        Packet(AUDIO, 0, b"\xaf\x00" + asc, config=True),
    ]
    media = [
        Packet(VIDEO, i * 1000 // FPS, bytes((0x1C if key else 0x2C, 1, 0, 0, 0)) + au, key)
        for i, (key, au) in enumerate(frames)
    ]
    media += [Packet(AUDIO, k * 1024 * 1000 // 44100, b"\xaf\x01" + frame) for k, frame in enumerate(audio)]
    media.sort(key=lambda p: (p.timestamp, p.kind != VIDEO))
    return packets + media


class PacketPublisher:
    """The project's RTMP client publishing FLV packets as an encoder would: each at its timestamp,
    counted from the first packet sent."""

    def __init__(self, client: RtmpClient) -> None:
        self.client = client
        self._started: float | None = None
        self._sending: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, url: str) -> PacketPublisher:
        """Publish to ``rtmp://host:port/app/stream[?query]`` (a signed push URL, for instance)."""
        app_url, _, stream = url.partition("?")[0].rpartition("/")
        query = url.partition("?")[2]
        client = await connect(app_url)
        await client.publish(f"{stream}?{query}" if query else stream)
        return cls(client)

    async def send(self, packets: list[Packet]) -> None:
        loop = asyncio.get_running_loop()
        if self._started is None:
            self._started = loop.time()
        for packet in packets:
            delay = self._started + packet.timestamp / 1000 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.client.send_media(packet.kind, packet.timestamp, packet.payload)

    def send_in_background(self, packets: list[Packet]) -> None:
        self._sending = asyncio.create_task(self.send(packets))

    async def stop(self) -> None:
        """Stop sending and close the connection (as an encoder that quits or dies)."""
        if self._sending is not None:
            self._sending.cancel()
            await asyncio.gather(self._sending, return_exceptions=True)
        self.client.close()


def enhanced(packets: list[Packet]) -> list[Packet]:
    """The same packets with their video as Enhanced RTMP ``hvc1`` tags, as OBS 30 and FFmpeg 7 publish
    HEVC: the sequence start, then coded frames with their composition offsets."""
    out = []
    for packet in packets:
        payload = packet.payload
        if packet.kind == VIDEO and packet.config:
            payload = b"\x90hvc1" + payload[5:]
        elif packet.kind == VIDEO:
            payload = bytes((0x80 | (0x10 if packet.keyframe else 0x20) | 1,)) + b"hvc1" + payload[2:]
        out.append(Packet(packet.kind, packet.timestamp, payload, packet.keyframe, packet.config))
    return out
