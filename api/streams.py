"""Routes for live streams, health and metrics: thin views over the hub and the metrics registry."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from aiohttp import web

from api import supervisor
from api.errors import ApiError, json_error
from api.metrics import Metrics
from api.rest import request_app
from relay.hub import Hub
from relay.transcode.renditions import Renditions

if TYPE_CHECKING:
    from api.cluster import ClusterPart

START = time.time()


def routes(
    hub: Hub,
    metrics: Metrics,
    renditions: Renditions | None = None,
    cluster: ClusterPart | None = None,
    public_stats: bool = False,
) -> list[web.RouteDef]:
    async def streams(request: web.Request) -> web.Response:
        # Every publisher's address and every stream: an app's token or a console session to read, unless
        # the public_stats setting says otherwise (issue 16). /metrics holds no address: see docs/decisions.md.
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

    return [
        web.get("/api/v1/streams", streams),
        web.get("/healthz", healthz),
        web.get("/metrics", metrics.handle),
    ]
