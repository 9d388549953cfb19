"""The hub: every live stream by name, who publishes it, who watches it, and stream events.

The hub knows no protocol. Ingest code calls :meth:`Hub.publish` and sends FLV-style payloads into the
session it gets; output code adds a :class:`~relay.hub.viewer.Viewer` (bytes written to a transport)
or a :class:`~relay.hub.sink.Sink` (packets handed over) and gets a
:class:`~relay.hub.stream.Subscription`; the API reads snapshots.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from relay.hub.publisher import PublisherInfo, PublishSession
from relay.hub.settings import RelaySettings
from relay.hub.sink import Sink
from relay.hub.stream import LiveStream, Subscription
from relay.hub.viewer import Viewer

log = logging.getLogger("minilive.relay")

# The counters of a stream that the hub keeps adding up after the stream ended.
_TOTALS = ("bytes_in", "bytes_out", "viewers_skipped_to_keyframe", "viewers_dropped_slow", "sink_failures")


class StreamBusy(Exception):
    """The stream already has a publisher and takeover is off."""


class StreamRefused(Exception):
    """A stream that could be made here (a rendition) is refused now; the message says why and what to do."""


# Makes a stream that is not here on demand (a rendition of a live stream): (app, name) -> whether it
# did (the stream is then here, perhaps before its first packet). Raises StreamRefused.
Provider = Callable[[str, str], bool]
# Brings a stream that is not here from elsewhere (relay.cluster pulls it from its origin node):
# (app, name) -> whether it did. Asked by wait_for after every Provider said no.
RemoteProvider = Callable[[str, str], Awaitable[bool]]


@dataclass(slots=True, frozen=True)
class StreamEvent:
    type: str  # "publish", "unpublish" (publisher gone, grace running) or "end"
    # info["relayed"]: the stream is (was) pulled from the node that originates it: the origin's
    # events are the ones that count for its room, its recording and its webhooks.
    app: str
    name: str
    info: dict[str, Any] = field(default_factory=dict)


class Hub:
    def __init__(self, settings: RelaySettings | None = None) -> None:
        self.settings = settings or RelaySettings()
        self._streams: dict[str, LiveStream] = {}
        self._sessions: dict[str, PublishSession] = {}
        self._held: set[str] = set()  # streams of paused rooms, whether they are here now or not
        self._grace: dict[str, asyncio.TimerHandle] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._listeners: list[Callable[[StreamEvent], None]] = []
        self._providers: list[Provider] = []
        self._remotes: list[RemoteProvider] = []
        self._ticker: asyncio.Task[None] | None = None
        self._ended_totals = dict.fromkeys(_TOTALS, 0)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        for session in list(self._sessions.values()):
            session.on_kick("server shutting down")
            session.close("shutdown")
        for stream in list(self._streams.values()):
            self._end(stream, "server shutting down")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._check_streams(time.monotonic())

    def _check_streams(self, now: float) -> None:
        # Not inlined in _tick: its frame would keep the last stream it checked alive for a second.
        for stream in list(self._streams.values()):
            stream.update_rates(now)
            stream.check_viewers(now)

    # ------------------------------------------------------------ events

    def add_listener(self, callback: Callable[[StreamEvent], None]) -> None:
        """``callback`` hears of every publish, unpublish and end (on the event loop, in order)."""
        self._listeners.append(callback)

    def _emit(self, event: StreamEvent) -> None:
        for callback in self._listeners:
            try:
                callback(event)
            except Exception:
                log.exception("stream event listener failed on %s", event)

    def add_provider(self, provider: Provider) -> None:
        """``provider`` is asked for a stream that a viewer wants and that is not here."""
        self._providers.append(provider)

    def add_remote(self, provider: RemoteProvider) -> None:
        """``provider`` is asked (by :meth:`wait_for`) for a stream that no Provider could make here."""
        self._remotes.append(provider)

    # ------------------------------------------------------------ lookup

    def has(self, app: str, name: str) -> bool:
        """Whether stream ``app/name`` is here: published, or waiting for its publisher's return."""
        return f"{app}/{name}" in self._streams

    def busy(self, app: str, name: str) -> bool:
        """Whether a publish of ``app/name`` would be refused (it has a publisher, takeover is off)."""
        return not self.settings.publisher_takeover and f"{app}/{name}" in self._sessions

    def demand(self, app: str, name: str) -> bool:
        """Whether stream ``app/name`` is here for a viewer, made by a provider if it can be (raises
        StreamRefused when a provider could make it but will not now)."""
        key = f"{app}/{name}"
        if key in self._streams:
            return True
        return any(provider(app, name) for provider in self._providers) and key in self._streams

    async def wait_for(self, app: str, name: str, timeout: float) -> bool:
        """Whether stream ``app/name`` is here for a viewer (see :meth:`demand`), waiting up to
        ``timeout`` seconds for a publisher."""
        key = f"{app}/{name}"
        if self.demand(app, name):
            return True
        for remote in self._remotes:
            if await remote(app, name) and key in self._streams:
                return True
        if timeout <= 0 or key in self._streams:
            return key in self._streams
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(key, [])
        waiters.append(future)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        finally:
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiters.pop(key, None)
        return key in self._streams

    # ------------------------------------------------------------ subscribing

    def add_viewer(self, app: str, name: str, viewer: Viewer) -> Subscription | None:
        """Start ``viewer`` on stream ``app/name`` (headers and GOP cache first); None when there is
        no such stream."""
        stream = self._streams.get(f"{app}/{name}")
        if stream is None:
            return None
        stream.attach(viewer)
        return Subscription(stream, viewer)

    def add_sink(self, app: str, name: str, sink: Sink) -> Subscription | None:
        """Feed ``sink`` stream ``app/name``'s packets, from the headers and the GOP cache on; None
        when there is no such stream."""
        stream = self._streams.get(f"{app}/{name}")
        if stream is None:
            return None
        stream.add_sink(sink)
        return Subscription(stream, sink)

    # ------------------------------------------------------------ snapshots

    def stats(self, app: str, name: str) -> dict[str, Any] | None:
        """A snapshot of stream ``app/name`` (see :meth:`LiveStream.stats`), None when it is not here."""
        stream = self._streams.get(f"{app}/{name}")
        return stream.stats() if stream is not None else None

    @property
    def stream_count(self) -> int:
        """How many streams are here (published, or waiting for their publisher's return)."""
        return len(self._streams)

    def all_stats(self) -> list[dict[str, Any]]:
        return [stream.stats() for stream in self._streams.values()]

    def audience(self, app: str, name: str) -> dict[str, int]:
        """Who watches stream ``app/name`` on this node, by protocol ({} when it is not here)."""
        stream = self._streams.get(f"{app}/{name}")
        return stream.audience() if stream is not None else {}

    def totals(self, snapshots: list[dict[str, Any]] | None = None) -> dict[str, int]:
        """Counters over every stream this hub has had, ended ones included, and what is here now;
        ``snapshots``: ``all_stats()`` when the caller has just taken it (a scrape needs both)."""
        totals = dict(self._ended_totals)
        audience: dict[str, int] = {}
        publishing = 0
        for stats in snapshots if snapshots is not None else self.all_stats():
            for key in _TOTALS:
                totals[key] += stats[key]
            for protocol, count in stats["viewers_by_protocol"].items():
                audience[protocol] = audience.get(protocol, 0) + count
            publishing += stats["live"]
        return {**totals, "streams": self.stream_count, "publishers": publishing, "audience": audience}

    # ------------------------------------------------------------ publishing

    def publish(self, app: str, name: str, info: PublisherInfo, on_kick: Callable[[str], None]) -> PublishSession:
        """Start publishing. A live stream is taken over (the old publisher kicked) unless takeover is off."""
        key = f"{app}/{name}"
        current = self._sessions.get(key)
        if current is not None:
            if not self.settings.publisher_takeover and not info.relayed:
                raise StreamBusy(f"stream {key} is already being published from {current.info.remote}")
            log.info("stream %s: publisher %s takes over from %s", key, info.remote, current.info.remote)
            current.kick("another publisher took over the stream")
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = LiveStream(app, name, self.settings)
            if key in self._held:
                stream.hold()
        timer = self._grace.pop(key, None)
        if timer is not None:
            timer.cancel()
        session = PublishSession(self, stream, info, on_kick)
        self._sessions[key] = session
        stream.publisher = info
        stream.relayed = info.relayed
        stream.publisher_started()
        for future in self._waiters.pop(key, []):
            if not future.done():
                future.set_result(None)
        self._emit(
            StreamEvent(
                "publish",
                app,
                name,
                {"publisher": info, "republish": stream.publish_count > 1, "relayed": info.relayed},
            )
        )
        return session

    def _unpublished(self, session: PublishSession, stream: LiveStream, reason: str) -> None:
        key = stream.key
        if self._sessions.get(key) is not session:
            return  # taken over: the stream goes on with the new publisher
        del self._sessions[key]
        stream.publisher = None
        stream.flush()
        self._emit(StreamEvent("unpublish", stream.app, stream.name, {"reason": reason, "relayed": stream.relayed}))
        grace = self.settings.grace_seconds
        if grace <= 0 or reason == "end":
            self._end(stream, "publisher ended the stream")
        else:
            loop = asyncio.get_running_loop()
            self._grace[key] = loop.call_later(grace, self._end, stream, "publisher did not come back")

    def kick(self, app: str, name: str, reason: str) -> bool:
        """Disconnect the publisher of a stream (admin pause/ban). Viewers keep the grace period."""
        session = self._sessions.get(f"{app}/{name}")
        if session is None:
            return False
        session.on_kick(reason)
        session.close("kicked")
        return True

    def hold(self, app: str, name: str) -> bool:
        """Pause a stream: its publisher may go on pushing (now or when it comes), its viewers stay, and
        nothing but headers reaches them until :meth:`release`. Whether its publisher is here."""
        key = f"{app}/{name}"
        self._held.add(key)
        stream = self._streams.get(key)
        if stream is not None:
            stream.hold()
        return key in self._sessions

    def release(self, app: str, name: str) -> bool:
        """Resume a held stream: viewers and sinks start again at the next keyframe."""
        key = f"{app}/{name}"
        self._held.discard(key)
        stream = self._streams.get(key)
        if stream is not None:
            stream.release()
        return key in self._sessions

    def end_stream(self, app: str, name: str, reason: str) -> bool:
        """End a stream now: kick its publisher and close every viewer."""
        key = f"{app}/{name}"
        self._held.discard(key)
        session = self._sessions.pop(key, None)
        if session is not None:
            session.kick(reason)
        stream = self._streams.get(key)
        if stream is None:
            return session is not None
        stream.publisher = None
        self._end(stream, reason)
        return True

    def _end(self, stream: LiveStream, reason: str) -> None:
        key = stream.key
        if self._streams.get(key) is not stream or key in self._sessions:
            return
        timer = self._grace.pop(key, None)
        if timer is not None:
            timer.cancel()
        del self._streams[key]
        stream.end(reason)
        stats = stream.stats()
        for counter in _TOTALS:
            self._ended_totals[counter] += stats[counter]
        log.info(
            "stream %s ended (%s): %d publish session(s), %.1f MB in, %.1f MB out",
            key,
            reason,
            stream.publish_count,
            stream.bytes_in / 1e6,
            stream.bytes_out / 1e6,
        )
        info = {"reason": reason, "stream": stats, "relayed": stream.relayed}
        self._emit(StreamEvent("end", stream.app, stream.name, info))
