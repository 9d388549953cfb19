"""Turn a replay's folder of segments into a finished replay: VOD playlist, MP4 and cover.

Works from what is on disk only, so it serves a normal end and a crash alike: temporary files are
removed, a segment that is not whole is dropped (MPEG-TS: whole 188-byte packets; fMP4: whole
top-level boxes, from a ``moof`` to an ``mdat``, after a whole init segment), and so is an init
segment that no segment left needs. The playlist is rebuilt from the segments (the EVENT one may be
stale; only its discontinuities and dates are kept, and one goes where the init segment changes, as
the Segmenter puts one at every change of codec configuration; a segment it has no date for is
dated after the one before it); durations come from the segments'
timestamps (PES headers; ``tfdt`` and sample durations in fMP4). The MP4 (``recorder.mp4``) is the one
the recording made while the live went on, when it holds every segment found, else it is remuxed
from the segments here; the cover is the first keyframe, encoded as JPEG. Running it again on a
finalized folder gives the same result, so a finalization cut short is simply done again.

Blocking: run it on a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av

from recorder.mp4 import MP4, LiveMp4, RemuxError, SegmentReader, demuxer, remux
from recorder.playlist import PLAYLIST, Entry, read, render
from recorder.recording import atomic_write
from relay.formats.fmp4 import decode_times, timescales

log = logging.getLogger("minilive.recorder")

COVER = "cover.jpg"
TS_PACKET = 188
CLOCK = 90000  # PES timestamps
# A gap between the starts of two segments beyond this is a jump in the timeline, not a duration.
MAX_SEGMENT_GAP = 60 * CLOCK
HEAD_BYTES = 64 * 1024  # enough to hold a segment's first PES header


class FinalizeError(Exception):
    """Nothing playable could be made from the folder."""


@dataclass(slots=True)
class Finalized:
    duration: float  # seconds
    size: int  # bytes of every file of the replay
    segments: int
    mp4_during_live: bool = False  # the MP4 was the one made while the live went on
    renditions: list[str] = field(default_factory=list)  # recorded beside the source (master.m3u8)


@dataclass(slots=True)
class _Segment:
    path: Path
    start: int  # its first timestamp (90 kHz)
    end: int | None = None  # fMP4: where its last frame ends (90 kHz); TS: read when needed
    init: Path | None = None  # fMP4: the init segment it needs


def finalize(folder: Path, live_mp4: LiveMp4 | None = None, mp4: bool = True) -> Finalized:
    """Finalize the replay in ``folder``; ``live_mp4``, if the recording made one, is used when it
    holds every segment found (it is waited for), else the MP4 is made from the segments. Without
    ``mp4`` (a rendition's folder: the replay's MP4 and cover are the source's), only the playlist."""
    live_segments = live_mp4.result() if live_mp4 is not None else None  # before its temporary file goes
    for tmp in folder.glob("*.tmp"):
        tmp.unlink()
    segments = _segments(folder)
    if not segments:
        raise FinalizeError(f"no complete segment in {folder}")
    playlist = folder / PLAYLIST
    listed = {e.name: e for e in read(playlist.read_text(errors="replace"))} if playlist.exists() else {}
    marked = {name for name, e in listed.items() if e.discontinuity}
    entries: list[Entry] = []
    previous: _Segment | None = None
    for segment, following in zip(segments, [*segments[1:], None], strict=True):
        if (
            following is not None
            and following.path.name not in marked
            and 0 < following.start - segment.start <= MAX_SEGMENT_GAP
        ):
            duration = (following.start - segment.start) / CLOCK
        else:  # the last segment, or one before a jump: its own span
            duration = _span(segment) / CLOCK
        new_init = previous is not None and segment.init != previous.init
        init = segment.init.name if segment.init else None
        mark = listed.get(segment.path.name)
        date = mark.date if mark is not None else None
        if date is None and entries and entries[-1].date is not None:
            date = entries[-1].date + entries[-1].duration
        discontinuity = segment.path.name in marked or new_init
        entries.append(Entry(segment.path.name, duration, discontinuity, init, date))
        previous = segment
    atomic_write(playlist, render(entries, ended=True).encode())
    mp4_during_live = live_segments == [s.path.name for s in segments]
    if not mp4:
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        return Finalized(round(sum(e.duration for e in entries), 3), size, len(entries))
    if not mp4_during_live:
        try:
            remux(_reader(segments), folder / MP4)
        except RemuxError as exc:
            raise FinalizeError(str(exc)) from exc
    _cover(segments[0], folder / COVER)
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return Finalized(round(sum(e.duration for e in entries), 3), size, len(entries), mp4_during_live)


# ------------------------------------------------------------ segments


def _segments(folder: Path) -> list[_Segment]:
    inits = {path: _init_timescales(path) for path in sorted(folder.glob("init*.mp4"))}
    found = []
    for path in sorted(p for p in folder.glob("seg*") if p.suffix in (".ts", ".m4s")):
        if path.suffix == ".ts":
            start = _first_timestamp(path)
            segment = None if start is None else _Segment(path, start)
        else:
            init = _init_of(path, list(inits))
            segment = None if init is None else _fmp4_segment(path, init, inits[init])
        if segment is None:
            log.warning(
                "replay %s: dropping %s, not a whole segment, or its init segment is not", folder.name, path.name
            )
            path.unlink()
        else:
            found.append(segment)
    for init in inits.keys() - {segment.init for segment in found}:
        init.unlink()  # not whole, or no segment left needs it
    return found


def _reader(segments: list[_Segment]) -> SegmentReader:
    source = SegmentReader()
    for segment in segments:
        source.add(segment.path, segment.init)
    return source


def _first_timestamp(path: Path) -> int | None:
    size = path.stat().st_size
    if size == 0 or size % TS_PACKET:
        return None
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES - HEAD_BYTES % TS_PACKET)
        f.seek(size - TS_PACKET)
        if f.read(1) != b"\x47":
            return None
    for _, ts in _timestamps(head):
        return ts
    return None


