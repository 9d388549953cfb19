"""Routes for live streams, health and metrics: thin views over the hub."""

from __future__ import annotations

import os
import time

from aiohttp import web

from api import supervisor
from relay.hub import Hub
from relay.transcode.renditions import Renditions

START = time.time()


def routes(hub: Hub, renditions: Renditions | None = None) -> list[web.RouteDef]:
    async def streams(request: web.Request) -> web.Response:
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
        return web.Response(text=render_metrics(hub, renditions), content_type="text/plain", charset="utf-8")

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


def render_metrics(hub: Hub, renditions: Renditions | None = None) -> str:
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
        transcode = renditions.totals()
        for key, (name, kind, about) in _TRANSCODE_METRICS.items():
            lines += [f"# HELP {name} {about}", f"# TYPE {name} {kind}", f"{name} {transcode[key]}"]
    return "\n".join(lines) + "\n"
