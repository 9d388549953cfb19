"""A replay's MP4: its MPEG-TS segments remuxed (stream copy) into one MP4 laid out for progressive
playback (``+faststart``). FFmpeg's mp4 muxer turns ADTS AAC into raw AAC by itself.

The remux reads the segments as one stream. It is done once from the files on disk (crash
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

log = logging.getLogger("minilive.recorder")

MP4 = "replay.mp4"


class RemuxError(Exception):
    """The segments hold nothing an MP4 can carry."""


class _Aborted(Exception):
    pass


class SegmentReader:
    """Segment files read as one stream, never seekable. With ``growing``, more files may come
    (:meth:`add`), and a read at the end waits for them until :meth:`finish` (then it reads the end
    of the stream) or :meth:`abort` (then it raises)."""

    def __init__(self, paths: list[Path] | None = None, growing: bool = False) -> None:
        self.paths: list[Path] = []
        self.starts = [0]
        self.pos = 0
        self._open: tuple[int, BinaryIO] | None = None
        self._more = threading.Condition()
        self._growing = growing
        self._aborted = False
        for path in paths or []:
            self.add(path)

    def add(self, path: Path) -> None:
        with self._more:
            self.paths.append(path)
            self.starts.append(self.starts[-1] + path.stat().st_size)
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

    def read(self, n: int = -1) -> bytes:
        with self._more:
            while self._growing and self.pos >= self.starts[-1]:
                self._more.wait()
            if self._aborted:
                raise _Aborted
            starts = self.starts[:]
        size = starts[-1]
        n = size - self.pos if n < 0 else min(n, size - self.pos)
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
            av.open(source, format="mpegts") as src,
            av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as dst,
        ):
            tracks = [s for s in src.streams if s.type in ("video", "audio")]
            if not tracks:
                raise RemuxError("the segments hold no audio or video")
            outputs = {s.index: dst.add_stream_from_template(s) for s in tracks}
            # The MP4 starts at 0, every track moved by the same amount (keeps them in sync).
            origin = min(
                (s.start_time * s.time_base for s in tracks if s.start_time is not None and s.time_base),
                default=Fraction(0),
            )
            shift = {s.index: int(origin / s.time_base) if s.time_base else 0 for s in tracks}
            for packet in src.demux(tracks):
                if packet.dts is None:
                    continue
                index = packet.stream.index
                packet.dts -= shift[index]
                if packet.pts is not None:
                    packet.pts -= shift[index]
                packet.stream = outputs[index]
                dst.mux(packet)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(target)


class LiveMp4:
    """The MP4 of a recording, remuxed on its own thread while the recording writes its segments."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.segments: list[str] = []  # the names of the segments given to the remux, in order
        self.error: Exception | None = None
        self._source = SegmentReader(growing=True)
        self._thread = threading.Thread(target=self._run, name=f"minilive-mp4-{folder.name}", daemon=True)
        self._thread.start()

    def add(self, segment: Path) -> None:
        """``segment`` is whole on disk: remux it next."""
        self.segments.append(segment.name)
        self._source.add(segment)

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
