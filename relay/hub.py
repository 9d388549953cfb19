"""The hub: every live stream by name, who publishes it, who watches it, and stream events.

The hub knows no protocol. Ingest code opens a :class:`PublishSession` and sends FLV-style
payloads into it; output code attaches :class:`~relay.viewer.Viewer` objects to a stream.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relay import codecs
from relay.packet import AUDIO, VIDEO, Packet
from relay.stream import BACKWARD_RESET_MS, FORWARD_RESET_MS, LiveStream, PublisherInfo, RelaySettings

log = logging.getLogger("minilive.relay")

_session_ids = itertools.count(1)


class StreamBusy(Exception):
    """The stream already has a publisher and takeover is off."""


@dataclass(slots=True, frozen=True)
class StreamEvent:
    type: str  # "publish", "unpublish" (publisher gone, grace running) or "end"
    app: str
    name: str
    info: dict[str, Any] = field(default_factory=dict)


class PublishSession:
    """One publisher's connection to a stream. Maps its timestamps onto the stream's timeline."""

    def __init__(self, hub: Hub, stream: LiveStream, info: PublisherInfo, on_kick: Callable[[str], None]):
        self.hub = hub
        self.stream = stream
        self.info = info
        self.on_kick = on_kick
        self.active = True
        self.started = time.monotonic()
        self.packets = 0
        self._offset: int | None = None

    def send(self, kind: int, timestamp: int, payload: bytes) -> None:
        """One audio or video message from the publisher (FLV tag body, publisher's timestamp)."""
        if not self.active:
            return
        stream = self.stream
        keyframe = config = False
        if kind == VIDEO:
            vi = codecs.video_info(payload)
            keyframe, config = vi.keyframe, vi.config
            if config:
                stream.note_video_config(payload, vi.codec)
            elif not stream.has_video:
                stream.has_video = True
                stream.video_codec = vi.codec
        elif kind == AUDIO:
            ai = codecs.audio_info(payload)
            config = ai.config
            if config:
                stream.note_audio_config(payload, ai.codec)
            elif not stream.has_audio:
                stream.has_audio = True
                stream.audio_codec = ai.codec
        else:
            return
        now = time.monotonic()
        last_ts = stream.last_ts
        if self._offset is None:
            self._offset = self._anchor(timestamp, now)
        out = timestamp + self._offset
        last = last_ts[kind]
        if last >= 0:
            if out < last:
                if last - out > BACKWARD_RESET_MS:
                    self._offset += last - out
                out = last
            elif out - last > FORWARD_RESET_MS:
                wall = int((now - stream.last_wall) * 1000)
                if out - last > wall + FORWARD_RESET_MS:
                    shift = out - last - max(wall, 1)
                    self._offset -= shift
                    out -= shift
        last_ts[kind] = out
        stream.last_wall = now
        self.packets += 1
        stream.push(Packet(kind, out, payload, keyframe, config))

    def _anchor(self, timestamp: int, now: float) -> int:
        """Offset that continues the stream's timeline where the last publisher left it."""
        last = max(self.stream.last_ts.values())
        if last < 0:
            return -timestamp
        gap = max(1, int((now - self.stream.last_wall) * 1000))
        return last + gap - timestamp

    def metadata(self, payload: bytes, values: dict[str, Any]) -> None:
        """``onMetaData`` (payload already stripped of ``@setDataFrame``)."""
        if self.active:
            self.stream.set_metadata(payload, values)

    def close(self, reason: str = "unpublish") -> None:
        if not self.active:
            return
        self.active = False
        self.hub._unpublished(self, reason)


class Hub:
    def __init__(self, settings: RelaySettings | None = None) -> None:
        self.settings = settings or RelaySettings()
        self.streams: dict[str, LiveStream] = {}
        self._sessions: dict[str, PublishSession] = {}
        self._grace: dict[str, asyncio.TimerHandle] = {}
        self._waiters: dict[str, list[asyncio.Future[LiveStream]]] = {}
        self._listeners: list[Callable[[StreamEvent], None]] = []
        self._ticker: asyncio.Task[None] | None = None
        # Counters of streams that have ended, so that totals survive them.
        self.totals = {"bytes_in": 0, "bytes_out": 0, "skipped": 0, "slow": 0}

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        for session in list(self._sessions.values()):
            session.on_kick("server shutting down")
            session.close("shutdown")
        for stream in list(self.streams.values()):
            self._end(stream, "server shutting down")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for stream in list(self.streams.values()):
                stream.update_rates(now)
                stream.check_viewers(now)

    # ------------------------------------------------------------ events

    def add_listener(self, callback: Callable[[StreamEvent], None]) -> None:
        self._listeners.append(callback)

    def _emit(self, event: StreamEvent) -> None:
        for callback in self._listeners:
            try:
                callback(event)
            except Exception:
                log.exception("stream event listener failed on %s", event)

    # ------------------------------------------------------------ lookup

    @staticmethod
    def _key(app: str, name: str) -> str:
        return f"{app}/{name}"

    def get(self, app: str, name: str) -> LiveStream | None:
        return self.streams.get(self._key(app, name))

    async def wait_for(self, app: str, name: str, timeout: float) -> LiveStream | None:
        """The stream, waiting up to ``timeout`` seconds for a publisher to create it."""
        stream = self.get(app, name)
        if stream is not None or timeout <= 0:
            return stream
        future: asyncio.Future[LiveStream] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(self._key(app, name), [])
        waiters.append(future)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            if future in waiters:
                waiters.remove(future)

    def list(self) -> list[dict[str, Any]]:
        return [stream.info() for stream in self.streams.values()]

    # ------------------------------------------------------------ publishing

    def publish(self, app: str, name: str, info: PublisherInfo, on_kick: Callable[[str], None]) -> PublishSession:
        """Start publishing. A live stream is taken over (the old publisher kicked) unless takeover is off."""
        key = self._key(app, name)
        current = self._sessions.get(key)
        if current is not None:
            if not self.settings.publisher_takeover:
                raise StreamBusy(f"stream {key} is already being published from {current.info.remote}")
            log.info("stream %s: publisher %s takes over from %s", key, info.remote, current.info.remote)
            current.active = False
            current.on_kick("another publisher took over the stream")
        stream = self.streams.get(key)
        if stream is None:
            stream = self.streams[key] = LiveStream(app, name, self.settings)
        timer = self._grace.pop(key, None)
        if timer is not None:
            timer.cancel()
        session = PublishSession(self, stream, info, on_kick)
        self._sessions[key] = session
        stream.publisher = info
        stream.publisher_started()
        for future in self._waiters.pop(key, []):
            if not future.done():
                future.set_result(stream)
        self._emit(StreamEvent("publish", app, name, {"publisher": info, "republish": stream.publish_count > 1}))
        return session

    def _unpublished(self, session: PublishSession, reason: str) -> None:
        stream = session.stream
        key = stream.key
        if self._sessions.get(key) is not session:
            return  # taken over: the stream goes on with the new publisher
        del self._sessions[key]
        stream.publisher = None
        stream.flush()
        self._emit(StreamEvent("unpublish", stream.app, stream.name, {"reason": reason}))
        grace = self.settings.grace_seconds
        if grace <= 0 or reason == "end":
            self._end(stream, "publisher ended the stream")
        else:
            loop = asyncio.get_running_loop()
            self._grace[key] = loop.call_later(grace, self._end, stream, "publisher did not come back")

    def kick(self, app: str, name: str, reason: str) -> bool:
        """Disconnect the publisher of a stream (admin pause/ban). Viewers keep the grace period."""
        session = self._sessions.get(self._key(app, name))
        if session is None:
            return False
        session.on_kick(reason)
        session.close("kicked")
        return True

    def end_stream(self, app: str, name: str, reason: str) -> bool:
        """End a stream now: kick its publisher and close every viewer."""
        key = self._key(app, name)
        session = self._sessions.pop(key, None)
        if session is not None:
            session.active = False
            session.on_kick(reason)
        stream = self.streams.get(key)
        if stream is None:
            return session is not None
        stream.publisher = None
        self._end(stream, reason)
        return True

    def _end(self, stream: LiveStream, reason: str) -> None:
        key = stream.key
        if self.streams.get(key) is not stream or key in self._sessions:
            return
        timer = self._grace.pop(key, None)
        if timer is not None:
            timer.cancel()
        del self.streams[key]
        stream.end(reason)
        totals = self.totals
        totals["bytes_in"] += stream.bytes_in
        totals["bytes_out"] += stream.bytes_out
        totals["skipped"] += stream.skipped
        totals["slow"] += stream.kicked_viewers
        log.info(
            "stream %s ended (%s): %d publish session(s), %.1f MB in, %.1f MB out",
            key,
            reason,
            stream.publish_count,
            stream.bytes_in / 1e6,
            stream.bytes_out / 1e6,
        )
        self._emit(StreamEvent("end", stream.app, stream.name, {"reason": reason, "stream": stream.info()}))
