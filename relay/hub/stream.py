"""A live stream: its headers, GOP cache, timeline, viewers, sinks and the merged-write fan-out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from relay.formats.output import OutputFormat
from relay.formats.packet import AUDIO, DATA, VIDEO, Packet
from relay.hub.gop_cache import GopCache
from relay.hub.publisher import PublisherInfo
from relay.hub.settings import RelaySettings
from relay.hub.sink import Sink
from relay.hub.timeline import Timeline
from relay.hub.tracks import Tracks
from relay.hub.viewer import Viewer

log = logging.getLogger("minilive.relay")

SINK_FAILURE_LOG_SECONDS = 60.0  # a stream's sink failures are logged at WARNING at most this often


class _Group:
    """The viewers that share one output format, and so one encoding of every batch."""

    __slots__ = ("format", "viewers")

    def __init__(self, fmt: OutputFormat) -> None:
        self.format = fmt
        self.viewers: dict[int, Viewer] = {}


class LiveStream:
    """One stream's state inside the hub. Outside ``relay.hub`` it is reached only through
    :class:`Subscription` and the hub's snapshots."""

    def __init__(self, app: str, name: str, settings: RelaySettings) -> None:
        self.app = app
        self.name = name
        self.key = f"{app}/{name}"
        self.settings = settings
        self.created_at = time.time()
        self.publisher: PublisherInfo | None = None  # the connected publisher, if any
        self.publish_count = 0
        self.relayed = False  # its publisher (the last one, while none is connected) pulls it from its origin
        self.ended = False
        # A paused room's stream (Hub.hold): the publisher stays, nothing but headers reaches viewers and
        # sinks; after its release they start again at the next keyframe.
        self.held = False
        self._until_keyframe = False
        # headers and cache
        self.metadata: Packet | None = None
        self.meta_values: dict[str, Any] = {}
        self.video_config: Packet | None = None
        self.audio_config: Packet | None = None
        self.gop = GopCache(settings.gop_max_bytes)
        self.tracks = Tracks()
        self.timeline = Timeline()
        # fan-out
        self.groups: dict[OutputFormat, _Group] = {}
        self.viewer_count = 0
        self.sinks: list[Sink] = []
        self.sink_audience: dict[Sink, tuple[str, int]] = {}  # (protocol, count) that a sink serves
        self._pending: list[Packet] = []
        # A format's start bytes (preamble, headers, GOP cache, framed), shared by every viewer that
        # joins while they hold: a stampede's thousand viewers cost one encoding and no copies.
        self._join_cache: dict[OutputFormat, tuple[tuple[int, ...], bytes]] = {}
        # Viewers waiting for their turn to start (see attach), in arrival order; not yet in groups.
        self._joining: dict[int, Viewer] = {}
        self._join_turn = False  # a callback to serve the next turn is scheduled
        self._join_until = 0.0  # time.monotonic() until which this turn may start viewers
        self._flush_due: float | None = None  # when the pending merged write is due, if one is
        self._catching_up: dict[int, Viewer] = {}  # started viewers whose start is still going out
        self._config_version = 0
        # counters (rates are computed by the hub's ticker)
        self.bytes_in = 0
        self.bytes_out = 0
        self.video_frames = 0
        self.audio_frames = 0
        self.skipped = 0
        self.dropped_slow = 0
        self.sink_failures = 0
        self._failure_logged_at = -SINK_FAILURE_LOG_SECONDS
        self.rates = {"bitrate_in": 0.0, "bitrate_out": 0.0, "fps": 0.0}
        # The publisher's keyframe interval (its GOP), measured between its last two keyframes: a long
        # one makes every new viewer wait that long for a picture.
        self.keyframe_interval_ms = 0
        self._last_keyframe_ms: int | None = None
        self._rate_mark = (time.monotonic(), 0, 0, 0)

    # ------------------------------------------------------------ ingest side

    def push(self, packet: Packet) -> None:
        """One packet (already on the stream's timeline): the sinks take it now; headers, GOP cache and
        viewers with the next merged write (so a viewer that joins in between gets the GOP cache, then
        the pending packets, each once)."""
        self.bytes_in += len(packet.payload)
        if packet.keyframe and packet.kind == VIDEO and not packet.config:
            if self._last_keyframe_ms is not None and packet.timestamp > self._last_keyframe_ms:
                self.keyframe_interval_ms = packet.timestamp - self._last_keyframe_ms
            self._last_keyframe_ms = packet.timestamp
        if (self.held or self._until_keyframe) and not packet.config and not self._resumes_at(packet):
            return
        if self.sinks:
            self._feed_sinks(packet)
        pending = self._pending
        if not self.viewer_count and not pending:
            self._absorb(packet)
            return
        pending.append(packet)
        if len(pending) == 1:
            loop = asyncio.get_running_loop()
            # Merging writes saves a syscall per viewer per packet; with a handful of viewers
            # that is not worth the added latency, so they are written at once.
            if self.viewer_count > self.settings.merge_min_viewers:
                window = self.settings.flush_window_ms / 1000.0
                self._flush_due = time.monotonic() + window
                loop.call_later(window, self.flush)
            else:
                self._flush_due = 0.0  # at once: joiners wait for the next turn
                loop.call_soon(self.flush)

    def _resumes_at(self, packet: Packet) -> bool:
        """Whether a released stream starts again at ``packet`` (a keyframe, or audio of an audio-only
        stream); a held one never does."""
        if self.held or not (packet.keyframe if packet.kind == VIDEO else not self.tracks.has_video):
            return False
        self._until_keyframe = False
        return True

    def hold(self) -> None:
        """Deliver nothing but headers from now on (the room is paused); viewers stay connected."""
        if self.held:
            return
        self.flush()
        self.held = True
        self.gop.clear()
        self._join_cache.clear()

    def release(self) -> None:
        """Deliver again from the next keyframe on; the sinks take it as a new publisher (a gap)."""
        if not self.held:
            return
        self.held = False
        self._until_keyframe = True
        self._restart_sinks()

    def set_metadata(self, payload: bytes, values: dict[str, Any]) -> None:
        self.meta_values = dict(values)
        self.push(Packet(DATA, self.timeline.now_ms, payload, config=True))

    def _absorb(self, packet: Packet) -> bool:
        """Headers, GOP cache and counters; whether a waiting viewer may start at ``packet``."""
        kind = packet.kind
        if packet.config:
            self._config_version += 1
            if kind == VIDEO:
                self.video_config = packet
            elif kind == AUDIO:
                self.audio_config = packet
            else:
                self.metadata = packet
            return False
        has_video = self.tracks.has_video
        if kind == VIDEO:
            self.video_frames += 1
            start = packet.keyframe
        else:
            self.audio_frames += 1
            start = not has_video
        self.gop.add(packet, has_video)
        return start

    # ------------------------------------------------------------ sinks

    def _feed_sinks(self, packet: Packet) -> None:
        failed: list[tuple[Sink, Exception]] = []
        for sink in self.sinks:
            try:
                sink.feed(packet)
            except Exception as exc:  # a sink's fault never reaches the viewers
                failed.append((sink, exc))
        for sink, exc in failed:
            self._sink_failed(sink, exc)

    def _sink_failed(self, sink: Sink, exc: Exception) -> None:
        self.sink_failures += 1
        # One WARNING a minute per stream: a publisher that keeps sending bad headers, with sinks that
        # keep being attached to it (a player polling HLS), must not fill the log. The counter
        # (sink_failures, in /metrics) still counts every one.
        now = time.monotonic()
        if now - self._failure_logged_at >= SINK_FAILURE_LOG_SECONDS:
            self._failure_logged_at = now
            level = logging.WARNING
        else:
            level = logging.DEBUG
        log.log(
            level,
            "stream %s: %s detached, it failed: %s: %s (%d sink failures so far)",
            self.key,
            type(sink).__name__,
            type(exc).__name__,
            exc,
            self.sink_failures,
        )
        self.remove_sink(sink)
        try:
            sink.failed(exc)
        except Exception:
            log.exception("stream %s: %s failed while handling its own failure", self.key, type(sink).__name__)

    def add_sink(self, sink: Sink) -> None:
        """Feed ``sink`` every packet from now on, starting with the headers, the GOP cache and what is
        pending for the viewers (the sinks had it already), so that it starts on a keyframe at once."""
        self.sinks.append(sink)
        for packet in (self.metadata, self.video_config, self.audio_config, *self.gop.packets, *self._pending):
            if packet is None:
                continue
            try:
                sink.feed(packet)
            except Exception as exc:
                self._sink_failed(sink, exc)
                return

    def remove_sink(self, sink: Sink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)
        self.sink_audience.pop(sink, None)

    def publisher_started(self) -> None:
        """A publisher (the first, or the next one after a drop or a takeover) starts sending."""
        self.publish_count += 1
        self._last_keyframe_ms = None  # an interval across the gap would be the gap
        if self.publish_count > 1:
            self._restart_sinks()

    def _restart_sinks(self) -> None:
        for sink in list(self.sinks):
            try:
                sink.new_publisher()
            except Exception as exc:
                self._sink_failed(sink, exc)

    # ------------------------------------------------------------ fan-out

    def flush(self) -> None:
        batch = self._pending
        if not batch:
            return
        self._pending = []
        self._flush_due = None
        resume_at = -1  # where a waiting viewer may resume: the batch's first keyframe
        absorb = self._absorb
        for i, packet in enumerate(batch):
            if absorb(packet) and resume_at < 0:
                resume_at = i
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
                if viewer.backlog is not None:  # still catching up: after the rest of its start
                    viewer.backlog.append(data)
                    viewer.bytes_out += size
                    written += size
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

    # ------------------------------------------------------------ viewers

    def attach(self, viewer: Viewer) -> None:
        """Start a viewer now, or in a later turn of the event loop: joiners fill the time between the
        stream's merged writes, at most ``join_slice_ms`` a turn, and stop when a write is due, so a
        stampede of them (a thousand after a push reminder, each with its GOP cache) never holds up
        the viewers already watching. Either way the viewer gets the headers and GOP cache of the
        moment it starts, then every batch from there: in order, each once."""
        if not self._join_turn:  # the first join of this turn opens its slice
            self._join_turn = True
            self._join_until = time.monotonic() + self.settings.join_slice_ms / 1000
            asyncio.get_running_loop().call_soon(self._next_join_turn)
        if self._joining or not self._may_start():
            self._joining[viewer.id] = viewer
        else:
            self._start(viewer)

    def _may_start(self) -> bool:
        """Whether this turn may start one more viewer: its slice is not used up, no write is due."""
        now = time.monotonic()
        due = self._flush_due
        return now < self._join_until and (due is None or now < due)

    def _next_join_turn(self) -> None:
        """A new turn of the loop: the next slices of the starts going out, then start waiting viewers
        (at least one, for progress), while the turn may."""
        self._join_turn = False
        joining, catching_up = self._joining, self._catching_up
        if self.ended or not (joining or catching_up):
            return
        self._join_turn = True
        self._join_until = time.monotonic() + self.settings.join_slice_ms / 1000
        wrote = self._continue_starts() if catching_up else False
        if joining:
            self._start(joining.pop(next(iter(joining))))
            while joining and self._may_start():
                self._start(joining.pop(next(iter(joining))))
        loop = asyncio.get_running_loop()
        if joining or wrote:
            loop.call_soon(self._next_join_turn)
        else:  # every socket still full: look again in a millisecond, not in a busy loop
            loop.call_later(0.001, self._next_join_turn)

    def _continue_starts(self) -> bool:
        """Write the next slice of every catching-up viewer whose socket took the last one, round robin,
        while the turn may; whether anything was written."""
        catching_up = self._catching_up
        step = self.settings.join_write_bytes
        wrote = False
        for viewer in list(catching_up.values()):
            if wrote and not self._may_start():  # (one slice a turn at least, for progress)
                break
            transport = viewer.transport
            if transport.is_closing():
                del catching_up[viewer.id]  # the next flush or check finds it closed
                continue
            if transport.get_write_buffer_size():
                continue
            backlog = viewer.backlog
            assert backlog is not None
            head = backlog.popleft()
            if len(head) > step:
                view = memoryview(head)
                head = view[:step]
                backlog.appendleft(view[step:])
            viewer.transport.write(head)  # (counted in bytes_out when it was queued)
            wrote = True
            del catching_up[viewer.id]
            if backlog:
                catching_up[viewer.id] = viewer  # to the end of the line
            else:
                viewer.backlog = None
                viewer.behind_since = None
        return wrote

    def _start(self, viewer: Viewer) -> None:
        """Preamble, metadata, sequence headers and GOP cache in one write (what is pending follows with
        the next merged write), and into the fan-out."""
        if viewer.transport.is_closing():  # it left while it waited for its turn
            viewer.finish("closed")
            return
        fmt = viewer.format
        group = self.groups.get(fmt)
        if group is None:
            group = self.groups[fmt] = _Group(fmt)
        data = self._start_bytes(fmt)
        if data:
            self.bytes_out += len(data)
            step = self.settings.join_write_bytes
            if len(data) <= step:
                viewer.write(data)
            else:  # the first slice now, the rest in the next turns (_continue_starts)
                view = memoryview(data)
                viewer.transport.write(view[:step])
                viewer.bytes_out += len(data)
                viewer.backlog = deque([view[step:]])
                # A viewer that has not taken its start within max_behind_seconds is dropped as one
                # that fell behind (check_viewers); until then its backlog holds batches every other
                # viewer holds too: memory grows with the stream's bitrate, not with the audience.
                viewer.behind_since = time.monotonic()
                self._catching_up[viewer.id] = viewer
                if not self._join_turn:
                    self._join_turn = True
                    asyncio.get_running_loop().call_soon(self._next_join_turn)
        # A video stream with no keyframe cached yet: skip ahead to the first one.
        viewer.waiting = self.tracks.has_video and not self.gop.packets
        group.viewers[viewer.id] = viewer
        self.viewer_count += 1

    def detach(self, viewer: Viewer) -> None:
        if self._joining.pop(viewer.id, None) is not None:
            return
        self._catching_up.pop(viewer.id, None)
        group = self.groups.get(viewer.format)
        if group is not None and group.viewers.pop(viewer.id, None) is not None:
            self.viewer_count -= 1

    def viewers(self) -> list[Viewer]:
        """Every viewer, those still waiting for their turn to start included."""
        return [v for g in self.groups.values() for v in g.viewers.values()] + list(self._joining.values())

    def _start_bytes(self, fmt: OutputFormat) -> bytes:
        """What a viewer of ``fmt`` gets first, framed: cached until the headers, the GOP cache or the
        tracks change, so that every joiner in between is written the same bytes object."""
        gop, tracks = self.gop, self.tracks
        has_audio, has_video = tracks.has_audio, tracks.has_video
        token = (gop.generation, len(gop.packets), self._config_version, has_audio, has_video)
        cached = self._join_cache.get(fmt)
        if cached is not None and cached[0] == token:
            return cached[1]
        preamble = fmt.preamble(has_audio or not has_video, has_video or not has_audio)
        start = preamble + self._join_bytes(fmt)
        data = fmt.frame(start) if start else b""
        self._join_cache[fmt] = (token, data)
        return data

    def _join_bytes(self, fmt: OutputFormat) -> bytes:
        gop = self.gop
        # Sequence headers go out stamped with the first cached frame's time, so a player's
        # clock does not start with a jump from the stream's start to the live edge. Metadata
        # stays at 0: FFmpeg treats an onMetaData tag with another timestamp as a data track.
        start_ts = gop.packets[0].timestamp if gop.packets else self.timeline.now_ms
        packets = [self.metadata.retimed(0)] if self.metadata else []
        packets += [p.retimed(start_ts) for p in (self.video_config, self.audio_config) if p]
        packets.extend(gop.packets)
        return b"".join([fmt.encode(p) for p in packets])

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
                self.dropped_slow += 1
                self.detach(viewer)
                viewer.finish("too slow")

    # ------------------------------------------------------------ stats

    def audience(self) -> dict[str, int]:
        """Who is watching, by protocol: connected viewers, and the people the sinks serve (HLS
        players, WebRTC sessions)."""
        counts: dict[str, int] = {}
        for group in self.groups.values():
            if group.viewers:
                name = group.format.name
                counts[name] = counts.get(name, 0) + len(group.viewers)
        for viewer in self._joining.values():
            counts[viewer.format.name] = counts.get(viewer.format.name, 0) + 1
        for protocol, count in self.sink_audience.values():
            if count:
                counts[protocol] = counts.get(protocol, 0) + count
        return counts

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

    def stats(self) -> dict[str, Any]:
        """A snapshot of the stream for the API: a fresh dict, nothing in it refers back here."""
        now = time.time()
        publisher = self.publisher
        video, audio = self.tracks.describe(self.meta_values, self.rates["fps"])
        if video is not None:
            video["keyframe_interval"] = self.keyframe_interval_ms / 1000 if self.keyframe_interval_ms else None
        audience = self.audience()
        return {
            "app": self.app,
            "name": self.name,
            "live": publisher is not None,
            "held": self.held,
            "relayed": self.relayed,
            "publisher": None
            if publisher is None
            else {
                "protocol": publisher.protocol,
                "remote": publisher.remote,
                "since": publisher.started_at,
                "uptime": round(now - publisher.started_at, 3),
            },
            "video": video,
            "audio": audio,
            "bitrate_in": round(self.rates["bitrate_in"]),
            "bitrate_out": round(self.rates["bitrate_out"]),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "viewers": sum(audience.values()),
            "viewers_by_protocol": audience,
            "viewers_skipped_to_keyframe": self.skipped,
            "viewers_dropped_slow": self.dropped_slow,
            "sink_failures": self.sink_failures,
            "publish_count": self.publish_count,
            "uptime": round(now - self.created_at, 3),
            "time_ms": self.timeline.now_ms,  # the stream's clock: where a comment falls in its recording
        }

    # ------------------------------------------------------------ end

    def end(self, reason: str) -> None:
        """The stream is over: flush what is queued, then give every viewer and sink a clean end."""
        if self.ended:
            return
        self.flush()
        self.ended = True
        sinks, self.sinks = self.sinks, []
        self.sink_audience.clear()
        for sink in sinks:
            try:
                sink.end()
            except Exception:
                log.exception("stream %s: %s failed to end", self.key, type(sink).__name__)
        for viewer in self.viewers():
            self.detach(viewer)
            viewer.finish(reason)
        self.gop.clear()
        self._join_cache.clear()


