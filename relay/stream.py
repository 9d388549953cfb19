"""A live stream: its headers, GOP cache, timestamps, viewers and the merged-write fan-out."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from relay import codecs
from relay.formats import OutputFormat
from relay.gop_cache import GopCache
from relay.packet import AUDIO, DATA, VIDEO, Packet
from relay.viewer import Viewer

log = logging.getLogger("minilive.relay")

# A timestamp that moves backwards by more than this, or forwards by this much more than the
# wall clock did, is an encoder reset rather than jitter: the stream's timeline is re-anchored.
BACKWARD_RESET_MS = 1000
FORWARD_RESET_MS = 10000


@dataclass(slots=True)
class RelaySettings:
    flush_window_ms: float = 20.0
    # Streams with at most this many viewers are written packet by packet, without the window.
    merge_min_viewers: int = 16
    gop_max_bytes: int = 16 * 1024 * 1024
    viewer_high_water: int = 1024 * 1024
    viewer_low_water: int = 256 * 1024
    max_behind_seconds: float = 10.0
    grace_seconds: float = 30.0
    publisher_takeover: bool = True


@dataclass(slots=True)
class PublisherInfo:
    protocol: str
    remote: str
    session_id: int
    query: str = ""
    started_at: float = field(default_factory=time.time)


class Sink(Protocol):
    """Something that consumes a stream's packets in order (HLS packaging, recording)."""

    def feed(self, packet: Packet) -> None: ...

    def new_publisher(self) -> None:
        """The packets that follow come from another publisher (another encoder, same timeline)."""
        ...

    def end(self) -> None: ...


class _Group:
    """The viewers that share one output format, and so one encoding of every batch."""

    __slots__ = ("format", "viewers")

    def __init__(self, fmt: OutputFormat) -> None:
        self.format = fmt
        self.viewers: dict[int, Viewer] = {}


