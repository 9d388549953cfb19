"""Renditions as ordinary hub streams: ``demo_480p`` is stream ``demo`` at 480 lines (Tencent CSS's
``streamname_template`` convention), playable on every protocol the hub serves.

A source being transcoded has a :class:`Job`: a sink of the source stream whose packets go to a worker
process (see :mod:`relay.transcode.pool`), and a publisher of one hub stream per rendition switched on,
which gets what the worker makes. Renditions keep the source's timestamps, so they line up with it
(and their HLS segments with the source's).

On demand (the default), a rendition starts when a viewer asks for it (the hub asks this module as a
stream provider) and stops ``idle_seconds`` after its last viewer left; ``always`` starts every rung
when the source is published. ``max_transcodes`` caps the renditions being encoded at once: past it a
request is refused with the reason (HTTP 503, RTMP StreamNotFound), never queued on a full box.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relay.formats import h264
from relay.formats.packet import VIDEO, Packet
from relay.hub import Hub, PublisherInfo, PublishSession, StreamEvent, StreamRefused, Subscription
from relay.transcode import encoders, wire
from relay.transcode.ladder import DECODERS, Rung, scaled_width
from relay.transcode.pool import Pool
from relay.transcode.settings import COMPAT, TranscodeSettings

log = logging.getLogger("minilive.transcode")

PROTOCOL = "transcode"  # the publisher protocol of a rendition stream
LATENCY_SAMPLES = 512
# Video that live-player and every FLV/RTMP client play as it is.
PLAYABLE_VIDEO = "h264"

Stats = dict[str, Any]  # a stream's snapshot (Hub.stats)
# Which rungs a source gets: (app, source stream) -> its rungs, or None for the server's ladder.
LadderLookup = Callable[[str, str], list[Rung] | None]


@dataclass(slots=True)
class Rendition:
    """One rung of a job, switched on: the hub stream it publishes and what it measured."""

    rung: Rung
    stream: str
    session: PublishSession | None = None
    started: float = field(default_factory=time.monotonic)
    watched: float = field(default_factory=time.monotonic)  # last time it had an audience
    last_ts: int = -1
    frames: int = 0
    bytes: int = 0
    # What the ticker computed over the last second.
    bitrate: float = 0.0
    fps: float = 0.0
    video_config: bytes | None = None  # its encoder's sequence header, once it has made one
    latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    _mark: tuple[float, int, int] = (0.0, 0, 0)


@dataclass(slots=True)
class VariantFacts:
    """A rendition as an HLS master playlist lists it: its stream, picture, bitrates, codec."""

    stream: str
    width: int  # 0 and 0: audio only
    height: int
    video_bitrate: int  # bit/s, the rung's target
    max_rate: int  # bit/s, the rung's VBV maximum
    fps_cap: float
    video_codec: str  # RFC 6381: from its sequence header, or what its encoder will write; "" for audio only


class Job:
    """One source being transcoded: its sink on the source, its worker, its renditions."""

    def __init__(self, service: Renditions, app: str, source: str, rungs: list[Rung]) -> None:
        self.service = service
        self.app = app
        self.source = source
        self.rungs = rungs
        self.id = service.pool.new_job_id()
        self.renditions: dict[str, Rendition] = {}
        self.subscription: Subscription | None = None
        self.dropping = False  # the worker's queue was full: packets are skipped until a keyframe
        self.dropped = 0
        self.report: dict[str, Any] = {}
        self.closed = False
        self.replaying = False  # inside subscribe(): the packets come from the hub's cache

    def subscribe(self) -> Subscription | None:
        """Become a sink of the source: its headers and GOP cache come at once, then every packet."""
        if self.subscription is not None:
            self.subscription.close()
        self.replaying = True
        try:
            self.subscription = self.service.hub.add_sink(self.app, self.source, self)
        finally:
            self.replaying = False
        return self.subscription

    def selection(self) -> dict[str, Any]:
        """The SELECT message's data: every rung (the list may have grown), and those switched on."""
        return {"rungs": [rung.to_dict() for rung in self.rungs], "enabled": list(self.renditions)}

    @property
    def label(self) -> str:
        return f"{self.app}/{self.source}"

    # ------------------------------------------------------------ pool side

    def spec(self) -> dict[str, Any]:
        last = max((r.last_ts for r in self.renditions.values()), default=-1)
        s = self.service.settings
        return {
            **self.selection(),
            "preset": s.preset,
            "tune": s.tune,
            "encoder": self.service.encoder,
            "resume_after": last if last >= 0 else None,
            "max_delay_ms": s.max_delay_ms,
            "label": self.label,
        }

    def output(self, index: int, packet: Packet, sent_ns: int) -> None:
        rendition = self.renditions.get(self.rungs[index].name)
        if rendition is None:
            return
        if rendition.session is None:  # "always": the stream appears with its first packet
            rendition.session = self.service.publish(self, rendition)
        rendition.session.send(packet.kind, packet.timestamp, packet.payload)
        rendition.bytes += len(packet.payload)
        if packet.kind == VIDEO and packet.config:
            rendition.video_config = packet.payload
        elif packet.kind == VIDEO:
            rendition.frames += 1
            if packet.timestamp > rendition.last_ts:
                rendition.last_ts = packet.timestamp
            if sent_ns:
                rendition.latency_ms.append((time.monotonic_ns() - sent_ns) / 1e6)
        elif packet.timestamp > rendition.last_ts:
            rendition.last_ts = packet.timestamp

    def stats(self, data: dict[str, Any]) -> None:
        self.report = data

    def restarted(self) -> None:
        log.info("transcode %s: resuming on a new worker process", self.label)
        self.dropping = True  # the new worker starts from a keyframe: the GOP cache, fed again now
        self.subscribe()

    # ------------------------------------------------------------ sink of the source

    def feed(self, packet: Packet) -> None:
        if self.dropping:
            if packet.kind == VIDEO and not packet.keyframe and not packet.config:
                self.dropped += 1
                return
            if packet.kind == VIDEO and packet.keyframe:
                self.dropping = False
        # What the hub replays when the job subscribes (headers, GOP cache) is not late: it is untimed.
        sent = 0 if self.replaying else time.monotonic_ns()
        if not self.service.pool.send_packet(self.id, packet, sent):
            self.dropped += 1
            if packet.kind == VIDEO and not packet.config:
                worker = self.service.pool.worker_of(self.id)
                if not self.dropping and worker is not None and worker.alive:  # (a dead one is being replaced)
                    log.warning("transcode %s: its worker is too far behind: skipping to the next keyframe", self.label)
                self.dropping = True

    def new_publisher(self) -> None:
        self.service.pool.control(self.id, wire.NEW_PUBLISHER)

    def end(self) -> None:
        self.service.close_job(self, "the source ended")

    def failed(self, error: Exception) -> None:
        self.service.close_job(self, f"the source failed: {error}")