class Subscription:
    """A viewer's or a sink's place on one live stream: what the hub hands out instead of the stream."""

    __slots__ = ("_member", "_stream")

    def __init__(self, stream: LiveStream, member: Viewer | Sink) -> None:
        self._stream = stream
        self._member: Viewer | Sink | None = member

    @property
    def key(self) -> str:
        return self._stream.key

    @property
    def ended(self) -> bool:
        """The stream ended (a stream of the same name published later is another stream)."""
        return self._stream.ended

    def set_audience(self, protocol: str, count: int) -> None:
        """For a sink that serves people (HLS players, WebRTC sessions): how many it serves now."""
        stream = self._stream
        if not stream.ended and self._member in stream.sinks:
            stream.sink_audience[self._member] = (protocol, count)  # type: ignore[index]

    def close(self) -> None:
        """Leave the stream (idempotent). The member usually holds this subscription: forgetting it
        here breaks that cycle, so that reference counting frees the member and the stream."""
        member = self._member
        if member is None:
            return
        self._member = None
        if isinstance(member, Viewer):
            self._stream.detach(member)
        else:
            self._stream.remove_sink(member)


def _resume_packets(batch: list[Packet], start: int) -> list[Packet]:
    """A batch from its first keyframe on, keeping any header change that came before it."""
    return [p for p in batch[:start] if p.config] + batch[start:]