def _span(segment: _Segment) -> int:
    """From the segment's first timestamp to the end of its last frame (reads a whole TS segment)."""
    if segment.end is not None:
        return max(0, segment.end - segment.start)
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    count: dict[int, int] = {}
    for pid, ts in _timestamps(segment.path.read_bytes()):
        first.setdefault(pid, ts)
        last[pid] = ts
        count[pid] = count.get(pid, 0) + 1
    # Each track's last frame lasts as long as its average frame.
    ends = [last[p] + ((last[p] - first[p]) // (count[p] - 1) if count[p] > 1 else 0) for p in last]
    return max(0, max(ends, default=segment.start) - segment.start)


def _timestamps(data: bytes) -> Iterator[tuple[int, int]]:
    """(pid, DTS or PTS) of every PES header in whole TS packets, in order."""
    for pos in range(0, len(data) - TS_PACKET + 1, TS_PACKET):
        if data[pos] != 0x47:
            return
        if not data[pos + 1] & 0x40:  # no payload unit start
            continue
        control = data[pos + 3] >> 4
        p = pos + 4
        if control & 2:
            p += 1 + data[p]
        if not control & 1 or p + 19 > pos + TS_PACKET or data[p : p + 3] != b"\x00\x00\x01":
            continue
        if not 0xC0 <= data[p + 3] <= 0xEF:  # audio or video PES only
            continue
        flags = data[p + 7] >> 6
        if not flags & 2:
            continue
        at = p + 14 if flags == 3 else p + 9  # DTS when there is one
        yield (data[pos + 1] & 0x1F) << 8 | data[pos + 2], _pes_time(data[at : at + 5])


def _pes_time(b: bytes) -> int:
    return ((b[0] >> 1) & 0x07) << 30 | b[1] << 22 | (b[2] >> 1) << 15 | b[3] << 7 | b[4] >> 1


# ------------------------------------------------------------ fMP4 segments


def _init_of(segment: Path, inits: list[Path]) -> Path | None:
    """The init segment of ``segment``: the last one named after it or a segment before it."""
    number = int(segment.stem.removeprefix("seg"))
    earlier = [init for init in inits if int(init.stem.removeprefix("init")) <= number]
    return earlier[-1] if earlier else None


def _init_timescales(path: Path) -> dict[int, int]:
    """The track timescales of a whole init segment (``ftyp``, ``moov``); none for anything else."""
    top = _boxes(path)
    if top is None or [kind for kind, _, _ in top][:2] != [b"ftyp", b"moov"]:
        return {}
    return timescales(path.read_bytes())


def _fmp4_segment(path: Path, init: Path, scales: dict[int, int]) -> _Segment | None:
    """``path`` when it is whole fragments (``moof`` + ``mdat``) of the tracks of ``init``."""
    top = _boxes(path)
    if not scales or not top or top[0][0] != b"moof" or top[-1][0] != b"mdat":
        return None
    moofs = [(offset, size) for kind, offset, size in top if kind == b"moof"]
    with open(path, "rb") as f:
        first, last = (decode_times(_read(f, offset + 8, size - 8)) for offset, size in (moofs[0], moofs[-1]))
    if not first or not last or not (first.keys() | last.keys()) <= scales.keys():
        return None
    start = min(begin * CLOCK // scales[track] for track, (begin, _) in first.items())
    end = max(stop * CLOCK // scales[track] for track, (_, stop) in last.items())
    return _Segment(path, start, end, init)


def _read(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def _boxes(path: Path) -> list[tuple[bytes, int, int]] | None:
    """(type, offset, size) of the top-level boxes of an MP4 file; None unless they fill it exactly."""
    size = path.stat().st_size
    found = []
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            head = _read(f, pos, 8)
            length = int.from_bytes(head[:4], "big") if len(head) == 8 else 0
            if length < 8 or pos + length > size:
                return None
            found.append((head[4:], pos, length))
            pos += length
    return found or None


# ------------------------------------------------------------ MP4 and cover


def _cover(segment: _Segment, target: Path) -> None:
    source = _reader([segment])
    with contextlib.closing(source), demuxer(source) as src:
        if not src.streams.video:
            return  # audio only: no picture
        stream = src.streams.video[0]
        stream.codec_context.skip_frame = "NONKEY"
        frame = next(src.decode(stream), None)
    if frame is None:
        return
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height = frame.width, frame.height
    encoder.pix_fmt = "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    packets = encoder.encode(frame.reformat(format="yuvj420p"))
    packets += encoder.encode(None)
    atomic_write(target, b"".join(bytes(p) for p in packets))
