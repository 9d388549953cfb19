"""Routes for live streams, health and metrics: thin views over the hub."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from api import supervisor
from api.errors import ApiError, json_error
from api.rest import request_app
from relay.http.fast import Limits
from relay.hub import Hub
from relay.transcode.renditions import Renditions

if TYPE_CHECKING:
    from api.cluster import ClusterPart
    from ingest.server import RtmpServer
    from signaling.sessions import Registry

START = time.time()


def routes(
    hub: Hub,
    renditions: Renditions | None = None,
    cluster: ClusterPart | None = None,
    rtmp: RtmpServer | None = None,
    http: Limits | None = None,
    public_stats: bool = False,
    webrtc: Registry | None = None,
) -> list[web.RouteDef]:
    async def streams(request: web.Request) -> web.Response:
        # Every publisher's address and every stream: an app's token or a console session to read, unless
        # the public_stats setting says otherwise (issue 16). /metrics holds totals only: see docs/decisions.md.
        if not public_stats:
            try:
                await request_app(request)
            except ApiError as exc:
                return json_error(exc)
        listed = hub.all_stats()
        if renditions is not None:
            for stream in listed:
                if renditions.is_rendition(stream):
                    stream["rendition_of"] = stream["name"].rpartition("_")[0]
                else:
                    stream["renditions"] = renditions.describe(stream["app"], stream["name"], stream)
        body: dict[str, object] = {"streams": listed}
        if renditions is not None:
            body["transcode"] = renditions.totals()
        if cluster is not None:
            body["cluster"] = cluster.describe()
        return web.json_response(body)

    worker = supervisor.worker_index()

    async def healthz(request: web.Request) -> web.Response:
        # pid and worker (index under a supervisor, else null): which process answered.
        body = {
            "status": "ok",
            "streams": hub.stream_count,
            "uptime": round(time.time() - START, 1),
            "pid": os.getpid(),
            "worker": worker,
        }
        return web.json_response(body)

    async def metrics(request: web.Request) -> web.Response:
        text = render_metrics(
            hub,
            renditions,
            cluster.describe() if cluster is not None else None,
            rtmp.totals() if rtmp is not None else None,
            http,
            webrtc.totals() if webrtc is not None else None,
        )
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    return [
        web.get("/api/v1/streams", streams),
        web.get("/healthz", healthz),
        web.get("/metrics", metrics),
    ]


# Transcoding totals in /metrics: (name, type, help).
_TRANSCODE_METRICS = {
    "running": ("minilive_renditions_running", "gauge", "Renditions being encoded."),
    "jobs": ("minilive_transcode_sources", "gauge", "Sources being transcoded (each decoded once)."),
    "refused": ("minilive_renditions_refused_total", "counter", "Rendition requests refused by max_transcodes."),
    "worker_restarts": ("minilive_transcode_worker_restarts_total", "counter", "Worker processes restarted."),
    "decode_errors": ("minilive_transcode_decode_errors", "gauge", "Frames that did not decode, running sources."),
}


# The HTTP port's refusals of hostile clients (issue 16) in /metrics: (name, type, help).
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
}


# The cluster in /metrics: (name, type, help).
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


# The RTMP server's refusals and protocol errors in /metrics: (name, type, help).
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
    "heap_trims": (
        "minilive_rtmp_heap_trims_total",
        "counter",
        "Times the heap's free pages went back to the system after closed connections freed trim_after_bytes.",
    ),
}


# WebRTC sessions and their refusals (issue 16) in /metrics: (name, type, help).
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


def render_metrics(
    hub: Hub,
    renditions: Renditions | None = None,
    cluster: dict[str, Any] | None = None,
    rtmp: dict[str, int] | None = None,
    http: Limits | None = None,
    webrtc: dict[str, int] | None = None,
) -> str:
    """Prometheus text exposition format."""
    totals = hub.totals()
    lines = [
        "# HELP minilive_streams Streams known to the hub (live or in their reconnect grace period).",
        "# TYPE minilive_streams gauge",
        f"minilive_streams {totals['streams']}",
        "# HELP minilive_publishers Streams with a connected publisher.",
        "# TYPE minilive_publishers gauge",
        f"minilive_publishers {totals['publishers']}",
        "# HELP minilive_viewers Audience by protocol: connected viewers, HLS players seen lately, WebRTC sessions.",
        "# TYPE minilive_viewers gauge",
    ]
    lines += [f'minilive_viewers{{protocol="{p}"}} {n}' for p, n in sorted(totals["audience"].items())]
    lines += [
        "# HELP minilive_received_bytes_total Media bytes received from publishers.",
        "# TYPE minilive_received_bytes_total counter",
        f"minilive_received_bytes_total {totals['bytes_in']}",
        "# HELP minilive_sent_bytes_total Bytes written to viewers.",
        "# TYPE minilive_sent_bytes_total counter",
        f"minilive_sent_bytes_total {totals['bytes_out']}",
        "# HELP minilive_viewer_skips_total Times a viewer fell behind and skipped to the next keyframe.",
        "# TYPE minilive_viewer_skips_total counter",
        f"minilive_viewer_skips_total {totals['viewers_skipped_to_keyframe']}",
        "# HELP minilive_viewers_dropped_slow_total Viewers disconnected for staying behind.",
        "# TYPE minilive_viewers_dropped_slow_total counter",
        f"minilive_viewers_dropped_slow_total {totals['viewers_dropped_slow']}",
        "# HELP minilive_sink_failures_total Sinks (HLS packaging, recording, WebRTC) detached because they failed.",
        "# TYPE minilive_sink_failures_total counter",
        f"minilive_sink_failures_total {totals['sink_failures']}",
    ]
    if renditions is not None:
        lines += _described(_TRANSCODE_METRICS, renditions.totals())
    if cluster is not None:
        lines += _described(_CLUSTER_METRICS, cluster)
    if rtmp is not None:
        lines += _described(_RTMP_METRICS, rtmp)
    if http is not None:
        lines += _described(_HTTP_METRICS, {key: getattr(http, key) for key in _HTTP_METRICS})
    if webrtc is not None:
        lines += _described(_WEBRTC_METRICS, webrtc)
    return "\n".join(lines) + "\n"


def _described(table: dict[str, tuple[str, str, str]], values: dict[str, Any]) -> list[str]:
    """The lines of a table of metrics (key -> name, type, help), with their ``values``."""
    lines = []
    for key, (name, kind, about) in table.items():
        lines += [f"# HELP {name} {about}", f"# TYPE {name} {kind}", f"{name} {int(values[key])}"]
    return lines
