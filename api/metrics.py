"""``GET /metrics``: one server's Prometheus exposition, made by prometheus-client.

Each server has its own ``CollectorRegistry`` (tests run several servers in one process), with the
client's process, GC and platform collectors, and collectors of ours that read the server's plain
counters when a scrape comes: the media path and the lean HTTP path keep plain ``+= 1`` increments
and bucket counts (``relay.http.latency``), and never call prometheus-client.

Counters and gauges that are plain values in a dict are a table line each (``key: (name, type,
help)``) read by :class:`TableCollector`: a new counter is a new line in a table below.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from api import supervisor
from api.store import RoomStore
from relay.http.fast import Limits
from relay.http.latency import Histogram, histograms
from relay.hub import Hub
from relay.transcode.renditions import Renditions

if TYPE_CHECKING:
    from api.cluster import ClusterPart
    from ingest.server import RtmpServer
    from signaling.sessions import Registry

Table = dict[str, tuple[str, str, str]]  # key -> (metric name, "counter" or "gauge", help)
Read = Callable[[], Mapping[str, Any]]


@dataclass(slots=True)
class MetricsSettings:
    """The ``[metrics]`` section."""

    # Per-stream series (bitrate in and out, viewers): the streams with the most viewers are labelled
    # by app and stream, up to this many; the rest are summed under app="_other", stream="_other", so
    # that a server with thousands of streams does not make thousands of series.
    max_labelled_streams: int = 100
    # A port of its own for /metrics (0: none; /metrics is on the HTTP port anyway). With --workers N,
    # worker i listens on port + i: the shared HTTP port answers from whichever worker the kernel
    # picks, so that Prometheus scrapes each worker as a target of its own here.
    port: int = 0

    def validate(self, workers: int = 1, taken: tuple[int, ...] = ()) -> None:
        if self.max_labelled_streams < 0:
            raise ValueError(
                f"[metrics] max_labelled_streams must be 0 or more, not {self.max_labelled_streams}"
                ' (0 sums every stream under stream="_other")'
            )
        if not self.port:
            return
        ports = range(self.port, self.port + workers)
        if self.port < 0 or ports[-1] > 65535 or any(port in ports for port in taken):
            raise ValueError(
                f"[metrics] port {self.port} needs ports {ports[0]}-{ports[-1]} (one per worker), free and"
                f" apart from the RTMP and HTTP ports {', '.join(map(str, taken))}: choose another, e.g. 9150"
            )


# The hub's totals: (name, type, help).
_HUB_METRICS = {
    "streams": ("minilive_streams", "gauge", "Streams known to the hub (live or in their reconnect grace period)."),
    "publishers": ("minilive_publishers", "gauge", "Streams with a connected publisher."),
    "bytes_in": ("minilive_received_bytes_total", "counter", "Media bytes received from publishers."),
    "bytes_out": ("minilive_sent_bytes_total", "counter", "Bytes written to viewers."),
    "viewers_skipped_to_keyframe": (
        "minilive_viewer_skips_total",
        "counter",
        "Times a viewer fell behind and skipped to the next keyframe.",
    ),
    "viewers_dropped_slow": (
        "minilive_viewers_dropped_slow_total",
        "counter",
        "Viewers disconnected for staying behind.",
    ),
    "sink_failures": (
        "minilive_sink_failures_total",
        "counter",
        "Sinks (HLS packaging, recording, WebRTC) detached because they failed.",
    ),
}

# Transcoding totals: (name, type, help).
_TRANSCODE_METRICS = {
    "running": ("minilive_renditions_running", "gauge", "Renditions being encoded."),
    "jobs": ("minilive_transcode_sources", "gauge", "Sources being transcoded (each decoded once)."),
    "refused": ("minilive_renditions_refused_total", "counter", "Rendition requests refused by max_transcodes."),
    "worker_restarts": ("minilive_transcode_worker_restarts_total", "counter", "Worker processes restarted."),
    "decode_errors": ("minilive_transcode_decode_errors", "gauge", "Frames that did not decode, running sources."),
}

# The HTTP port's refusals of hostile clients (issue 16): (name, type, help).
_HTTP_METRICS = {
    "head_timeouts": (
        "minilive_http_head_timeouts_total",
        "counter",
        "HTTP connections closed because a request head did not arrive within http_head_timeout_seconds.",
    ),
    "refused_per_address": (
        "minilive_http_refused_per_address_total",
        "counter",
        "HTTP connections refused because their address held http_max_connections_per_address.",
    ),
    "requests_abandoned": (
        "minilive_http_requests_abandoned_total",
        "counter",
        "HTTP requests whose client closed the connection before they were answered (mid-body, say).",
    ),
}

# The cluster: (name, type, help).
_CLUSTER_METRICS = {
    "nodes_alive": ("minilive_cluster_nodes", "gauge", "Nodes alive in the registry (this one included)."),
    "registry_ok": ("minilive_cluster_registry_up", "gauge", "1 when the last heartbeat reached the registry."),
    "pulls_running": ("minilive_cluster_pulls", "gauge", "Streams pulled from their origin for viewers here."),
    "pulls_started": ("minilive_cluster_pulls_started_total", "counter", "Pulls started."),
    "streams_lost_to_other_nodes": (
        "minilive_cluster_streams_moved_total",
        "counter",
        "Streams whose anchor went on at another node.",
    ),
    "registry_errors": ("minilive_cluster_registry_errors_total", "counter", "Registry calls that failed."),
    "publishes_refused": ("minilive_cluster_publishes_refused_total", "counter", "Publishes the registry refused."),
    "credentials_refused": (
        "minilive_cluster_credentials_refused_total",
        "counter",
        "Cluster listener requests without a valid credential.",
    ),
    "hls_proxied": ("minilive_cluster_hls_proxied_total", "counter", "HLS requests proxied to their origin."),
    "hls_cache_hits": ("minilive_cluster_hls_cache_hits_total", "counter", "HLS media answered from the edge cache."),
}

# The RTMP server's refusals, protocol errors and handshakes: (name, type, help).
_RTMP_METRICS = {
    "connections": ("minilive_rtmp_connections", "gauge", "Open RTMP connections."),
    "pending_bytes": (
        "minilive_rtmp_pending_bytes",
        "gauge",
        "Bytes held in unfinished RTMP messages, all connections (the [rtmp] pending_budget caps it).",
    ),
    "refused_total": ("minilive_rtmp_refused_total", "counter", "Connections refused by max_connections."),
    "refused_address": (
        "minilive_rtmp_refused_address_total",
        "counter",
        "Connections refused by max_connections_per_address.",
    ),
    "refused_budget": ("minilive_rtmp_refused_budget_total", "counter", "Connections refused by pending_budget."),
    "protocol_errors": ("minilive_rtmp_protocol_errors_total", "counter", "Connections dropped for a protocol error."),
    "timeouts": ("minilive_rtmp_timeouts_total", "counter", "Dropped by a handshake/connect/setup deadline."),
    "handshakes": (
        "minilive_rtmp_handshakes_total",
        "counter",
        "RTMP handshakes completed (a connect command followed).",
    ),
    "heap_trims": (
        "minilive_rtmp_heap_trims_total",
        "counter",
        "Times the heap's free pages went back to the system after closed connections freed trim_after_bytes.",
    ),
}

# WebRTC sessions and their refusals (issue 16): (name, type, help).
_WEBRTC_METRICS = {
    "sessions": ("minilive_webrtc_sessions", "gauge", "WHIP and WHEP sessions, connecting or connected."),
    "refused_total": ("minilive_webrtc_refused_total", "counter", "Offers refused by [webrtc] max_sessions."),
    "refused_address": (
        "minilive_webrtc_refused_address_total",
        "counter",
        "Offers refused by [webrtc] max_sessions_per_address.",
    ),
    "timeouts": (
        "minilive_webrtc_connect_timeouts_total",
        "counter",
        "Sessions closed because ICE/DTLS did not connect within [webrtc] connect_timeout.",
    ),
}


@dataclass(frozen=True, slots=True)
class Family:
    """A labelled family over counters that also have names of their own (the tables above), for
    dashboards that sum or split them: ``members`` are (source, key in it, label values)."""

    name: str
    about: str
    labels: tuple[str, ...]
    members: tuple[tuple[str, str, tuple[str, ...]], ...]


_FAMILIES = (
    Family(
        "minilive_refusals_total",
        "Connections refused by a limit, by protocol and the setting that refused them.",
        ("protocol", "limit"),
        (
            ("rtmp", "refused_total", ("rtmp", "max_connections")),
            ("rtmp", "refused_address", ("rtmp", "max_connections_per_address")),
            ("rtmp", "refused_budget", ("rtmp", "pending_budget")),
            ("http", "refused_per_address", ("http", "http_max_connections_per_address")),
            ("webrtc", "refused_total", ("webrtc", "max_sessions")),
            ("webrtc", "refused_address", ("webrtc", "max_sessions_per_address")),
        ),
    ),
    Family(
        "minilive_protocol_errors_total",
        "Connections dropped for a protocol error or a missed deadline, by protocol and kind.",
        ("protocol", "kind"),
        (
            ("rtmp", "protocol_errors", ("rtmp", "malformed")),
            ("rtmp", "timeouts", ("rtmp", "deadline")),
            ("http", "head_timeouts", ("http", "deadline")),
            ("webrtc", "timeouts", ("webrtc", "deadline")),
        ),
    ),
    Family(
        "minilive_handshakes_total",
        "Handshakes completed, by protocol.",
        ("protocol",),
        (("rtmp", "handshakes", ("rtmp",)),),
    ),
)

# Audience protocols always listed (0 when nobody watches that way), so that dashboards have a series
# for each; others the hub reports (a cluster's "relay" pulls) are added when they have viewers.
PROTOCOLS = ("rtmp", "http-flv", "ws-flv", "hls", "whep")
OTHER = "_other"


def _family(name: str, kind: str, about: str, labels: tuple[str, ...] = ()) -> Metric:
    if kind == "counter":
        return CounterMetricFamily(name, about, labels=labels)
    return GaugeMetricFamily(name, about, labels=labels)


class TableCollector(Collector):
    """The metrics of a table (key -> name, type, help), valued from what ``read`` returns at scrape time."""

    def __init__(self, table: Table, read: Read) -> None:
        self.table = table
        self.read = read

    def collect(self) -> Iterator[Metric]:
        values = self.read()
        for key, (name, kind, about) in self.table.items():
            metric = _family(name, kind, about)
            metric.add_metric((), values[key])
            yield metric


class FamilyCollector(Collector):
    """Labelled families (:class:`Family`) over the dicts that ``sources`` read at scrape time; a
    family whose sources are all absent is left out."""

    def __init__(self, families: tuple[Family, ...], sources: Mapping[str, Read]) -> None:
        self.families = families
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        values = {name: read() for name, read in self.sources.items()}
        for family in self.families:
            members = [m for m in family.members if m[0] in values]
            if not members:
                continue
            metric = CounterMetricFamily(family.name, family.about, labels=family.labels)
            for source, key, labels in members:
                metric.add_metric(labels, values[source][key])
            yield metric


class HubCollector(Collector):
    """The hub: totals, audience by protocol, and per-stream bitrates and viewers (the busiest
    ``max_labelled`` streams by name, the rest summed under ``_other``)."""

    def __init__(self, hub: Hub, max_labelled: int) -> None:
        self.hub = hub
        self.max_labelled = max_labelled

    def collect(self) -> Iterator[Metric]:
        snapshots = self.hub.all_stats()  # once: the totals and the per-stream series read it
        totals = self.hub.totals(snapshots)
        yield from TableCollector(_HUB_METRICS, lambda: totals).collect()
        viewers = GaugeMetricFamily(
            "minilive_viewers",
            "Audience by protocol: connected viewers, HLS players seen lately (LL-HLS ones too), WebRTC sessions.",
            labels=("protocol",),
        )
        audience = totals["audience"]
        for protocol in sorted({*PROTOCOLS, *audience}):
            viewers.add_metric((protocol,), audience.get(protocol, 0))
        yield viewers
        yield from self._per_stream(snapshots)

    def _per_stream(self, snapshots: list[dict[str, Any]]) -> Iterator[Metric]:
        labels = ("app", "stream")
        rate_in = GaugeMetricFamily(
            "minilive_stream_bitrate_in_bits_per_second",
            "A stream's media bitrate from its publisher over the last second.",
            labels=labels,
        )
        rate_out = GaugeMetricFamily(
            "minilive_stream_bitrate_out_bits_per_second",
            "A stream's bitrate to its viewers over the last second.",
            labels=labels,
        )
        watching = GaugeMetricFamily("minilive_stream_viewers", "A stream's audience, every protocol.", labels=labels)
        streams = sorted(snapshots, key=lambda s: (s["viewers"], s["bitrate_in"]), reverse=True)
        for stats in streams[: self.max_labelled]:
            names = (stats["app"], stats["name"])
            rate_in.add_metric(names, stats["bitrate_in"])
            rate_out.add_metric(names, stats["bitrate_out"])
            watching.add_metric(names, stats["viewers"])
        rest = streams[self.max_labelled :]
        if rest:
            for metric, key in ((rate_in, "bitrate_in"), (rate_out, "bitrate_out"), (watching, "viewers")):
                metric.add_metric((OTHER, OTHER), sum(s[key] for s in rest))
        yield from (rate_in, rate_out, watching)


def histogram_family(
    name: str, about: str, labels: tuple[str, ...], series: Mapping[tuple[str, ...], Histogram]
) -> Metric:
    """A Prometheus histogram family from our plain histograms, one series per label values."""
    metric = HistogramMetricFamily(name, about, labels=labels)
    for values, histogram in series.items():
        metric.add_metric(values, histogram.cumulative(), histogram.total)
    return metric


class LatencyCollector(Collector):
    """HLS request latency by kind, and store calls by operation (those that were made)."""

    def __init__(self, hls: Mapping[str, Histogram], store: Mapping[str, Histogram], backend: str) -> None:
        self.hls = hls
        self.store = store
        self.backend = backend

    def collect(self) -> Iterator[Metric]:
        yield histogram_family(
            "minilive_hls_request_duration_seconds",
            "HLS requests from their start to the answer, by kind: playlist (master too), blocking (an"
            " LL-HLS playlist reload with _HLS_msn, which waits for its part), part, segment (init too).",
            ("kind",),
            {(kind,): histogram for kind, histogram in self.hls.items()},
        )
        yield histogram_family(
            "minilive_store_duration_seconds",
            "Store calls (SQLite or Redis) by operation, those made since the start.",
            ("backend", "operation"),
            {(self.backend, op): h for op, h in self.store.items() if any(h.counts)},
        )


class TranscodeLagCollector(Collector):
    """How far behind each running rendition is (bounded by max_transcodes, so labelled by stream)."""

    def __init__(self, renditions: Renditions | None) -> None:
        self.renditions = renditions

    def collect(self) -> Iterator[Metric]:
        behind = GaugeMetricFamily(
            "minilive_transcode_behind_seconds",
            "How far a source's transcode worker is behind the source (its queue of undecoded media).",
            labels=("source",),
        )
        lag = GaugeMetricFamily(
            "minilive_transcode_lag_seconds",
            "p99 of a rendition's recent packets' time from the source packet to its encoded output.",
            labels=("source", "rendition"),
        )
        seen: set[str] = set()
        for source, rendition, behind_ms, p99_ms in self.renditions.lags() if self.renditions is not None else ():
            if source not in seen:
                seen.add(source)
                behind.add_metric((source,), behind_ms / 1000)
            if p99_ms is not None:
                lag.add_metric((source, rendition), p99_ms / 1000)
        yield from (behind, lag)


class ProcessExtrasCollector(Collector):
    """What the client's process collector does not tell: threads, asyncio tasks, and which worker
    answered (each worker of ``--workers N`` answers /metrics for itself)."""

    def __init__(self) -> None:
        index = supervisor.worker_index()
        self.worker = "" if index is None else str(index)

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "minilive_worker_info",
            "The process that answered: its worker index under --workers (empty when alone) and pid.",
            labels=("worker", "pid"),
        )
        info.add_metric((self.worker, str(os.getpid())), 1)
        yield info
        yield GaugeMetricFamily("minilive_threads", "Threads of this process.", value=threading.active_count())
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # scraped outside the event loop (a test calling collect directly)
            tasks = 0
        yield GaugeMetricFamily("minilive_asyncio_tasks", "asyncio tasks of this process's event loop.", value=tasks)


# Store operations timed: every coroutine of the interface (api.store.RoomStore) but opening and closing.
_UNTIMED = frozenset(("open", "close"))


def store_backend(store: RoomStore) -> str:
    """What /metrics calls a store: sqlite or redis."""
    return type(store).__name__.removesuffix("Store").lower()


def time_store(store: RoomStore) -> dict[str, Histogram]:
    """Time every call to ``store``'s coroutines, each into its operation's histogram (returned). The
    instance's methods are replaced, so that callers keep calling the store as before."""
    operations = [
        name
        for name, member in inspect.getmembers(RoomStore, inspect.iscoroutinefunction)
        if name not in _UNTIMED and inspect.iscoroutinefunction(getattr(store, name))
    ]
    latency = histograms(tuple(operations))
    for name in operations:
        setattr(store, name, _timed(getattr(store, name), latency[name]))
    return latency


