"""Fragmented MP4 (CMAF) muxer (sans-I/O): FLV H.264/HEVC/AAC packets in, an init segment and fragments out.

The init segment (``ftyp`` + ``moov``) carries the codec configuration: ``avc1``/``avcC`` or
``hvc1``/``hvcC`` straight from the FLV decoder configuration record (legacy or Enhanced RTMP),
``mp4a``/``esds`` from the AAC AudioSpecificConfig. Each fragment is one ``moof`` + ``mdat`` with
a ``traf`` per track. Samples keep their length-prefixed NAL units as they came; video runs on the
90 kHz clock, audio on its sample rate.

A sample's duration is known only when the next one arrives, so :meth:`Fmp4Muxer.mux` queues
frames and :meth:`Fmp4Muxer.flush` writes them as one fragment, given where the fragment ends.

Reading back (:func:`boxes`, :func:`timescales`, :func:`decode_times`) covers what the recorder needs
of its own files: their boxes, and where each fragment starts and ends in time.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise

from relay.formats import h264, hevc
from relay.formats.aac import AacConfig
from relay.formats.codecs import coded_frame, video_info
from relay.formats.packet import AUDIO, VIDEO, Packet

VIDEO_TIMESCALE = 90000
VIDEO_TRACK = 1
AUDIO_TRACK = 2
AAC_FRAME = 1024  # samples per AAC frame, at the AudioSpecificConfig's (core) sample rate

SYNC_SAMPLE = 0x02000000  # sample_depends_on = 2: depends on no other sample
NON_SYNC_SAMPLE = 0x01010000  # sample_depends_on = 1, sample_is_non_sync_sample
_TRUN_FLAGS = 0x000F01  # data offset; per-sample duration, size, flags and composition time offset
_DEFAULT_BASE_IS_MOOF = 0x020000
_MATRIX = struct.pack(">9i", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)


def box(kind: bytes, *payload: bytes) -> bytes:
    return (8 + sum(len(p) for p in payload)).to_bytes(4, "big") + kind + b"".join(payload)


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, bytes((version,)) + flags.to_bytes(3, "big"), *payload)


def _descriptor(tag: int, *payload: bytes) -> bytes:
    """An MPEG-4 descriptor (ISO 14496-1), its size in 7-bit groups."""
    body = b"".join(payload)
    size = len(body)
    encoded = [size & 0x7F]
    size >>= 7
    while size:
        encoded.insert(0, 0x80 | (size & 0x7F))
        size >>= 7
    return bytes((tag, *encoded)) + body


@dataclass(slots=True)
class _Sample:
    dts: int
    cts_offset: int
    data: bytes
    sync: bool


@dataclass(slots=True)
class _Track:
    track_id: int
    handler: bytes
    timescale: int
    entry: bytes  # the sample entry box
    width: int = 0
    height: int = 0
    samples: list[_Sample] = field(default_factory=list)
    last_duration: int = 0
    next_dts: int | None = None  # audio: where the next frame follows on without a gap

    def trak(self) -> bytes:
        video = self.handler == b"vide"
        tkhd = full_box(
            b"tkhd",
            0,
            3,  # enabled, in movie
            struct.pack(">5I", 0, 0, self.track_id, 0, 0),
            bytes(8),
            struct.pack(">hhhH", 0, 0, 0 if video else 0x0100, 0),
            _MATRIX,
            struct.pack(">II", self.width << 16, self.height << 16),
        )
        mdhd = full_box(b"mdhd", 0, 0, struct.pack(">4IHH", 0, 0, self.timescale, 0, 0x55C4, 0))  # "und"
        name = b"VideoHandler\0" if video else b"SoundHandler\0"
        hdlr = full_box(b"hdlr", 0, 0, bytes(4), self.handler, bytes(12), name)
        media_header = full_box(b"vmhd", 0, 1, bytes(8)) if video else full_box(b"smhd", 0, 0, bytes(4))
        dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
        stbl = box(
            b"stbl",
            full_box(b"stsd", 0, 0, struct.pack(">I", 1), self.entry),
            full_box(b"stts", 0, 0, bytes(4)),
            full_box(b"stsc", 0, 0, bytes(4)),
            full_box(b"stsz", 0, 0, bytes(8)),
            full_box(b"stco", 0, 0, bytes(4)),
        )
        return box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, box(b"minf", media_header, dinf, stbl)))

    def take(self, end: int) -> tuple[int, list[_Sample], list[int]]:
        """Empty the queue: (decode time of the first sample, samples, durations), the last one
        lasting until ``end`` (or as long as the one before it when ``end`` is not after it)."""
        samples = self.samples
        self.samples = []
        times = [s.dts for s in samples]
        durations = [max(b - a, 0) for a, b in pairwise(times)]
        last = end - times[-1]
        durations.append(last if last > 0 else (durations[-1] if durations else self.last_duration))
        self.last_duration = durations[-1]
        return max(times[0], 0), samples, durations


# A track's part of a fragment: (track, decode time of its first sample, samples, durations)
_Run = tuple[_Track, int, list[_Sample], list[int]]


def _video_track(payload: bytes) -> _Track | None:
    codec = video_info(payload).codec
    record = payload[5:]  # legacy and Enhanced RTMP sequence headers alike
    if codec == "h264" and len(record) >= 7 and record[0] == 1:
        kind, config, size = b"avc1", box(b"avcC", record), h264.dimensions(payload)
    elif codec == "hevc" and len(record) >= 23 and record[0] == 1:
        kind, config, size = b"hvc1", box(b"hvcC", record), hevc.dimensions(payload)
    else:
        return None
    width, height = size or (0, 0)
    entry = box(
        kind,
        bytes(6),
        struct.pack(">H", 1),  # data_reference_index
        bytes(16),
        struct.pack(">HH", width, height),
        struct.pack(">IIIH", 0x00480000, 0x00480000, 0, 1),  # 72 dpi, one frame per sample
        bytes(32),  # compressorname
        struct.pack(">Hh", 0x18, -1),
        config,
    )
    return _Track(VIDEO_TRACK, b"vide", VIDEO_TIMESCALE, entry, width, height)


def _audio_track(payload: bytes) -> _Track | None:
    config = AacConfig.parse(payload) if payload and payload[0] >> 4 == 10 else None
    if config is None or config.sample_rate == 0:
        return None
    rate, channels = config.sample_rate, config.channels
    esds = full_box(
        b"esds",
        0,
        0,
        _descriptor(
            0x03,  # ES_Descriptor
            struct.pack(">HB", AUDIO_TRACK, 0),
            _descriptor(
                0x04,  # DecoderConfigDescriptor: MPEG-4 audio, audio stream
                bytes((0x40, 0x15)),
                bytes(3),
                struct.pack(">II", 0, 0),
                _descriptor(0x05, payload[2:]),  # the AudioSpecificConfig
            ),
            _descriptor(0x06, b"\x02"),  # SLConfigDescriptor, predefined for MP4
        ),
    )
    entry = box(
        b"mp4a",
        bytes(6),
        struct.pack(">H", 1),
        bytes(8),
        struct.pack(">HHHH", channels or 2, 16, 0, 0),
        struct.pack(">I", rate << 16 if rate < 0x10000 else 0),
        esds,
    )
    return _Track(AUDIO_TRACK, b"soun", rate, entry)


class Fmp4Muxer:
    """One rendition's init segment and fragments. Same calls as :class:`relay.formats.mpegts.TsMuxer`."""

    def __init__(self) -> None:
        self.video: _Track | None = None
        self.audio: _Track | None = None
        self.sequence = 0  # of the last fragment (mfhd)

    @property
    def has_video(self) -> bool:
        return self.video is not None

    def configure(self, packet: Packet) -> None:
        """Take a sequence header; one this muxer cannot carry leaves its track out."""
        if packet.kind == VIDEO:
            self.video = _video_track(packet.payload)
        elif packet.kind == AUDIO:
            self.audio = _audio_track(packet.payload)

    def init_segment(self) -> bytes:
        tracks = [t for t in (self.video, self.audio) if t is not None]
        ftyp = box(b"ftyp", b"iso6", bytes(4), b"iso6cmfc")
        mvhd = full_box(
            b"mvhd",
            0,
            0,
            struct.pack(">4IIH", 0, 0, 1000, 0, 0x00010000, 0x0100),
            bytes(10),
            _MATRIX,
            bytes(24),
            struct.pack(">I", AUDIO_TRACK + 1),  # next_track_ID
        )
        trexes = [full_box(b"trex", 0, 0, struct.pack(">5I", t.track_id, 1, 0, 0, 0)) for t in tracks]
        return ftyp + box(b"moov", mvhd, *(t.trak() for t in tracks), box(b"mvex", *trexes))

    def header(self) -> bytes:
        """Nothing: what a player needs before a fragment is the init segment, served on its own."""
        return b""

    def mux(self, packet: Packet) -> bytes:
        """Queue one frame for the next fragment; fMP4 writes frames only in whole fragments (b"")."""
        if packet.kind == VIDEO and self.video is not None:
            frame = coded_frame(packet.payload)
            if frame is not None:
                cts, data = frame
                self.video.samples.append(_Sample(packet.timestamp * 90, cts * 90, data, packet.keyframe))
        elif packet.kind == AUDIO and self.audio is not None:
            payload = packet.payload
            if len(payload) > 2 and payload[0] >> 4 == 10 and payload[1] == 1:
                track = self.audio
                dts = packet.timestamp * track.timescale // 1000
                # Millisecond timestamps jitter; AAC frames do not. Follow on unless they drift apart.
                if track.next_dts is not None and abs(dts - track.next_dts) < AAC_FRAME:
                    dts = track.next_dts
                track.next_dts = dts + AAC_FRAME
                track.samples.append(_Sample(dts, 0, payload[2:], True))
        return b""

    def part(self, packets: list[Packet], end_ts: int, independent: bool) -> bytes:
        """``packets`` as one fragment (an init segment, served on its own, makes every one independent)."""
        for packet in packets:
            self.mux(packet)
        return self.flush(end_ts)

    def flush(self, end_ts: int) -> bytes:
        """The queued frames as one fragment (b"" when none), ending at stream time ``end_ts`` (ms)."""
        runs: list[_Run] = []
        if self.video is not None and self.video.samples:
            runs.append((self.video, *self.video.take(end_ts * 90)))
        if self.audio is not None and self.audio.samples:
            runs.append((self.audio, *self.audio.take(self.audio.next_dts or 0)))
        if not runs:
            return b""
        self.sequence += 1
        # Data offsets count from the start of the moof, whose size does not depend on them.
        offsets = []
        position = len(self._moof(runs, [0] * len(runs))) + 8
        for _, _, samples, _ in runs:
            offsets.append(position)
            position += sum(len(s.data) for s in samples)
        return self._moof(runs, offsets) + box(b"mdat", *(s.data for _, _, samples, _ in runs for s in samples))

    def _moof(self, runs: list[_Run], offsets: list[int]) -> bytes:
        trafs = []
        for (track, base, samples, durations), offset in zip(runs, offsets, strict=True):
            entries = b"".join(
                struct.pack(">IIIi", duration, len(s.data), SYNC_SAMPLE if s.sync else NON_SYNC_SAMPLE, s.cts_offset)
                for s, duration in zip(samples, durations, strict=True)
            )
            trafs.append(
                box(
                    b"traf",
                    full_box(b"tfhd", 0, _DEFAULT_BASE_IS_MOOF, struct.pack(">I", track.track_id)),
                    full_box(b"tfdt", 1, 0, struct.pack(">Q", base)),
                    full_box(b"trun", 1, _TRUN_FLAGS, struct.pack(">Ii", len(samples), offset), entries),
                )
            )
        return box(b"moof", full_box(b"mfhd", 0, 0, struct.pack(">I", self.sequence)), *trafs)


