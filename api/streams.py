"""Routes for live streams, health and metrics: thin views over the hub."""

from __future__ import annotations

import time

from aiohttp import web

from relay.hub import Hub

START = time.time()


def routes(hub: Hub) -> list[web.RouteDef]:
    async def streams(request: web.Request) -> web.Response:
        return web.json_response({"streams": hub.list()})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "streams": len(hub.streams), "uptime": round(time.time() - START, 1)})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=render_metrics(hub), content_type="text/plain", charset="utf-8")

    return [
        web.get("/api/v1/streams", streams),
        web.get("/healthz", healthz),
        web.get("/metrics", metrics),
    ]


def render_metrics(hub: Hub) -> str:
    """Prometheus text exposition format."""
    viewers: dict[str, int] = {}
    bytes_in = hub.totals["bytes_in"]
    bytes_out = hub.totals["bytes_out"]
    skipped = hub.totals["skipped"]
    slow = hub.totals["slow"]
    publishing = 0
    for stream in hub.streams.values():
        for protocol, count in stream.viewers_by_protocol().items():
            viewers[protocol] = viewers.get(protocol, 0) + count
        bytes_in += stream.bytes_in
        bytes_out += stream.bytes_out
        skipped += stream.skipped
        slow += stream.kicked_viewers
        publishing += stream.publisher is not None
    lines = [
        "# HELP minilive_streams Streams known to the hub (live or in their reconnect grace period).",
        "# TYPE minilive_streams gauge",
        f"minilive_streams {len(hub.streams)}",
        "# HELP minilive_publishers Streams with a connected publisher.",
        "# TYPE minilive_publishers gauge",
        f"minilive_publishers {publishing}",
        "# HELP minilive_viewers Connected viewers by protocol.",
        "# TYPE minilive_viewers gauge",
    ]
    lines += [f'minilive_viewers{{protocol="{p}"}} {n}' for p, n in sorted(viewers.items())]
    lines += [
        "# HELP minilive_received_bytes_total Media bytes received from publishers.",
        "# TYPE minilive_received_bytes_total counter",
        f"minilive_received_bytes_total {bytes_in}",
        "# HELP minilive_sent_bytes_total Bytes written to viewers.",
        "# TYPE minilive_sent_bytes_total counter",
        f"minilive_sent_bytes_total {bytes_out}",
        "# HELP minilive_viewer_skips_total Times a viewer fell behind and skipped to the next keyframe.",
        "# TYPE minilive_viewer_skips_total counter",
        f"minilive_viewer_skips_total {skipped}",
        "# HELP minilive_viewers_dropped_slow_total Viewers disconnected for staying behind.",
        "# TYPE minilive_viewers_dropped_slow_total counter",
        f"minilive_viewers_dropped_slow_total {slow}",
    ]
    return "\n".join(lines) + "\n"
