"""A replay's MP4: its segments remuxed (stream copy) into one MP4 laid out for progressive
playback (``+faststart``). FFmpeg's mp4 muxer turns ADTS AAC into raw AAC by itself.

The segments are read in runs, each one stream for one demuxer: MPEG-TS segments (H.264) make one
run; fMP4 segments (HEVC) make a run per init segment, the init segment and the fragments that
follow it. The MP4's tracks are those of the first run. A later run follows a change of codec
configuration: its frames go on in the same tracks, each of its HEVC keyframes led by its own
parameter sets (as TS carries H.264's before every keyframe), so that decoders follow the change,
while the track's sample entry stays the first run's ``hvc1`` (what Apple players need).

The remux reads the segments in order. It is done once from the files on disk (crash
recovery, or a recording whose live remux could not follow), or while the live goes on
(:class:`LiveMp4`): the remux then starts with the recording and reads each segment as soon as it
is written, so the end of a live leaves only the last segment and the MP4's index to write, however
long the live was (bench/replay.py measures both ways). Both ways give the same bytes: the reader is
never seekable, so FFmpeg reads the segments from start to end in either case.

Blocking: every function here runs on a worker thread; :class:`LiveMp4` runs its own.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import threading
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av

from relay.formats import hevc

log = logging.getLogger("minilive.recorder")

MP4 = "replay.mp4"
# How a run is demuxed, by the suffix of its first file: a TS segment, or an fMP4 init segment.
DEMUXERS = {".ts": "mpegts", ".mp4": "mp4"}


class RemuxError(Exception):
    """The segments hold nothing an MP4 can carry."""


class _Aborted(Exception):
    pass


class SegmentReader:
    """Segment files read as one stream per run (see the module's doc), never seekable: a read at
    the end of a run returns nothing, and :meth:`next_run` goes on to the next. With ``growing``,
    more files may come (:meth:`add`), and a read at the end waits for them until :meth:`finish`
    (then it reads the end of the stream) or :meth:`abort` (then it raises)."""

    def __init__(self, paths: list[Path] | None = None, growing: bool = False) -> None:
        self.paths: list[Path] = []
        self.starts = [0]
        self.runs: list[int] = []  # the index in ``paths`` of each run's first file
        self.run = 0  # the run being read
        self._init: Path | None = None  # the init segment of the last segment added
        self.pos = 0
        self._open: tuple[int, BinaryIO] | None = None
        self._more = threading.Condition()
        self._growing = growing
        self._aborted = False
        for path in paths or []:
            self.add(path)

    def add(self, segment: Path, init: Path | None = None) -> None:
        """``segment`` comes next, after ``init``, the fMP4 init segment it needs (None for TS): a run
        starts with the first segment, and with a new init segment, which is read before it."""
        files = [segment] if init is None or init == self._init else [init, segment]
        sizes = [path.stat().st_size for path in files]
        with self._more:
            if not self.runs or len(files) > 1:
                self.runs.append(len(self.paths))
            self._init = init
            for path, size in zip(files, sizes, strict=True):
                self.paths.append(path)
                self.starts.append(self.starts[-1] + size)
            self._more.notify()

    def finish(self) -> None:
        with self._more:
            self._growing = False
            self._more.notify()

    def abort(self) -> None:
        with self._more:
            self._aborted, self._growing = True, False
            self._more.notify()

    @property
    def aborted(self) -> bool:
        return self._aborted

    def seekable(self) -> bool:
        return False

    def first_file(self) -> Path | None:
        """The first file of the run being read (waiting for it while growing); None if there is none."""
        with self._more:
            while self._growing and self.run >= len(self.runs):
                self._more.wait()
            if self._aborted:
                raise _Aborted
            return self.paths[self.runs[self.run]] if self.run < len(self.runs) else None

    def next_run(self) -> bool:
        """Go on to the next run, from its start (waiting for it while growing); False after the last."""
        with self._more:
            while self._growing and self.run + 1 >= len(self.runs):
                self._more.wait()
            if self._aborted:
                raise _Aborted
            if self.run + 1 >= len(self.runs):
                return False
            self.run += 1
            self.pos = self.starts[self.runs[self.run]]
            return True

    def read(self, n: int = -1) -> bytes:
        with self._more:
            while self._growing and self.pos >= self.starts[-1] and self.run + 1 >= len(self.runs):
                self._more.wait()
            if self._aborted:
                raise _Aborted
            starts = self.starts[:]
            end = starts[self.runs[self.run + 1]] if self.run + 1 < len(self.runs) else starts[-1]
        n = end - self.pos if n < 0 else min(n, end - self.pos)
        out = []
        while n > 0:
            index = bisect.bisect_right(starts, self.pos) - 1
            f = self._file(index)
            f.seek(self.pos - starts[index])
            chunk = f.read(min(n, starts[index + 1] - self.pos))
            if not chunk:
                break  # the file shrank under us
            out.append(chunk)
            self.pos += len(chunk)
            n -= len(chunk)
        return b"".join(out)

    def _file(self, index: int) -> BinaryIO:
        if self._open is None or self._open[0] != index:
            self.close()
            self._open = (index, open(self.paths[index], "rb"))  # noqa: SIM115 (kept open across reads)
        return self._open[1]

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None


def remux(source: SegmentReader, target: Path) -> None:
    """The MP4 of what ``source`` reads, written to ``target`` (through a temporary file)."""
    tmp = target.with_name(target.name + ".tmp")
    try:
        with (
            contextlib.closing(source),
            av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as dst,
        ):
            tracks = _Tracks(dst)
            while True:
                with demuxer(source) as src:
                    tracks.copy(src)
                if not source.next_run():
                    break
            if not tracks.outputs:
                raise RemuxError("the segments hold no audio or video")
            if tracks.moved:  # the recording's timestamps went wrong upstream: worth a look, not a failure
                log.warning("%s: %d frames whose DTS did not go forward were moved", target, tracks.moved)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(target)


def demuxer(source: SegmentReader) -> av.container.InputContainer:
    """A demuxer of the run that ``source`` is reading."""
    first = source.first_file()
    if first is None:
        raise RemuxError("there are no segments")
    return av.open(source, format=DEMUXERS[first.suffix])


class _Tracks:
    """The MP4's tracks, made from the first run's, and each run's frames copied into them."""

    def __init__(self, dst: av.container.OutputContainer) -> None:
        self.dst = dst
        self.outputs: dict[str, av.stream.Stream] = {}  # by type: "video", "audio"
        self.configs: dict[str, tuple[str, bytes | None]] = {}  # by type: the first run's codec and extradata
        self.origin = Fraction(0)
        self.last: dict[str, Fraction] = {}  # by type: the last DTS muxed, in seconds
        self.moved = 0  # frames moved forward by _monotonic

    def copy(self, src: av.container.InputContainer) -> None:
        tracks = [s for s in src.streams if s.type in ("video", "audio")]
        if not self.outputs:
            for s in tracks:
                self.outputs[s.type] = add_track(self.dst, s)
                self.configs[s.type] = (s.codec.name, s.codec_context.extradata)
            self.origin = origin(tracks)
        # A track whose codec changed has no place in the MP4 (the VOD playlist still has it all).
        tracks = [s for s in tracks if s.type in self.configs and s.codec.name == self.configs[s.type][0]]
        outputs = {s.index: self.outputs[s.type] for s in tracks}
        shift = {s.index: int(self.origin / s.time_base) if s.time_base else 0 for s in tracks}
        leads = {s.index: _in_band(s) for s in tracks if s.codec_context.extradata != self.configs[s.type][1]}
        for packet in src.demux(tracks):
            if packet.dts is None:
                continue
            index = packet.stream.index
            if packet.is_keyframe and leads.get(index):
                packet = _led(packet, leads[index])
            packet.dts -= shift[index]
            if packet.pts is not None:
                packet.pts -= shift[index]
            self._monotonic(packet, outputs[index])
            packet.stream = outputs[index]
            self.dst.mux(packet)

    def _monotonic(self, packet: av.Packet, output: av.stream.Stream) -> None:
        """Move a frame whose DTS does not go forward to just after the last one: the MP4 muxer refuses
        it (EINVAL) and the whole replay would fail. The soak found recordings whose first segment had
        a hundred video frames on one DTS (see docs/decisions.md, "Hardening: soak"). "Just after" is
        a millisecond, or the track's time unit if coarser, so that it stays after once rescaled."""
        kind, base = output.type, packet.time_base
        last = self.last.get(kind)
        if last is not None and packet.dts * base <= last:
            step = max(Fraction(1, 1000), Fraction(output.time_base or 0))
            packet.dts = -(-(last + step) // base)  # rounded up
            if packet.pts is not None and packet.pts < packet.dts:
                packet.pts = packet.dts
            self.moved += 1
        self.last[kind] = packet.dts * base


def origin(tracks: list[av.stream.Stream]) -> Fraction:
    """Where the earliest of ``tracks`` starts: time 0 of an MP4 made of them (every track is moved by
    as much, which keeps them in sync)."""
    return min(
        (s.start_time * s.time_base for s in tracks if s.start_time is not None and s.time_base),
        default=Fraction(0),
    )


def add_track(dst: av.container.OutputContainer, stream: av.stream.Stream) -> av.stream.Stream:
    """A track of the MP4 ``dst`` for the frames of ``stream``, copied as they are."""
    output = dst.add_stream_from_template(stream)
    if stream.codec_tag == "hvc1":
        output.codec_tag = "hvc1"  # FFmpeg's muxer would write hev1, which Apple players refuse
    return output


def _in_band(stream: av.stream.Stream) -> bytes:
    """An HEVC track's parameter sets as NAL units of its samples (nothing for other codecs)."""
    record = stream.codec_context.extradata or b""
    sets = hevc.parameter_sets(record) if stream.codec.name == "hevc" else []
    if not sets:
        return b""
    size = hevc.length_size(record)
    return b"".join(len(nal).to_bytes(size, "big") + nal for nal in sets)


def _led(packet: av.Packet, lead: bytes) -> av.Packet:
    """A keyframe ``packet`` with ``lead`` before its data."""
    led = av.Packet(lead + bytes(packet))
    led.pts, led.dts, led.duration, led.time_base = packet.pts, packet.dts, packet.duration, packet.time_base
    led.is_keyframe = True
    return led


class LiveMp4:
    """The MP4 of a recording, remuxed on its own thread while the recording writes its segments."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.segments: list[str] = []  # the names of the segments given to the remux, in order
        self.error: Exception | None = None
        self._source = SegmentReader(growing=True)
        self._thread = threading.Thread(target=self._run, name=f"minilive-mp4-{folder.name}", daemon=True)
        self._thread.start()

    def add(self, segment: Path, init: Path | None = None) -> None:
        """``segment`` (and ``init``, the fMP4 init segment it needs) is whole on disk: remux it next."""
        self.segments.append(segment.name)
        self._source.add(segment, init)

    def finish(self) -> None:
        """No more segments: the MP4 is completed (wait for it with :meth:`result`)."""
        self._source.finish()

    def abort(self) -> None:
        """Stop, leaving no MP4 (the server is shutting down; the next start remuxes from the files)."""
        self._source.abort()

    def result(self) -> list[str] | None:
        """After :meth:`finish`: the segments that ``replay.mp4`` holds, or None if it failed."""
        self._thread.join()
        return None if self.error is not None else self.segments

    def _run(self) -> None:
        try:
            remux(self._source, self.folder / MP4)
        except Exception as exc:
            self.error = exc
            if self._source.aborted:
                return
            log.warning("replay %s: the live MP4 failed (%s); it will be made from the segments", self.folder.name, exc)
