"""Clips: an MP4 of a replay between two wall-clock times (goods explainer videos), stream copy.

A replay's playlist dates its segments (EXT-X-PROGRAM-DATE-TIME, the wall-clock time of a segment's
first frame), both while it is recorded (the EVENT playlist lists the segments on disk) and once it
is finalized. A clip reads the segments that overlap the times asked for, as one stream (the first
run of them: an HEVC recording whose configuration changes mid-clip gives the part before the
change), and copies the frames from the video keyframe at or before the start (the clip must begin
with a picture a player can show) up to the end. Times inside the clip come from its first
segment's date and the frames' timestamps, which the hub keeps on the wall clock's pace.

Blocking: run it on a worker thread.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from recorder.mp4 import SegmentReader, add_track, demuxer, origin
from recorder.playlist import PLAYLIST, Entry, read

CLIPS = "clips"


@dataclass(slots=True, frozen=True)
class Clip:
    path: Path
    start: float  # Unix time of its first frame (the keyframe at or before the start asked for)
    duration: float  # seconds


def cut(folders: list[Path], start: float, end: float, name: str) -> Clip | None:
    """``{folder}/clips/{name}.mp4`` of the first replay folder whose recording overlaps
    ``start``..``end``; None if none does (or the overlap holds no frame)."""
    for folder in folders:
        playlist = folder / PLAYLIST
        with contextlib.suppress(FileNotFoundError):
            covering = _covering(read(playlist.read_text(errors="replace")), start, end)
            if covering:
                (folder / CLIPS).mkdir(exist_ok=True)
                return _copy(folder, covering, start, end, folder / CLIPS / f"{name}.mp4")
    return None


def _covering(entries: list[Entry], start: float, end: float) -> list[Entry]:
    """The dated segments that overlap ``start``..``end``, in order."""
    return [e for e in entries if e.date is not None and e.date < end and e.date + e.duration > start]


def _copy(folder: Path, entries: list[Entry], start: float, end: float, target: Path) -> Clip | None:
    first = entries[0].date
    assert first is not None
    # Seconds from the first segment's first frame.
    begin, stop = Fraction(max(start - first, 0)), Fraction(end - first)
    keyframe = _keyframe_at_or_before(_reader(folder, entries), begin)
    if keyframe is None:
        return None
    tmp = target.with_name(target.name + ".tmp")
    try:
        copied = _mux(_reader(folder, entries), tmp, keyframe, stop)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if not copied:
        tmp.unlink(missing_ok=True)
        return None
    tmp.replace(target)
    return Clip(target, first + float(keyframe), float(copied))


def _reader(folder: Path, entries: list[Entry]) -> SegmentReader:
    source = SegmentReader()
    for entry in entries:
        source.add(folder / entry.name, folder / entry.init if entry.init else None)
    return source


def _tracks(src: av.container.InputContainer) -> tuple[list[av.stream.Stream], Fraction]:
    """The audio and video tracks, and where the earliest starts (time 0 of the segments read)."""
    tracks = [s for s in src.streams if s.type in ("video", "audio")]
    return tracks, origin(tracks)


def _keyframe_at_or_before(source: SegmentReader, begin: Fraction) -> Fraction | None:
    """The time of the last video keyframe at or before ``begin`` (the first one when the segments
    start after it; ``begin`` itself without video); None without any frame."""
    with contextlib.closing(source), demuxer(source) as src:
        tracks, zero = _tracks(src)
        video = [s for s in tracks if s.type == "video"]
        if not video:
            return begin if tracks else None
        found = None
        for packet in src.demux(video[0]):
            if packet.dts is None or not packet.is_keyframe:
                continue
            at = packet.dts * packet.time_base - zero
            if at > begin and found is not None:
                break
            found = at
        return found


def _mux(source: SegmentReader, target: Path, begin: Fraction, stop: Fraction) -> Fraction:
    """Copy the frames from ``begin`` (a keyframe) up to ``stop`` into the MP4 ``target``, moved to
    start at 0; returns how long the clip is (0 when nothing was copied)."""
    last = Fraction(0)
    with (
        contextlib.closing(source),
        demuxer(source) as src,
        av.open(str(target), "w", format="mp4", options={"movflags": "+faststart"}) as dst,
    ):
        tracks, zero = _tracks(src)
        outputs = {s.index: add_track(dst, s) for s in tracks}
        shift = {s.index: int((zero + begin) / s.time_base) for s in tracks if s.time_base}
        for packet in src.demux(tracks):
            if packet.dts is None:
                continue
            at = packet.dts * packet.time_base - zero
            if not begin <= at < stop:
                continue
            last = max(last, at - begin + (packet.duration or 0) * packet.time_base)
            index = packet.stream.index
            packet.dts -= shift[index]
            if packet.pts is not None:
                packet.pts -= shift[index]
            packet.stream = outputs[index]
            dst.mux(packet)
    return last