class LiveStream:
    def __init__(self, app: str, name: str, settings: RelaySettings, on_idle: Any = None) -> None:
        self.app = app
        self.name = name
        self.settings = settings
        self.created_at = time.time()
        self.publisher: PublisherInfo | None = None
        self.publish_count = 0
        self.ended = False
        # headers and cache
        self.metadata: Packet | None = None
        self.meta_values: dict[str, Any] = {}
        self.video_config: Packet | None = None
        self.audio_config: Packet | None = None
        self.gop = GopCache(settings.gop_max_bytes)
        self.has_video = False
        self.has_audio = False
        self.video_codec = ""
        self.audio_codec = ""
        self.width = 0
        self.height = 0
        self.sample_rate = 0
        self.channels = 0
        # timeline
        self.last_ts = {AUDIO: -1, VIDEO: -1}
        self.last_wall = 0.0
        # fan-out
        self.groups: dict[OutputFormat, _Group] = {}
        self.viewer_count = 0
        self.sinks: list[Sink] = []
        self._pending: list[Packet] = []
        self._flush_handle: asyncio.Handle | None = None
        self._join_cache: dict[OutputFormat, tuple[tuple[int, int, int], bytes]] = {}
        self._config_version = 0
        # counters (rates are computed by the hub's ticker)
        self.bytes_in = 0
        self.bytes_out = 0
        self.video_frames = 0
        self.audio_frames = 0
        self.skipped = 0
        self.kicked_viewers = 0
        self.rates = {"bitrate_in": 0.0, "bitrate_out": 0.0, "fps": 0.0}
        self._rate_mark = (time.monotonic(), 0, 0, 0)

    @property
    def key(self) -> str:
        return f"{self.app}/{self.name}"

    def viewers_by_protocol(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for group in self.groups.values():
            if group.viewers:
                counts[group.format.name] = counts.get(group.format.name, 0) + len(group.viewers)
        return counts

    def viewers(self) -> list[Viewer]:
        return [v for g in self.groups.values() for v in g.viewers.values()]

    # ------------------------------------------------------------ ingest side

    def push(self, packet: Packet) -> None:
        """Queue one packet (already on the stream's timeline) for the next merged write."""
        self.bytes_in += len(packet.payload)
        pending = self._pending
        if not self.viewer_count and not pending:
            # Nobody to write to: keep the headers and GOP cache current, and feed the sinks.
            self._absorb([packet])
            return
        pending.append(packet)
        if len(pending) == 1:
            loop = asyncio.get_running_loop()
            # Merging writes saves a syscall per viewer per packet; with a handful of viewers
            # that is not worth the added latency, so they are written at once.
            if self.viewer_count > self.settings.merge_min_viewers:
                self._flush_handle = loop.call_later(self.settings.flush_window_ms / 1000.0, self.flush)
            else:
                self._flush_handle = loop.call_soon(self.flush)

    def set_metadata(self, payload: bytes, values: dict[str, Any]) -> None:
        self.meta_values = dict(values)
        self.push(Packet(DATA, max(0, *self.last_ts.values()), payload, config=True))

    # ------------------------------------------------------------ fan-out

    def flush(self) -> None:
        self._flush_handle = None
        batch = self._pending
        if not batch:
            return
        self._pending = []
        resume_at = self._absorb(batch)
        now = time.monotonic()
        dead: list[Viewer] = []
        high = self.settings.viewer_high_water
        low = self.settings.viewer_low_water
        for group in self.groups.values():
            if not group.viewers:
                continue
            fmt = group.format
            encode = fmt.encode
            data = fmt.frame(b"".join([encode(p) for p in batch]))
            resume_data: bytes | None = None
            size = len(data)
            written = 0
            for viewer in group.viewers.values():
                transport = viewer.transport
                if transport.is_closing():
                    dead.append(viewer)
                    continue
                if viewer.waiting:
                    if resume_at < 0 or transport.get_write_buffer_size() > low:
                        continue
                    if resume_data is None:
                        resume_data = (
                            data
                            if resume_at == 0
                            else fmt.frame(b"".join([encode(p) for p in _resume_packets(batch, resume_at)]))
                        )
                    viewer.waiting = False
                    viewer.behind_since = None
                    transport.write(resume_data)
                    viewer.bytes_out += len(resume_data)
                    written += len(resume_data)
                elif transport.get_write_buffer_size() > high:
                    viewer.waiting = True
                    viewer.behind_since = now
                    viewer.skips += 1
                    self.skipped += 1
                else:
                    transport.write(data)
                    viewer.bytes_out += size
                    written += size
            self.bytes_out += written
        for viewer in dead:
            self.detach(viewer)
            viewer.finish("closed")

    def _absorb(self, batch: list[Packet]) -> int:
        """Update headers and GOP cache; return where a waiting viewer may resume (-1: nowhere)."""
        resume_at = -1
        gop = self.gop
        for i, packet in enumerate(batch):
            kind = packet.kind
            if packet.config:
                self._config_version += 1
                if kind == VIDEO:
                    self.video_config = packet
                elif kind == AUDIO:
                    self.audio_config = packet
                else:
                    self.metadata = packet
                continue
            if kind == VIDEO:
                self.video_frames += 1
                if packet.keyframe and resume_at < 0:
                    resume_at = i
            elif kind == AUDIO:
                self.audio_frames += 1
                if not self.has_video and resume_at < 0:
                    resume_at = i
            gop.add(packet, self.has_video)
        for sink in self.sinks:
            for packet in batch:
                sink.feed(packet)
        return resume_at

    def publisher_started(self) -> None:
        """A publisher (the first, or the next one after a drop or a takeover) starts sending."""
        self.publish_count += 1
        if self.publish_count > 1:
            for sink in self.sinks:
                sink.new_publisher()

    # ------------------------------------------------------------ sinks

    def add_sink(self, sink: Sink) -> None:
        """Feed ``sink`` every packet from now on, starting with the headers and the GOP cache, so
        that it starts on a keyframe at once."""
        for packet in (self.metadata, self.video_config, self.audio_config):
            if packet is not None:
                sink.feed(packet)
        for packet in self.gop.packets:
            sink.feed(packet)
        self.sinks.append(sink)

    def remove_sink(self, sink: Sink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)

    # ------------------------------------------------------------ viewers

    def attach(self, viewer: Viewer) -> None:
        """Start a viewer: preamble, metadata, sequence headers and GOP cache in one write."""
        fmt = viewer.format
        group = self.groups.get(fmt)
        if group is None:
            group = self.groups[fmt] = _Group(fmt)
        start = fmt.preamble(self.has_audio or not self.has_video, self.has_video or not self.has_audio)
        start += self._join_bytes(fmt)
        if start:
            data = fmt.frame(start)
            viewer.write(data)
            self.bytes_out += len(data)
        # A video stream with no keyframe cached yet: skip ahead to the first one.
        viewer.waiting = self.has_video and not self.gop.packets
        group.viewers[viewer.id] = viewer
        self.viewer_count += 1

    def detach(self, viewer: Viewer) -> None:
        group = self.groups.get(viewer.format)
        if group is not None and group.viewers.pop(viewer.id, None) is not None:
            self.viewer_count -= 1

    def _join_bytes(self, fmt: OutputFormat) -> bytes:
        gop = self.gop
        token = (gop.generation, len(gop.packets), self._config_version)
        cached = self._join_cache.get(fmt)
        if cached is not None and cached[0] == token:
            return cached[1]
        # Sequence headers go out stamped with the first cached frame's time, so a player's
        # clock does not start with a jump from the stream's start to the live edge. Metadata
        # stays at 0: FFmpeg treats an onMetaData tag with another timestamp as a data track.
        start_ts = gop.packets[0].timestamp if gop.packets else max(0, *self.last_ts.values())
        packets = [self.metadata.retimed(0)] if self.metadata else []
        packets += [p.retimed(start_ts) for p in (self.video_config, self.audio_config) if p]
        packets.extend(gop.packets)
        data = b"".join([fmt.encode(p) for p in packets])
        self._join_cache[fmt] = (token, data)
        return data

    def check_viewers(self, now: float) -> None:
        """Drop closed viewers and the ones that stayed behind too long (called once a second)."""
        limit = self.settings.max_behind_seconds
        for viewer in self.viewers():
            if viewer.transport.is_closing():
                self.detach(viewer)
                viewer.finish("closed")
            elif viewer.behind_since is not None and now - viewer.behind_since > limit:
                log.info(
                    "stream %s: disconnecting %s viewer %s, behind for %.0f s",
                    self.key,
                    viewer.format.name,
                    viewer.remote,
                    now - viewer.behind_since,
                )
                self.kicked_viewers += 1
                self.detach(viewer)
                viewer.finish("too slow")

    def update_rates(self, now: float) -> None:
        then, bytes_in, bytes_out, frames = self._rate_mark
        elapsed = now - then
        if elapsed <= 0:
            return
        self.rates = {
            "bitrate_in": (self.bytes_in - bytes_in) * 8 / elapsed,
            "bitrate_out": (self.bytes_out - bytes_out) * 8 / elapsed,
            "fps": (self.video_frames - frames) / elapsed,
        }
        self._rate_mark = (now, self.bytes_in, self.bytes_out, self.video_frames)

    def end(self, reason: str) -> None:
        """The stream is over: flush what is queued, then give every viewer a clean end."""
        if self.ended:
            return
        self.flush()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self.ended = True
        for sink in self.sinks:
            sink.end()
        self.sinks = []
        for viewer in self.viewers():
            self.detach(viewer)
            viewer.finish(reason)
        self.gop.clear()
        self._join_cache.clear()

    # ------------------------------------------------------------ codec info

    def note_video_config(self, payload: bytes, codec: str) -> None:
        self.has_video = True
        self.video_codec = codec or self.video_codec
        parse = {"h264": codecs.avc_dimensions, "hevc": codecs.hevc_dimensions}.get(codec)
        size = parse(payload) if parse else None
        if size:
            self.width, self.height = size

    def note_audio_config(self, payload: bytes, codec: str) -> None:
        self.has_audio = True
        self.audio_codec = codec or self.audio_codec
        if codec == "aac":
            cfg = codecs.aac_config(payload)
            if cfg:
                self.sample_rate, self.channels = cfg

    def info(self) -> dict[str, Any]:
        now = time.time()
        width = self.width or _dimension(self.meta_values.get("width"))
        height = self.height or _dimension(self.meta_values.get("height"))
        publisher = self.publisher
        return {
            "app": self.app,
            "name": self.name,
            "live": publisher is not None,
            "publisher": None
            if publisher is None
            else {
                "protocol": publisher.protocol,
                "remote": publisher.remote,
                "since": publisher.started_at,
                "uptime": round(now - publisher.started_at, 3),
            },
            "video": {
                "codec": self.video_codec,
                "width": width,
                "height": height,
                "fps": round(self.rates["fps"], 2),
            }
            if self.has_video
            else None,
            "audio": {"codec": self.audio_codec, "sample_rate": self.sample_rate, "channels": self.channels}
            if self.has_audio
            else None,
            "bitrate_in": round(self.rates["bitrate_in"]),
            "bitrate_out": round(self.rates["bitrate_out"]),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "viewers": self.viewer_count,
            "viewers_by_protocol": self.viewers_by_protocol(),
            "viewers_skipped_to_keyframe": self.skipped,
            "viewers_disconnected_slow": self.kicked_viewers,
            "publish_count": self.publish_count,
            "uptime": round(now - self.created_at, 3),
        }


def _dimension(value: Any) -> int:
    """A picture dimension from the publisher's onMetaData, which may hold anything."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1 << 16:
        return int(value)
    return 0


def _resume_packets(batch: list[Packet], start: int) -> list[Packet]:
    """A batch from its first keyframe on, keeping any header change that came before it."""
    return [p for p in batch[:start] if p.config] + batch[start:]