# ------------------------------------------------------------ reading back

# trun fields: data-offset and first-sample-flags once, then for each sample those of these it has
_TRUN_HEAD = (0x01, 0x04)
_TRUN_SAMPLE_DURATION = 0x100
_TRUN_SAMPLE_FIELDS = (0x100, 0x200, 0x400, 0x800)


def boxes(data: bytes | memoryview) -> Iterator[tuple[bytes, memoryview]]:
    """(type, body) of each box in ``data`` in order, up to the first one that does not fit in it."""
    view = memoryview(data)
    pos = 0
    while pos + 8 <= len(view):
        size = int.from_bytes(view[pos : pos + 4], "big")
        if size < 8 or pos + size > len(view):
            return
        yield bytes(view[pos + 4 : pos + 8]), view[pos + 8 : pos + size]
        pos += size


def _children(body: memoryview, kind: bytes) -> list[memoryview]:
    return [child for found, child in boxes(body) if found == kind]


def _field(body: memoryview, version_0: int, version_1: int) -> int:
    """A full box's 32-bit field that moves when version 1 widens the times before it to 64 bits."""
    at = version_1 if body[0] == 1 else version_0
    return int.from_bytes(body[at : at + 4], "big")


def timescales(init: bytes | memoryview) -> dict[int, int]:
    """The timescale of each track of an init segment, by track id."""
    found = {}
    for moov in _children(memoryview(init), b"moov"):
        for trak in _children(moov, b"trak"):
            tkhd = _children(trak, b"tkhd")
            mdhd = [m for mdia in _children(trak, b"mdia") for m in _children(mdia, b"mdhd")]
            if tkhd and mdhd:
                found[_field(tkhd[0], 12, 20)] = _field(mdhd[0], 12, 20)
    return found


def decode_times(moof: bytes | memoryview) -> dict[int, tuple[int, int]]:
    """Per track id, the decode times at which the samples of a fragment (as :class:`Fmp4Muxer` writes
    them: a duration for each sample) begin and end, in the track's timescale."""
    found = {}
    for traf in _children(memoryview(moof), b"traf"):
        tfhd, tfdt = _children(traf, b"tfhd"), _children(traf, b"tfdt")
        if not tfhd or not tfdt:
            continue
        start = int.from_bytes(tfdt[0][4:12] if tfdt[0][0] == 1 else tfdt[0][4:8], "big")
        end = start
        for trun in _children(traf, b"trun"):
            flags = int.from_bytes(trun[1:4], "big")
            if not flags & _TRUN_SAMPLE_DURATION:
                continue
            count = int.from_bytes(trun[4:8], "big")
            at = 8 + 4 * sum(1 for flag in _TRUN_HEAD if flags & flag)
            step = 4 * sum(1 for flag in _TRUN_SAMPLE_FIELDS if flags & flag)
            end += sum(int.from_bytes(trun[p : p + 4], "big") for p in range(at, at + step * count, step))
        found[int.from_bytes(tfhd[0][4:8], "big")] = (start, end)
    return found
