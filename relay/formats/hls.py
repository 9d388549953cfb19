"""HLS and Low-Latency HLS packaging from the hub's packets, by remuxing to MPEG-TS or fMP4 (CMAF).

:class:`Segmenter` decides where segments and partial segments begin (segments on keyframes at
the target duration; parts at video frames about every ``part_seconds``) and produces their
bytes; the live playlist (:class:`LivePlaylist`, in memory) and the recorder (on disk) both use it.
A segment's bytes are exactly the concatenation of its parts' bytes. In fMP4 each part is one
fragment, and the segments share an init segment (EXT-X-MAP), a new one after each change of codec
configuration. TS is the default; HEVC always gets fMP4 (our TS muxer carries H.264 only).

Playlists follow RFC 8216 and its successor draft (LL-HLS): EXT-X-TARGETDURATION never below any
rounded EXTINF, EXT-X-PROGRAM-DATE-TIME, EXT-X-DISCONTINUITY when the publisher changes or the codec
configuration does, EXT-X-PART-INF / EXT-X-PART / EXT-X-PRELOAD-HINT / EXT-X-SERVER-CONTROL with
blocking playlist reload.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from relay.formats.codecs import video_info
from relay.formats.fmp4 import Fmp4Muxer
from relay.formats.mpegts import TsMuxer
from relay.formats.packet import AUDIO, DATA, VIDEO, Packet

# The video the muxers carry: H.264 (TS and fMP4) and HEVC (fMP4).
MUXED_VIDEO = ("h264", "hevc")


class UnsupportedCodec(ValueError):
    """Video that no muxer here carries (VP8, VP9, AV1). Raised from a sink, it detaches the packager
    or recording, and HLS answers 503 with this message, instead of segments without their video."""


@dataclass(slots=True)
class HlsSettings:
    segment_seconds: float = 2.0
    part_seconds: float = 0.5  # 0: plain HLS, no partial segments
    window: int = 6  # segments listed in the live playlist
    # Segments kept after they leave the playlist, for clients still fetching them (RFC 8216 §6.2.2).
    keep_after_window: int = 4
    idle_seconds: float = 60.0  # a packager nobody asked for this long is dropped
    blocking_timeout_seconds: float = 6.0
    # The first playlist request of a stream waits this long for its first complete segment.
    first_segment_wait_seconds: float = 12.0
    # A player that asked for nothing this long is no longer counted in the stream's HLS audience.
    audience_seconds: float = 10.0
    format: str = "ts"  # "ts" or "fmp4"; HEVC streams use fmp4 whatever this says


@dataclass(slots=True)
class Part:
    index: int
    data: bytes | memoryview
    duration: float
    independent: bool


@dataclass(slots=True, eq=False)
class InitSegment:
    version: int  # in its URI: each codec configuration gets its own
    data: bytes


@dataclass(slots=True)
class Segment:
    """A segment is its parts: served as they are, one after the other, never joined into a copy."""

    msn: int
    start_ts: int  # stream milliseconds of its first packet
    wall_start: float  # Unix time of its first packet (EXT-X-PROGRAM-DATE-TIME)
    discontinuity: bool
    parts: list[Part] = field(default_factory=list)
    duration: float = 0.0
    complete: bool = False
    init: InitSegment | None = None  # fMP4: the init segment its fragments need; None for TS

    @property
    def pieces(self) -> list[bytes | memoryview]:
        """The segment's bytes, in its parts' pieces."""
        return [p.data for p in self.parts]

    @property
    def data(self) -> bytes | memoryview:
        """The whole segment in one buffer: its only part as it is, or its parts joined (a copy)."""
        pieces = self.pieces
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def complete_at(self, end_ts: int) -> None:
        self.duration = max(end_ts - self.start_ts, 0) / 1000
        self.complete = True


class Muxer(Protocol):
    """What the Segmenter asks of :class:`~relay.formats.mpegts.TsMuxer` and :class:`~relay.formats.fmp4.Fmp4Muxer`."""

    @property
    def has_video(self) -> bool: ...

    def configure(self, packet: Packet) -> None: ...

    def part(self, packets: list[Packet], end_ts: int, independent: bool) -> bytes | memoryview:
        """A part's (or a segment's) frames as one piece of media, ending at ``end_ts`` (ms)."""
        ...


class Segmenter:
    """Cuts one stream into segments and parts. Feed it packets in stream order; the configuration of
    video it cannot mux raises UnsupportedCodec."""

    def __init__(
        self,
        segment_seconds: float,
        part_seconds: float,
        on_part: Callable[[Segment, Part], None] | None = None,
        on_segment: Callable[[Segment], None] | None = None,
        fmp4: bool = False,
        on_open: Callable[[Segment], None] | None = None,
    ) -> None:
        self.segment_ms = segment_seconds * 1000
        self.part_ms = part_seconds * 1000 if part_seconds > 0 else math.inf
        self.on_part = on_part
        self.on_segment = on_segment
        self.on_open = on_open
        self.fmp4 = fmp4
        self.muxer: Muxer | None = None
        self._video = False  # the muxer's: whether keyframes (or else audio frames) start segments
        self._last_muxer: Muxer | None = None
        self.init: InitSegment | None = None
        self._inits = 0
        self.video_config: bytes | None = None
        self.audio_config: bytes | None = None
        self.has_video = False
        self.has_audio = False
        self.segment: Segment | None = None
        self.next_msn = 0
        self._part_packets: list[Packet] = []  # the open part's frames, muxed when it closes
        self._part_start = 0
        self._part_independent = False
        self._pending_discontinuity = False
        self._last_ts = 0

    def discontinuity(self) -> None:
        """The next segment starts a new timeline or publisher (EXT-X-DISCONTINUITY)."""
        self._pending_discontinuity = True

    def feed(self, packet: Packet) -> None:
        kind = packet.kind
        segment = self.segment
        if packet.config or kind == DATA or segment is None:
            self._feed_other(packet)
            return
        timestamp = packet.timestamp
        video = self._video
        if (packet.keyframe if video else kind == AUDIO) and (
            timestamp - segment.start_ts >= self.segment_ms or self._pending_discontinuity
        ):
            self._close_part(timestamp)
            self._close_segment(timestamp)
            self._open_segment(packet)
        elif timestamp - self._part_start >= self.part_ms and self._part_packets and (kind == VIDEO or not video):
            # Parts end where the next video frame begins: an fMP4 fragment's last frame lasts until it.
            self._close_part(timestamp)
            self._open_part(timestamp, packet.keyframe)
        # Muxed when the part closes: a part's frames in one go cost much less than one at a time
        # between other work, and a part is not served before it is complete anyway.
        self._part_packets.append(packet)
        if timestamp > self._last_ts:
            self._last_ts = timestamp

    def _feed_other(self, packet: Packet) -> None:
        """Codec configurations, script data, and media before the first segment opens."""
        kind = packet.kind
        if kind == DATA:
            return
        if packet.config:
            self._configure(packet)
            return
        if kind == VIDEO:
            self.has_video = True
        elif kind == AUDIO:
            self.has_audio = True
        if self.muxer is None:
            if not self._ready():
                return
            self.muxer = self._new_muxer()
            self._video = self.muxer.has_video
        if not (packet.keyframe if self._video else kind == AUDIO):
            return  # a segment must start with a keyframe
        self._open_segment(packet)
        self._part_packets.append(packet)
        self._last_ts = max(self._last_ts, packet.timestamp)

    def _ready(self) -> bool:
        # Start once the configs of the tracks seen so far are known (audio-only and video-only work).
        if self.video_config is None and self.audio_config is None:
            return False
        return not (self.has_video and self.video_config is None)

    def _new_muxer(self) -> Muxer:
        video, audio = self.video_config, self.audio_config
        # Once fMP4, always: an EXT-X-MAP holds for every segment after it, TS ones too.
        self.fmp4 = self.fmp4 or (video is not None and video_info(video).codec == "hevc")
        muxer: Muxer = Fmp4Muxer() if self.fmp4 else TsMuxer(video is not None, audio is not None)
        if isinstance(muxer, TsMuxer) and isinstance(self._last_muxer, TsMuxer):
            # Continuity counters run on across a codec change, as across any segment boundary.
            muxer.continue_from(self._last_muxer)
        self._last_muxer = muxer
        if video:
            muxer.configure(Packet(VIDEO, 0, video, config=True))
        if audio:
            muxer.configure(Packet(AUDIO, 0, audio, config=True))
        self.init = None
        if isinstance(muxer, Fmp4Muxer):
            self.init = InitSegment(self._inits, muxer.init_segment())
            self._inits += 1
        return muxer

    def _configure(self, packet: Packet) -> None:
        if packet.kind == VIDEO:
            codec = video_info(packet.payload).codec
            if codec not in MUXED_VIDEO:
                name = codec.upper() or "this"
                raise UnsupportedCodec(f"{name} video cannot be packaged as HLS (H.264 and HEVC can)")
            previous, self.video_config = self.video_config, packet.payload
        elif packet.kind == AUDIO:
            previous, self.audio_config = self.audio_config, packet.payload
        else:
            return
        if previous is not None and previous != packet.payload:
            # New codec parameters: the current segment ends here, the next one starts afresh.
            self._close_part(self._last_ts)
            self._close_segment(self._last_ts)
            self.segment = None
            self.muxer = None
            self._pending_discontinuity = True

    def _open_segment(self, packet: Packet) -> None:
        segment = self.segment = Segment(
            self.next_msn, packet.timestamp, time.time(), self._pending_discontinuity, init=self.init
        )
        self.next_msn += 1
        self._pending_discontinuity = False
        self._open_part(packet.timestamp, True)
        if self.on_open is not None:
            self.on_open(segment)

    def _open_part(self, timestamp: int, independent: bool) -> None:
        self._part_start = timestamp
        # TS program tables lead every independent part, so a player may start at any of them.
        self._part_independent = independent

    def _close_part(self, end_ts: int) -> None:
        segment = self.segment
        if segment is None or self.muxer is None:
            return
        data = self.muxer.part(self._part_packets, end_ts, self._part_independent)
        self._part_packets = []
        if not data:
            return
        duration = max(end_ts - self._part_start, 0) / 1000
        part = Part(len(segment.parts), data, duration, self._part_independent)
        segment.parts.append(part)
        if self.on_part is not None:
            self.on_part(segment, part)

    def _close_segment(self, end_ts: int) -> None:
        segment = self.segment
        if segment is None or segment.complete:
            return
        segment.complete_at(end_ts)
        if self.on_segment is not None:
            self.on_segment(segment)

    def finish(self) -> None:
        """The stream ended: close what is open."""
        self._close_part(self._last_ts)
        self._close_segment(self._last_ts)
        self.segment = None


def _fmt_duration(seconds: float) -> str:
    return f"{seconds:.3f}"


@functools.lru_cache(maxsize=1024)  # every rendering lists the same few segments' dates
def _date(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


class LivePlaylist:
    """A stream's live HLS state in memory: recent segments and parts, the playlist, blocking reloads."""

    def __init__(self, settings: HlsSettings, prefix: str) -> None:
        self.settings = settings
        # Unique per packager, so that cached URLs of an earlier run of the stream never collide.
        self.prefix = prefix
        self.segments: list[Segment] = []
        self.segmenter = Segmenter(
            settings.segment_seconds,
            settings.part_seconds,
            self._on_part,
            self._on_segment,
            fmp4=settings.format == "fmp4",
            on_open=self._on_open,
        )
        # Packets go straight to the segmenter, with no call of ours in between.
        self.feed: Callable[[Packet], None] = self.segmenter.feed
        self.last_request = time.monotonic()
        self.ended = False
        # Blocking reloads and preload-hinted requests: (msn, part, future), each woken only once
        # what it waits for exists (or the stream ends), not at every change.
        self._waiters: list[tuple[int, int | None, asyncio.Future[None]]] = []
        self._target = max(1, math.ceil(settings.segment_seconds))
        self._version = 0  # bumped on every change: what the rendered playlist is keyed on
        self._rendered: tuple[int, str, str] = (-1, "", "")  # (version, query, text)
        # EXT-X-DISCONTINUITY-SEQUENCE never goes down (RFC 8216 6.2.2): it counts the segments trimmed too.
        self._discontinuities_dropped = 0

    # ------------------------------------------------------------ input

    def new_publisher(self) -> None:
        self.segmenter.discontinuity()

    def finish(self) -> None:
        self.segmenter.finish()
        self.ended = True
        self._notify()

    def _on_open(self, segment: Segment) -> None:
        self.segments.append(segment)
        self._trim()
        self._notify()

    def _on_part(self, segment: Segment, part: Part) -> None:
        self._notify()

    def _on_segment(self, segment: Segment) -> None:
        self._target = max(self._target, round(segment.duration))
        self._notify()

    def _notify(self) -> None:
        self._version += 1
        if self._waiters:
            waiting = []
            for waiter in self._waiters:
                msn, part, future = waiter
                if self.ended or self.has(msn, part):
                    if not future.done():
                        future.set_result(None)
                else:
                    waiting.append(waiter)
            self._waiters = waiting

    def _trim(self) -> None:
        keep = self.settings.window + self.settings.keep_after_window + 1
        if len(self.segments) > keep:
            dropped = self.segments[: len(self.segments) - keep]
            self._discontinuities_dropped += sum(segment.discontinuity for segment in dropped)
            del self.segments[: len(self.segments) - keep]

    # ------------------------------------------------------------ lookups

    def find(self, msn: int) -> Segment | None:
        for segment in reversed(self.segments):
            if segment.msn == msn:
                return segment
        return None

    def find_init(self, version: int) -> InitSegment | None:
        for segment in reversed(self.segments):
            if segment.init is not None and segment.init.version == version:
                return segment.init
        return None

    def has(self, msn: int, part: int | None) -> bool:
        segment = self.find(msn)
        if segment is None:
            return bool(self.segments) and msn < self.segments[0].msn
        if part is None:
            return segment.complete
        if part < len(segment.parts):
            return True
        # Past the last part of a finished segment: that is the next segment's first part.
        return segment.complete and self.has(msn + 1, 0)

    async def wait_for(self, msn: int, part: int | None, timeout: float) -> bool:
        """Until segment ``msn`` (part ``part``) exists; False on timeout or when the stream ended."""
        if self.has(msn, part):
            return True
        if self.ended:
            return False
        future = asyncio.get_running_loop().create_future()
        waiter = (msn, part, future)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            return False
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return self.has(msn, part)

    async def wait_for_segment(self, timeout: float) -> bool:
        """Until at least one segment is complete; False on timeout or when the stream ended without one."""
        if any(segment.complete for segment in self.segments):
            return True
        msn = self.segments[0].msn if self.segments else self.segmenter.next_msn
        return await self.wait_for(msn, None, timeout)

    @property
    def last_msn(self) -> int:
        return self.segments[-1].msn if self.segments else -1

    # ------------------------------------------------------------ playlist

    def playlist(self, query: str = "") -> str:
        """The playlist text, rendered once per change (every waiting client gets the same string).

        A non-empty ``query`` is added to every URI listed: players resolve relative URIs against the
        playlist's URL without its query, so a signed play URL's signature is carried on this way (the
        viewers of one room share one signed query, hence one rendering)."""
        version, rendered_query, text = self._rendered
        if version != self._version or rendered_query != query:
            text = self._render(f"?{query}" if query else "")
            self._rendered = (self._version, query, text)
        return text

    def _render(self, suffix: str) -> str:
        s = self.settings
        listed = [seg for seg in self.segments if seg.complete or seg is self.segments[-1]]
        complete = [seg for seg in listed if seg.complete]
        window = complete[-s.window :]
        first_msn = window[0].msn if window else (listed[0].msn if listed else 0)
        shown = window + ([listed[-1]] if listed and not listed[-1].complete else [])
        low_latency = s.part_seconds > 0
        fmp4 = any(seg.init is not None for seg in shown)
        version = 9 if low_latency else 7 if fmp4 else 3
        target = self._target
        lines = ["#EXTM3U", f"#EXT-X-VERSION:{version}", f"#EXT-X-TARGETDURATION:{target}"]
        if low_latency:
            part_target = s.part_seconds
            lines.append(
                f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={3 * part_target:.3f},"
                f"HOLD-BACK={3 * target:.3f}"
            )
            lines.append(f"#EXT-X-PART-INF:PART-TARGET={part_target:.3f}")
        lines.append(f"#EXT-X-MEDIA-SEQUENCE:{first_msn}")
        discontinuities = self._discontinuities_dropped + sum(
            1 for seg in self.segments if seg.discontinuity and seg.msn < first_msn
        )
        if discontinuities:
            lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuities}")
        # Parts are listed for the last few segments only (the spec asks for at least the last three
        # target durations' worth).
        parts_from = shown[-3].msn if len(shown) >= 3 else (shown[0].msn if shown else 0)
        init: InitSegment | None = None
        for seg in shown:
            if seg.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            if seg.init is not None and seg.init is not init:
                lines.append(f'#EXT-X-MAP:URI="{self.init_uri(seg.init)}{suffix}"')
            init = seg.init
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_date(seg.wall_start)}")
            ext = extension(seg)
            if low_latency and seg.msn >= parts_from:
                for part in seg.parts:
                    attrs = f'DURATION={part.duration:.3f},URI="{self.part_uri(seg.msn, part.index, ext)}{suffix}"'
                    if part.independent:
                        attrs += ",INDEPENDENT=YES"
                    lines.append(f"#EXT-X-PART:{attrs}")
            if seg.complete:
                lines.append(f"#EXTINF:{_fmt_duration(seg.duration)},")
                lines.append(self.segment_uri(seg.msn, ext) + suffix)
        if low_latency and shown and not self.ended:
            current = shown[-1]
            next_msn, next_part = (current.msn + 1, 0) if current.complete else (current.msn, len(current.parts))
            hint = self.part_uri(next_msn, next_part, extension(current)) + suffix
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{hint}"')
        if self.ended:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"

    def segment_uri(self, msn: int, ext: str) -> str:
        return f"{self.prefix}-{msn}.{ext}"

    def part_uri(self, msn: int, part: int, ext: str) -> str:
        return f"{self.prefix}-{msn}.{part}.{ext}"

    def init_uri(self, init: InitSegment) -> str:
        return f"{self.prefix}-init{init.version}.mp4"


def extension(segment: Segment) -> str:
    """The file extension of a segment's format: ``ts``, or ``m4s`` for fMP4."""
    return "ts" if segment.init is None else "m4s"