def _timed(call: Callable[..., Awaitable[Any]], histogram: Histogram) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(call)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        try:
            return await call(*args, **kwargs)
        finally:
            histogram.observe(time.monotonic() - start)

    return timed


class Metrics:
    """One server's registry: ``render`` answers a scrape."""

    def __init__(
        self,
        settings: MetricsSettings,
        hub: Hub,
        *,
        hls_latency: Mapping[str, Histogram] | None = None,
        store_latency: Mapping[str, Histogram] | None = None,
        store_backend: str = "",
        renditions: Renditions | None = None,
        cluster: ClusterPart | None = None,
        rtmp: RtmpServer | None = None,
        http: Limits | None = None,
        webrtc: Registry | None = None,
    ) -> None:
        registry = self.registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
        PlatformCollector(registry=registry)
        registry.register(HubCollector(hub, settings.max_labelled_streams))
        sources: dict[str, Read] = {}
        if renditions is not None:
            registry.register(TableCollector(_TRANSCODE_METRICS, renditions.totals))
        registry.register(TranscodeLagCollector(renditions))
        if cluster is not None:
            registry.register(TableCollector(_CLUSTER_METRICS, cluster.describe))
        if rtmp is not None:
            sources["rtmp"] = rtmp.totals
        if http is not None:
            sources["http"] = functools.partial(_attributes, http, tuple(_HTTP_METRICS))
        if webrtc is not None:
            sources["webrtc"] = webrtc.totals
        for name, table in (("rtmp", _RTMP_METRICS), ("http", _HTTP_METRICS), ("webrtc", _WEBRTC_METRICS)):
            if name in sources:
                registry.register(TableCollector(table, sources[name]))
        registry.register(FamilyCollector(_FAMILIES, sources))
        registry.register(LatencyCollector(hls_latency or {}, store_latency or {}, store_backend))
        registry.register(ProcessExtrasCollector())

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition and its content type: Prometheus's text format 0.0.4, or OpenMetrics when
        the scraper's Accept header asks for it."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    async def handle(self, request: web.Request) -> web.Response:
        """``GET /metrics``."""
        body, content_type = self.render(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})


def _attributes(source: object, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(source, name) for name in names}
