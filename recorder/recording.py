"""One replay being written: a live stream's packets cut into HLS segments on disk as they arrive.

A :class:`Recording` is a sink of the hub's stream. Segments are muxed on the event loop (the
same :class:`~relay.formats.hls.Segmenter` as live HLS: MPEG-TS for H.264, fMP4 for HEVC) and written
by the recorder's writer thread: each to a temporary file, synced and renamed to ``segNNNNN.ts`` or
``segNNNNN.m4s`` (after its init segment, ``initNNNNN.mp4``, when it is the first to need it), then
the EVENT playlist is replaced the same way. So after a crash every segment on disk is whole and at
most the segment still in memory is lost. Each segment on disk then goes on to the replay's MP4,
which is remuxed while the live goes on (:class:`~recorder.mp4.LiveMp4`).

A recording is one stretch of a live session (a replay segment): it stops when its publisher
leaves (the recorder detaches it at the hub's unpublish), and the anchor's return starts another
recording. A publisher that takes over without a gap goes on in the same one, after a
discontinuity. A recording started on a stream recorded before (the anchor came back within the
hub's grace, whose GOP cache may still hold the last stretch's end) skips what that one took
(``after``): nothing is in two replays. Each segment is dated in the playlist (the wall-clock time
of its first frame), which clips look up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import Executor, Future
from pathlib import Path

from recorder.mp4 import LiveMp4
from recorder.playlist import PLAYLIST, Entry, init_name, render, segment_name
from relay.formats.hls import InitSegment, Segment, Segmenter, extension
from relay.formats.packet import DATA, Packet
from relay.hub import Hub, Subscription

log = logging.getLogger("minilive.recorder")


def atomic_write(path: Path, data: bytes | memoryview) -> None:
    """Replace ``path`` with ``data`` so that a reader (or a crash) sees the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Recording:
    def __init__(
        self,
        replay_id: str,
        folder: Path,
        segment_seconds: float,
        writer: Executor,
        mp4: bool = True,
        after: int = -1,
    ) -> None:
        self.replay_id = replay_id
        self.make_mp4 = mp4  # a rendition's recording makes none: the replay's MP4 is the source's
        self.folder = folder
        self.writer = writer
        self.segmenter = Segmenter(segment_seconds, 0, on_segment=self._on_segment)
        self.subscription: Subscription | None = None
        self.entries: list[Entry] = []
        self._write_failed = False  # logged once
        # Media up to this stream time is another recording's (the stretch before, on the same stream).
        self.after = after
        self.last_ts = -1  # the stream time of the last media packet taken
        self._last_write: Future[None] | None = None
        self._init: tuple[InitSegment, str] | None = None  # the last init segment and its file name
        # The replay's MP4, remuxed while the live goes on (made by the writer at the first segment).
        self.mp4: LiveMp4 | None = None

    # ------------------------------------------------------------ the stream

    def attach(self, hub: Hub, app: str, name: str) -> bool:
        """Record stream ``app/name`` from its GOP cache on, unless this recording is on it already;
        False when the hub has no such stream. A rendition published again (its worker restarted)
        goes on after a discontinuity, on the same timeline (its source's), without what it had."""
        if self.subscription is not None and not self.subscription.ended:
            return True
        if self.last_ts >= 0:
            self.segmenter.discontinuity()
            self.after = self.last_ts
        self.subscription = hub.add_sink(app, name, self)
        return self.subscription is not None

    def detach(self) -> None:
        """Stop taking the stream's packets, and queue what is buffered as a last segment."""
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None
        self.segmenter.finish()

    def new_publisher(self) -> None:
        # Another publisher on the same stream: same timeline, but a new encoder.
        self.segmenter.discontinuity()

    def feed(self, packet: Packet) -> None:
        if not packet.config and packet.kind != DATA:
            if packet.timestamp <= self.after:
                return
            self.last_ts = max(self.last_ts, packet.timestamp)
        self.segmenter.feed(packet)

    def end(self) -> None:
        """The hub stream is over."""
        self.subscription = None
        self.segmenter.finish()

    def failed(self, error: Exception) -> None:
        """The hub detached this recording: what is buffered is kept, and the replay is finished as
        usual when its publisher leaves."""
        log.warning("replay %s: recording stopped: %s", self.replay_id, error)
        self.end()

    # ------------------------------------------------------------ disk

    def _on_segment(self, segment: Segment) -> None:
        name = segment_name(segment.msn, extension(segment))
        init = self._init_file(segment)
        # A segment closes as the frame after it arrives (or as its publisher leaves): live, so its
        # first frame was taken its duration ago.
        date = time.time() - segment.duration
        self.entries.append(Entry(name, segment.duration, segment.discontinuity, init[0] if init else None, date))
        playlist = render(self.entries, ended=False).encode()
        self._last_write = self.writer.submit(self._write, name, segment.data, playlist, init)

    def _init_file(self, segment: Segment) -> tuple[str, bytes] | None:
        """(file name, bytes) of the init segment that ``segment`` needs; None for TS."""
        if segment.init is None:
            return None
        if self._init is None or self._init[0] is not segment.init:
            self._init = (segment.init, init_name(segment.msn))
        return self._init[1], segment.init.data

    def _write(self, name: str, data: bytes | memoryview, playlist: bytes, init: tuple[str, bytes] | None) -> None:
        try:
            # Written with the first segment that needs it, or the next one if that write failed.
            if init is not None and not (self.folder / init[0]).exists():
                atomic_write(self.folder / init[0], init[1])
            atomic_write(self.folder / name, data)
            atomic_write(self.folder / PLAYLIST, playlist)
            if not self.make_mp4:
                return
            if self.mp4 is None:
                self.mp4 = LiveMp4(self.folder)
            self.mp4.add(self.folder / name, self.folder / init[0] if init else None)
        except OSError as exc:
            if not self._write_failed:
                log.error("replay %s: cannot write %s: %s", self.replay_id, self.folder / name, exc)
            self._write_failed = True

    async def close(self) -> None:
        """Detach, and wait until every segment is on disk (the writer runs them in order)."""
        self.detach()
        self.segmenter.close()  # its callback is ours: freed by reference counting, not a full collection
        if self._last_write is not None:
            await asyncio.wrap_future(self._last_write)