class Renditions:
    """The hub's renditions: the stream provider, the jobs, the idle timer."""

    def __init__(self, hub: Hub, settings: TranscodeSettings, ladder_for: LadderLookup | None = None) -> None:
        self.hub = hub
        self.settings = settings
        self.ladder = settings.ladder()
        self.ladder_for = ladder_for
        self.pool = Pool(settings.worker_count, settings.hang_seconds)
        self.encoder = encoders.SOFTWARE
        self.jobs: dict[str, Job] = {}  # by "app/source"
        self._ticker: asyncio.Task[None] | None = None
        self.refused = 0
        self.kept: set[str] = set()  # "app/source" whose renditions run whatever their audience (recorded)
        self._unkept: set[tuple[str, str, str]] = set()  # kept renditions refused by max_transcodes (logged)
        hub.add_provider(self.provide)
        hub.add_listener(self._stream_event)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.encoder = await loop.run_in_executor(None, encoders.choose, self.settings.encoder)
        await self.pool.start()
        self._ticker = asyncio.create_task(self._tick())
        rungs = ", ".join(r.name for r in self.ladder) or "none"
        log.info("transcode: renditions %s (%s), up to %d worker processes, at most %d at once, %s",
                 rungs, self.settings.mode, self.pool.size, self.settings.max_transcodes, self.encoder)  # fmt: skip

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for job in list(self.jobs.values()):
            self.close_job(job, "server shutting down")
        await self.pool.stop()

    # ------------------------------------------------------------ what exists

    def rungs_for(self, app: str, source: str, stats: Stats | None = None) -> list[Rung]:
        """The rungs source ``app/source`` may have now: its ladder, plus the H.264 one when its video
        is in another codec that can be decoded here. (Rungs at or above its height are listed;
        :meth:`available` leaves them out.) ``stats``: the source's snapshot, if the caller has it."""
        custom = self.ladder_for(app, source) if self.ladder_for is not None else None
        rungs = list(custom if custom is not None else self.ladder)
        if self.compat_needed(app, source, stats):
            rungs.append(Rung(COMPAT, 1080, source_size=True))
        return rungs

    def for_players(self, app: str, source: str) -> str | None:
        """The rendition that live-player and every FLV/RTMP client should play instead of source
        ``app/source`` as it is now (its stream is ``{source}_{name}``), or None for the source itself."""
        return COMPAT if self.compat_needed(app, source) else None

    def compat_needed(self, app: str, source: str, stats: Stats | None = None) -> bool:
        """Whether source ``app/source`` gets the H.264 rendition: compat_rendition is on, and its video
        is in a codec that live-player cannot play and the ladder can decode (HEVC, AV1, VP8, VP9)."""
        if not self.settings.compat_rendition:
            return False
        if stats is None:
            stats = self.hub.stats(app, source)
        codec = ((stats or {}).get("video") or {}).get("codec", "")
        return codec != PLAYABLE_VIDEO and codec in DECODERS

    def available(self, app: str, source: str, stats: Stats | None = None) -> list[Rung]:
        """The renditions that source ``app/source`` can have as it is now (none upscaled), as made.
        ``stats``: the source's snapshot, if the caller has it (it is read once)."""
        if stats is None:
            stats = self.hub.stats(app, source)
        if stats is None or self.is_rendition(stats) or stats["relayed"]:
            return []  # a pulled stream's renditions are its origin's
        video = stats.get("video") or {}
        height = video.get("height") or 0
        rungs = self.rungs_for(app, source, stats)
        out = [r.for_source(height) for r in rungs if height and r.fits(height)]
        if stats.get("audio"):
            out += [r for r in rungs if r.audio_only]
        return out

    @staticmethod
    def is_rendition(stats: Stats) -> bool:
        """Whether the stream of this snapshot is a rendition (its publisher is a transcoder)."""
        publisher = stats.get("publisher")
        return bool(publisher and publisher["protocol"] == PROTOCOL)

    def source_of(self, app: str, name: str) -> tuple[str, Rung] | None:
        """(source stream, rung) when ``name`` names a rendition that source ``app/…`` can have now."""
        source, _, rung_name = name.rpartition("_")
        if not source or not self.hub.has(app, source):
            return None
        for rung in self.available(app, source):
            if rung.name == rung_name:
                return source, rung
        return None

    def variants(self, app: str, source: str) -> list[VariantFacts]:
        """The renditions source ``app/source`` can have now (:meth:`available`), as an HLS master
        playlist lists them. Picture size and codec are a running rendition's own; before it runs,
        the size is the source's scaled and the codec what its encoder will write
        (:func:`relay.transcode.encoders.expected_codec`)."""
        stats = self.hub.stats(app, source)
        video = (stats or {}).get("video") or {}
        width, height = video.get("width") or 0, video.get("height") or 0
        job = self.jobs.get(f"{app}/{source}")
        out = []
        for rung in self.available(app, source, stats):
            stream = f"{source}_{rung.name}"
            if rung.audio_only:
                out.append(VariantFacts(stream, 0, 0, 0, 0, rung.fps_cap, ""))
                continue
            rendition = job.renditions.get(rung.name) if job is not None else None
            made = (self.hub.stats(app, stream) or {}).get("video") or {} if rendition is not None else {}
            size = (
                (made["width"], made["height"])
                if made.get("width")
                else (scaled_width(width, height, rung.height), rung.height)
            )
            config = rendition.video_config if rendition is not None else None
            codec = (h264.codec_string(config) if config else None) or encoders.expected_codec(
                self.encoder, self.settings.preset, *size, rung.fps_cap, rung.max_rate
            )
            out.append(VariantFacts(stream, *size, rung.video_bitrate, rung.max_rate, rung.fps_cap, codec))
        return out

    def keep_warm(self, app: str, source: str) -> None:
        """Players may switch to the running renditions of ``app/source`` at any moment (an HLS player
        that came through the master playlist): they are not stopped as idle meanwhile."""
        job = self.jobs.get(f"{app}/{source}")
        if job is not None:
            now = time.monotonic()
            for rendition in job.renditions.values():
                rendition.watched = now

    @property
    def running(self) -> int:
        """Renditions being encoded now (audio-only ones cost nothing and are not counted)."""
        return sum(1 for job in self.jobs.values() for r in job.renditions.values() if not r.rung.audio_only)

    # ------------------------------------------------------------ the hub's provider

    def provide(self, app: str, name: str) -> bool:
        found = self.source_of(app, name)
        if found is None:
            return False
        source, rung = found
        limit = self.settings.max_transcodes
        if not rung.audio_only and self.running >= limit:
            self.refused += 1
            log.warning("transcode: refused %s/%s: %d renditions are being encoded, the limit", app, name, limit)
            raise StreamRefused(
                f"rendition {app}/{name} cannot start: this server encodes {limit} renditions at once, its "
                f"limit ([transcode] max_transcodes); play {app}/{source} itself, or try again later"
            )
        self.start_rendition(app, source, rung)
        return True

    # ------------------------------------------------------------ jobs

    def start_rendition(self, app: str, source: str, rung: Rung) -> Rendition:
        key = f"{app}/{source}"
        job = self.jobs.get(key)
        fresh = job is None
        if job is None:
            job = self.jobs[key] = Job(self, app, source, self.rungs_for(app, source))
        elif rung.name not in {r.name for r in job.rungs}:
            job.rungs.append(rung)  # the ladder lookup changed since the job opened
        rendition = job.renditions.get(rung.name)
        if rendition is not None:
            return rendition
        rendition = job.renditions[rung.name] = Rendition(rung, f"{source}_{rung.name}")
        if self.settings.mode != "always":
            rendition.session = self.publish(job, rendition)
        log.info("transcode %s: rendition %s started (%d running)", job.label, rendition.stream, self.running)
        if fresh:
            asyncio.get_running_loop().create_task(self._open(job))
        else:
            self.pool.control(job.id, wire.SELECT, job.selection())
        return rendition

    async def _open(self, job: Job) -> None:
        try:
            await self.pool.open(job)
        except OSError as exc:
            log.error("transcode %s: cannot start a worker process: %s", job.label, exc)
            self.close_job(job, "no worker process")
            return
        if not job.closed and job.subscribe() is None:
            self.close_job(job, "the source is gone")

    def publish(self, job: Job, rendition: Rendition) -> PublishSession:
        worker = self.pool.worker_of(job.id)
        info = PublisherInfo(PROTOCOL, f"worker {worker.index if worker else '-'}", derived=True)
        return self.hub.publish(job.app, rendition.stream, info, lambda reason: self._kicked(job, rendition, reason))

    def _kicked(self, job: Job, rendition: Rendition, reason: str) -> None:
        # A real publisher took the rendition's name over (or the hub ended it): it stops being made.
        if job.renditions.get(rendition.rung.name) is rendition:
            log.info("transcode %s: rendition %s stopped: %s", job.label, rendition.stream, reason)
            rendition.session = None
            self.stop_rendition(job, rendition, "")

    def stop_rendition(self, job: Job, rendition: Rendition, reason: str) -> None:
        del job.renditions[rendition.rung.name]
        if rendition.session is not None:
            session, rendition.session = rendition.session, None
            session.close("end")
        if reason:
            log.info("transcode %s: rendition %s stopped (%s)", job.label, rendition.stream, reason)
        if not job.renditions:
            self.close_job(job, "no rendition left")
        else:
            self.pool.control(job.id, wire.SELECT, job.selection())

    def close_job(self, job: Job, reason: str) -> None:
        if job.closed:
            return
        job.closed = True
        if self.jobs.get(job.label) is job:
            del self.jobs[job.label]
        if job.subscription is not None:
            job.subscription.close()
        self.pool.close(job.id)
        for rendition in list(job.renditions.values()):
            if rendition.session is not None:
                session, rendition.session = rendition.session, None
                session.close("end")
        job.renditions.clear()
        log.info("transcode %s: stopped (%s)", job.label, reason)

    def _stream_event(self, event: StreamEvent) -> None:
        if event.type != "publish" or self.settings.mode != "always":
            return
        publisher = event.info.get("publisher")
        if (
            publisher is None
            or publisher.protocol == PROTOCOL
            or publisher.relayed
            or f"{event.app}/{event.name}" in self.jobs
        ):
            return
        for rung in self.rungs_for(event.app, event.name):
            if not rung.audio_only and self.running >= self.settings.max_transcodes:
                log.warning("transcode %s/%s: rendition %s not started: max_transcodes reached",
                            event.app, event.name, rung.name)  # fmt: skip
                continue
            self.start_rendition(event.app, event.name, rung)

    # ------------------------------------------------------------ kept running (recorded)

    def keep(self, app: str, source: str) -> list[str]:
        """Keep every rendition of source ``app/source`` running until :meth:`release` (a replay records
        them): those it can have now start now, the others as soon as it can (its picture size is
        not known before its first keyframe). The names of the rungs that may appear."""
        self.kept.add(f"{app}/{source}")
        self._start_kept(app, source)
        return [rung.name for rung in self.rungs_for(app, source)]

    def _start_kept(self, app: str, source: str) -> None:
        job = self.jobs.get(f"{app}/{source}")
        for rung in self.available(app, source):
            if job is not None and rung.name in job.renditions:
                continue
            if not rung.audio_only and self.running >= self.settings.max_transcodes:
                if (app, source, rung.name) not in self._unkept:
                    self._unkept.add((app, source, rung.name))
                    log.warning("transcode %s/%s: rendition %s not recorded: max_transcodes reached",
                                app, source, rung.name)  # fmt: skip
                continue
            self.start_rendition(app, source, rung)
            job = self.jobs.get(f"{app}/{source}")

    def release(self, app: str, source: str) -> None:
        self.kept.discard(f"{app}/{source}")
        self._unkept = {item for item in self._unkept if item[:2] != (app, source)}

    # ------------------------------------------------------------ measures and the idle timer

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.tick(time.monotonic())

    def tick(self, now: float) -> None:
        for key in list(self.kept):
            app, _, source = key.partition("/")
            if self.hub.has(app, source):
                self._start_kept(app, source)
        on_demand = self.settings.mode != "always"
        idle = self.settings.idle_seconds
        for job in list(self.jobs.values()):
            kept = job.label in self.kept
            for rendition in list(job.renditions.values()):
                _measure(rendition, now)
                if not on_demand or kept:
                    rendition.watched = now
                    continue
                if sum(self.hub.audience(job.app, rendition.stream).values()):
                    rendition.watched = now
                elif now - rendition.watched > idle:
                    self.stop_rendition(job, rendition, f"no viewer for {idle:.0f} s")

    def describe(self, app: str, source: str, stats: Stats | None = None) -> list[dict[str, Any]]:
        """Source ``app/source``'s renditions for the API: what can be made, what runs, how well."""
        job = self.jobs.get(f"{app}/{source}")
        report = job.report if job is not None else {}
        worker = self.pool.worker_of(job.id) if job is not None else None
        out = []
        for rung in self.available(app, source, stats):
            rendition = job.renditions.get(rung.name) if job is not None else None
            entry: dict[str, Any] = {
                "name": rung.name,
                "stream": f"{source}_{rung.name}",
                "running": rendition is not None,
                "height": rung.height,
                "target_bitrate": rung.video_bitrate,
            }
            if rendition is not None:
                latency = sorted(rendition.latency_ms)
                video = (self.hub.stats(app, rendition.stream) or {}).get("video") or {}
                counts = report.get("rungs", {}).get(rung.name, {})
                entry.update(
                    width=video.get("width", 0),
                    height=video.get("height") or rung.height,
                    bitrate=round(rendition.bitrate),
                    fps=round(rendition.fps, 2),
                    encoder="copy" if rung.audio_only else self.encoder,
                    behind_ms=report.get("behind_ms", 0.0),
                    latency_ms={"p50": _percentile(latency, 0.5), "p99": _percentile(latency, 0.99)},
                    frames_dropped=counts.get("frames_dropped", 0),
                    decode_errors=report.get("errors", 0),
                    refusal=report.get("refusal", ""),
                    worker=worker.pid if worker is not None else None,
                    uptime=round(time.monotonic() - rendition.started, 1),
                )
            out.append(entry)
        return out

    def lags(self) -> list[tuple[str, str, float, float | None]]:
        """Every running rendition as (source ``app/name``, rendition stream, how far its worker is
        behind the source in ms, the p99 in ms of its packets' time from the source to the encoded
        output, None before one came back), for /metrics."""
        out = []
        for job in self.jobs.values():
            behind = float(job.report.get("behind_ms", 0.0))
            for rendition in job.renditions.values():
                out.append((job.label, rendition.stream, behind, _percentile(sorted(rendition.latency_ms), 0.99)))
        return out

    def totals(self) -> dict[str, Any]:
        return {
            "jobs": len(self.jobs),
            "running": self.running,
            "refused": self.refused,
            "worker_restarts": self.pool.restarts,
            "dropped": sum(job.dropped for job in self.jobs.values()),
            "decode_errors": sum(job.report.get("errors", 0) for job in self.jobs.values()),
            "unsupported_sources": sum(job.report.get("unsupported", 0) for job in self.jobs.values()),
        }


def _measure(rendition: Rendition, now: float) -> None:
    then, frames, size = rendition._mark
    if then:
        elapsed = now - then
        if elapsed > 0:
            rendition.fps = (rendition.frames - frames) / elapsed
            rendition.bitrate = (rendition.bytes - size) * 8 / elapsed
    rendition._mark = (now, rendition.frames, rendition.bytes)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))], 1)
