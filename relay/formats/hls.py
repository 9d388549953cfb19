"""HLS and Low-Latency HLS packaging from the hub's packets, by remuxing to MPEG-TS or fMP4 (CMAF).

:class:`Segmenter` decides where segments and partial segments begin (segments on keyframes at
the target duration; parts at video frames about every ``part_seconds``) and produces their
bytes; the live playlist (:class:`LivePlaylist`, in memory) and the recorder (on disk) both use it.
A segment's bytes are exactly the concatenation of its parts' bytes. In fMP4 each part is one
fragment, and the segments share an init segment (EXT-X-MAP), a new one after each change of codec
configuration. TS is the default; HEVC always gets fMP4 (our TS muxer carries H.264 only).

A rendition's playlist follows its source's (:class:`FollowingSegmenter`): its segments begin at the
keyframes where the source's begin and take their media sequence numbers, dates and durations, and
its parts end where the source's do, so a player switches between them at any segment or part.

Playlists follow RFC 8216 and its successor draft (LL-HLS): EXT-X-TARGETDURATION never below any
rounded EXTINF, EXT-X-PROGRAM-DATE-TIME, EXT-X-DISCONTINUITY when the publisher changes or the codec
configuration does, EXT-X-PART-INF / EXT-X-PART / EXT-X-PRELOAD-HINT / EXT-X-SERVER-CONTROL with
blocking playlist reload, EXT-X-RENDITION-REPORT, EXT-X-GAP; and the master playlist of a stream and
its renditions (:func:`master_playlist`).
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from relay.formats import aac, h264, hevc
from relay.formats.codecs import coded_frame, video_info
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
    start: int = 0  # stream milliseconds where it was cut: where a rendition cuts its own

    @property
    def end(self) -> int:
        """Stream milliseconds where the next part begins."""
        return self.start + round(self.duration * 1000)


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
    # Presentation time of its first picture (start_ts plus the keyframe's composition offset): what a
    # rendition's keyframe is matched on, since a rendition's timestamps are its source's picture times.
    start_pts: int = 0
    # RFC 8216 6.2.2: the EXT-X-DISCONTINUITY tags up to this segment's, over the stream's whole life.
    discontinuity_sequence: int = 0
    gap: bool = False  # EXT-X-GAP: a rendition has nothing for this span of its source

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
        self._discontinuities = 0
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
        self._begin(packet)

    def _begin(self, packet: Packet) -> None:
        """A media packet while no segment is open: the first segment starts at a keyframe (without
        video, at any audio frame)."""
        if not (packet.keyframe if self._video else packet.kind == AUDIO):
            return
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
        discontinuity = self._pending_discontinuity
        self._discontinuities += discontinuity
        segment = Segment(
            self.next_msn,
            packet.timestamp,
            time.time(),
            discontinuity,
            init=self.init,
            start_pts=presentation_time(packet),
            discontinuity_sequence=self._discontinuities,
        )
        self.next_msn += 1
        self._start_segment(segment)

    def _start_segment(self, segment: Segment) -> None:
        self.segment = segment
        self._pending_discontinuity = False
        self._open_part(segment.start_ts, True)
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
        part = Part(len(segment.parts), data, duration, self._part_independent, self._part_start)
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

    def close(self) -> None:
        """Nothing more will be fed: drop the callbacks. They are the owner's bound methods, and the
        owner holds this segmenter: a cycle that the collector frees only in a full collection, which
        the server makes rare (``gc.freeze``, high thresholds), with every segment and part the owner
        keeps (a stopped HLS packager's window: megabytes a stream; closed recordings piled up in the
        soak, issue 16)."""
        self.on_part = self.on_segment = self.on_open = None


def presentation_time(packet: Packet) -> int:
    """A packet's presentation time in stream milliseconds: its timestamp (the decoding time), plus the
    composition offset of an H.264 or HEVC frame."""
    frame = coded_frame(packet.payload) if packet.kind == VIDEO else None
    return packet.timestamp + frame[0] if frame is not None else packet.timestamp


class FollowingSegmenter(Segmenter):
    """Cuts a rendition of a stream where its source's :class:`LivePlaylist` (the leader) was cut.

    A rendition keeps its source's timestamps, and its keyframes are pictures the source has keyframes
    at; the rendition runs behind the source, so the source has always cut first. A rendition segment
    opens only at a keyframe whose presentation time is a source segment's ``start_pts``, and takes that
    segment's media sequence number, date and discontinuity sequence (its EXTINF too, once the source's
    is known); its other keyframes are appended as any frame, and before its first segment it waits
    (packets are dropped). A part ends at the first video frame at or after the end of the source's
    part in the same place of the segment. An audio-only rendition opens a segment at its first audio
    frame at or after a source segment's start. When a rendition skipped source segments (it had no
    keyframe where they began: a worker restarting, a frame that did not decode), they are listed as
    EXT-X-GAP segments, so that media sequence numbers stay the source's.
    """

    def __init__(self, leader: LivePlaylist, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.leader = leader
        self.following: Segment | None = None  # the source segment the open segment mirrors
        self._source_parts = 0  # the parts of ``following`` whose end the open segment has passed
        self._last_audio_ts: int | None = None

    def feed(self, packet: Packet) -> None:
        # The same steps as Segmenter.feed, whose lines are not shared through a helper: that one is the
        # packaging hot path of every stream, kept to one call per packet.
        kind = packet.kind
        if packet.config or kind == DATA or self.segment is None:
            self._feed_other(packet)
            return
        timestamp = packet.timestamp
        # Cuts happen at video frames: a rendition's audio is passed through at once and runs ahead of
        # its pictures, which are decoded and encoded first.
        if kind == VIDEO or not self._video:
            source = self._source_starting(packet)
            if source is not None:
                self._close_part(timestamp)
                self._close_segment(timestamp)
                self._follow(source, packet)
            elif self._part_packets and self._source_part_ended(timestamp):
                self._close_part(timestamp)
                self._open_part(timestamp, packet.keyframe)
        self._part_packets.append(packet)
        if timestamp > self._last_ts:
            self._last_ts = timestamp

    def _begin(self, packet: Packet) -> None:
        source = self._source_starting(packet)
        if source is None:
            return
        self._follow(source, packet)
        self._part_packets.append(packet)
        self._last_ts = max(self._last_ts, packet.timestamp)

    def _source_starting(self, packet: Packet) -> Segment | None:
        """The source segment (after the one followed now) that starts at ``packet``, if one does."""
        after = self.following.msn if self.following is not None else -1
        if self._video:
            if not packet.keyframe:
                return None
            pts = presentation_time(packet)
            for source in reversed(self.leader.segments):
                if source.msn <= after:
                    break
                if source.start_pts == pts and not source.gap:
                    return source
            return None
        if packet.kind != AUDIO:
            return None
        previous, self._last_audio_ts = self._last_audio_ts, packet.timestamp
        if previous is None:
            return None  # where the span began is unknown: the next source segment starts the first
        for source in reversed(self.leader.segments):
            if source.msn <= after or source.start_ts <= previous:
                break
            if source.start_ts <= packet.timestamp:
                return source
        return None

    def _source_part_ended(self, timestamp: int) -> bool:
        """Whether the open part ends before this frame: the source's part at the same place of the
        segment ended (past the source segment's end, about every part_seconds as a plain segmenter)."""
        source, segment = self.following, self.segment
        if source is None or segment is None:
            return False
        on_source_clock = timestamp - segment.start_ts + source.start_ts
        parts = source.parts
        passed = self._source_parts
        while passed < len(parts) and parts[passed].end <= on_source_clock:
            passed += 1
        if passed > self._source_parts:
            self._source_parts = passed
            return True
        return passed == len(parts) and source.complete and timestamp - self._part_start >= self.part_ms

    def _close_segment(self, end_ts: int) -> None:
        source, segment = self.following, self.segment
        if source is not None and source.complete and segment is not None:
            end_ts = segment.start_ts + round(source.duration * 1000)  # the source's EXTINF, to the letter
        super()._close_segment(end_ts)

    def _follow(self, source: Segment, packet: Packet) -> None:
        """Open the segment that mirrors ``source`` at ``packet``, after gaps for the source segments skipped."""
        if self.following is not None:
            for msn in range(self.following.msn + 1, source.msn):
                self._gap(msn)
        self.following = source
        self._source_parts = 0
        self.next_msn = source.msn + 1
        self._start_segment(
            Segment(
                source.msn,
                packet.timestamp,
                source.wall_start,
                source.discontinuity,
                init=self.init,
                start_pts=presentation_time(packet),
                discontinuity_sequence=source.discontinuity_sequence,
            )
        )

    def _gap(self, msn: int) -> None:
        source = self.leader.find(msn)
        if source is None:  # gone from the source's list already: its place, its length unknown
            source = Segment(msn, 0, time.time(), False, duration=self.segment_ms / 1000)
        gap = Segment(
            msn,
            source.start_ts,
            source.wall_start,
            source.discontinuity,
            duration=source.duration,
            complete=True,
            discontinuity_sequence=source.discontinuity_sequence,
            gap=True,
        )
        if self.on_open is not None:
            self.on_open(gap)
        if self.on_segment is not None:
            self.on_segment(gap)


def _fmt_duration(seconds: float) -> str:
    return f"{seconds:.3f}"


@functools.lru_cache(maxsize=1024)  # every rendering lists the same few segments' dates
def _date(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


class LivePlaylist:
    """A stream's live HLS state in memory: recent segments and parts, the playlist, blocking reloads."""

    def __init__(self, settings: HlsSettings, prefix: str, leader: LivePlaylist | None = None) -> None:
        """``leader``: the source's playlist, when this is a rendition's that follows it."""
        self.settings = settings
        # Unique per packager, so that cached URLs of an earlier run of the stream never collide.
        self.prefix = prefix
        self.leader = leader
        self.segments: list[Segment] = []
        args = (settings.segment_seconds, settings.part_seconds, self._on_part, self._on_segment)
        kwargs: dict[str, Any] = {"fmp4": settings.format == "fmp4", "on_open": self._on_open}
        self.segmenter = FollowingSegmenter(leader, *args, **kwargs) if leader else Segmenter(*args, **kwargs)
        # Packets go straight to the segmenter, with no call of ours in between.
        self.feed: Callable[[Packet], None] = self.segmenter.feed
        self.last_request = time.monotonic()
        self.ended = False
        # Blocking reloads and preload-hinted requests: (msn, part, future), each woken only once
        # what it waits for exists (or the stream ends), not at every change.
        self._waiters: list[tuple[int, int | None, asyncio.Future[None]]] = []
        self._target = max(1, math.ceil(settings.segment_seconds))
        self._version = 0  # bumped on every change: what the rendered playlist is keyed on
        # (version, query, rendition reports, text)
        self._rendered: tuple[int, str, tuple[RenditionReport, ...], str] = (-1, "", (), "")

    # ------------------------------------------------------------ input

    def new_publisher(self) -> None:
        self.segmenter.discontinuity()

    def finish(self) -> None:
        self.segmenter.finish()
        self.ended = True
        self._notify()

    def close(self) -> None:
        """No more packets (its packager stopped): freed by reference counting once unreferenced."""
        self.segmenter.close()

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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not any(segment.complete for segment in self.segments):
            # A rendition's first segment number is its source's, unknown before it opens: waiting for
            # segment 0 ends when any opens, and the next round waits for that one to complete.
            msn = self.segments[0].msn if self.segments else self.segmenter.next_msn
            if not await self.wait_for(msn, None, deadline - loop.time()):
                return False
        return True

    @property
    def last_msn(self) -> int:
        """The newest segment's number; before a rendition's first segment, its source's (whose numbers
        it will take: a player switching to it asks for those)."""
        if self.segments:
            return self.segments[-1].msn
        return self.leader.last_msn if self.leader is not None else -1

    def report(self, uri: str) -> RenditionReport | None:
        """This playlist as another playlist's EXT-X-RENDITION-REPORT names it at ``uri``: its last
        segment and that segment's last part (the previous segment's while the last has none yet)."""
        for segment in reversed(self.segments):
            if segment.parts:
                return RenditionReport(uri, segment.msn, len(segment.parts) - 1)
        return None

    def bitrates(self) -> tuple[int, int] | None:
        """(peak, average) bit/s of the complete segments the playlist lists, as RFC 8216 defines
        BANDWIDTH and AVERAGE-BANDWIDTH (container overhead included); None before one is complete."""
        listed = [s for s in self.segments if s.complete][-self.settings.window :]
        rates = [(sum(len(p.data) for p in s.parts) * 8, s.duration) for s in listed if s.parts]
        total = sum(seconds for _, seconds in rates)
        if not total:
            return None
        return round(max(bits / seconds for bits, seconds in rates if seconds)), round(sum(b for b, _ in rates) / total)

    # ------------------------------------------------------------ playlist

    def playlist(self, query: str = "", reports: tuple[RenditionReport, ...] = ()) -> str:
        """The playlist text, rendered once per change (every waiting client gets the same string).

        A non-empty ``query`` is added to every URI listed: players resolve relative URIs against the
        playlist's URL without its query, so a signed play URL's signature is carried on this way (the
        viewers of one room share one signed query, hence one rendering). ``reports``: the stream's
        other renditions (LL-HLS EXT-X-RENDITION-REPORT), their URIs relative to this playlist."""
        version, rendered_query, rendered_reports, text = self._rendered
        if version != self._version or rendered_query != query or rendered_reports != reports:
            text = self._render(f"?{query}" if query else "", reports)
            self._rendered = (self._version, query, reports, text)
        return text

    def _render(self, suffix: str, reports: tuple[RenditionReport, ...]) -> str:
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
        # Never goes down (RFC 8216 6.2.2): it counts the discontinuities of segments long trimmed too.
        discontinuities = shown[0].discontinuity_sequence - shown[0].discontinuity if shown else 0
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
                if seg.gap:
                    lines.append("#EXT-X-GAP")
                lines.append(f"#EXTINF:{_fmt_duration(seg.duration)},")
                lines.append(self.segment_uri(seg.msn, ext) + suffix)
        if low_latency and shown and not self.ended:
            current = shown[-1]
            next_msn, next_part = (current.msn + 1, 0) if current.complete else (current.msn, len(current.parts))
            hint = self.part_uri(next_msn, next_part, extension(current)) + suffix
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{hint}"')
            for report in reports:
                lines.append(
                    f'#EXT-X-RENDITION-REPORT:URI="{report.uri}{suffix}",LAST-MSN={report.last_msn},'
                    f"LAST-PART={report.last_part}"
                )
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


@dataclass(slots=True, frozen=True)
class RenditionReport:
    """An EXT-X-RENDITION-REPORT: where another rendition of the stream is, so that an LL-HLS player
    switching to it asks at once for the part it needs (a blocking reload of that playlist)."""

    uri: str  # relative to the playlist that carries the report
    last_msn: int
    last_part: int


@dataclass(slots=True)
class Variant:
    """One EXT-X-STREAM-INF of a master playlist (RFC 8216 4.3.4.2)."""

    uri: str
    bandwidth: int  # peak bit/s
    average_bandwidth: int
    codecs: list[str]  # RFC 6381, e.g. ["avc1.64001f", "mp4a.40.2"]
    width: int = 0  # 0: no RESOLUTION (audio only)
    height: int = 0
    frame_rate: float = 0.0  # 0: no FRAME-RATE


def master_playlist(variants: list[Variant]) -> str:
    """A master playlist listing ``variants`` in order (players take the first as the one to start with
    unless they choose by bandwidth)."""
    lines = ["#EXTM3U"]
    for v in variants:
        attrs = [f"BANDWIDTH={v.bandwidth}", f"AVERAGE-BANDWIDTH={v.average_bandwidth}"]
        if v.codecs:
            attrs.append(f'CODECS="{",".join(v.codecs)}"')
        if v.width and v.height:
            attrs.append(f"RESOLUTION={v.width}x{v.height}")
        if v.frame_rate:
            attrs.append(f"FRAME-RATE={v.frame_rate:.3f}")
        lines += [f"#EXT-X-STREAM-INF:{','.join(attrs)}", v.uri]
    return "\n".join(lines) + "\n"


def codecs_of(video_config: bytes | None, audio_config: bytes | None) -> list[str]:
    """The RFC 6381 codecs of a stream's sequence headers, as the CODECS attribute lists them; a codec
    that has no codec string here (or a header that does not parse) is left out."""
    found = []
    if video_config is not None:
        codec = video_info(video_config).codec
        name = h264.codec_string(video_config) if codec == "h264" else None
        name = hevc.codec_string(video_config) if codec == "hevc" else name
        if name:
            found.append(name)
    if audio_config and audio_config[0] >> 4 == 10:  # legacy FLV AAC (SoundFormat 10), what our muxers carry
        config = aac.AacConfig.parse(audio_config)
        if config is not None:
            found.append(config.codec_string)
    return found
