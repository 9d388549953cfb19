"""The composition root: builds the hub, the RTMP server and the HTTP application, and runs them."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import signal
from collections.abc import Sequence

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from api import (
    channel_routes,
    cluster,
    debug,
    errors,
    goods_api,
    keys,
    operator_routes,
    rest,
    role_routes,
    streams,
    subscriber_routes,
    wechat,
)
from api.access import AccessPolicy
from api.apps import Apps
from api.audience import Audience
from api.bus import RoomBus
from api.channel import Channel
from api.comments import Comments
from api.config import Settings
from api.console import routes as console_routes
from api.console.sessions import Sessions
from api.errors import ApiError, StoreUnavailable, json_error
from api.goods import GoodsLibrary
from api.ladders import Ladders
from api.live import LiveStreams
from api.media import MediaLibrary
from api.metrics import Metrics, store_backend, time_store
from api.models import Room
from api.replays import ReplayService
from api.roles import Roles
from api.room_status import RoomStatus
from api.rooms import Rooms
from api.status import StatusRoutes
from api.store import open_store
from api.subscribers import Subscribers
from api.supervisor import worker_index
from api.urls import Urls
from api.webhooks import Webhooks
from ingest import heap
from ingest.server import RtmpServer
from recorder.recorder import Recorder
from relay.http.cors import CORS
from relay.http.fast import FastPathListener, Limits, Route, head_watch
from relay.http.flv import FlvPlayback
from relay.http.hls import HlsPlayback
from relay.hub import Hub
from relay.transcode.renditions import Renditions
from signaling.webrtc import WebRtc

log = logging.getLogger("minilive")


# How much of aiohttp's refusal a log line keeps: it quotes the offending line whole (100 KB and more).
BAD_REQUEST_LOGGED = 300


class BadRequestLogFilter(logging.Filter):
    """aiohttp logs every unparseable request at ERROR with a traceback, so anyone could fill the
    error log with junk requests. Those are the client's fault: one short INFO line is enough, and none
    where INFO is off (the level was checked before this filter lowered it; found by bench/netfuzz.py)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            text = " ".join(str(exc).split())  # one line
            if len(text) > BAD_REQUEST_LOGGED:
                text = f"{text[:BAD_REQUEST_LOGGED]}... ({len(text)} characters)"
            record.msg, record.args = "bad HTTP request: %s", (text,)
            record.exc_info = record.exc_text = None
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


logging.getLogger("aiohttp.server").addFilter(BadRequestLogFilter())


def client_gone(limits: Limits):  # type: ignore[no-untyped-def]
    """A handler that finds its client gone (aiohttp raises ConnectionResetError from a body read or a
    write) has no one to answer: that is the client's doing, not a server error, so one INFO line and a
    count, not aiohttp's "Error handling request" traceback at ERROR (found by bench/netfuzz.py)."""

    @web.middleware
    async def middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
        try:
            return await handler(request)
        except ConnectionResetError:
            limits.requests_abandoned += 1
            log.info("%s %s from %s: the client closed the connection before the request was answered",
                     request.method, request.path, request.remote)  # fmt: skip
            # Never sent (the transport is closed): aiohttp's finish_response just logs the access.
            return web.Response(status=400, text="the connection closed before the request was answered\n")

    return middleware


@web.middleware
async def cors_preflight(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Answers CORS preflights, and gives unknown /api/ paths the API's JSON error shape."""
    if request.method == "OPTIONS":
        return web.Response(status=204, headers={**CORS, "Access-Control-Max-Age": "86400"})
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or not request.path.startswith("/api/") or exc.content_type == "application/json":
            raise
        body = {"error": {"code": exc.status, "message": f"{exc.reason}: {request.method} {request.path}"}}
        return web.json_response(body, status=exc.status, headers=CORS)


WECHAT_PREFIXES = ("/cgi-bin/", "/wxa/", "/wxaapi/")


@web.middleware
async def wechat_unknown_path(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """An official-API path that no route serves gets WeChat's JSON, not aiohttp's plain-text 404/405:
    SDKs parse every reply for its errcode. An unknown endpoint is 48001 (api.weixin.qq.com's answer to
    an API the caller may not use), a known one called with the wrong method 43001/43002. Only aiohttp's
    own "no route" exceptions are answered, so endpoints added later are unaffected."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        if exc is not request.match_info.http_exception or not request.path.startswith(WECHAT_PREFIXES):
            raise  # a handler's own refusal, or not the official API's path
        if isinstance(exc, web.HTTPMethodNotAllowed):
            code = errors.REQUIRE_GET if "GET" in exc.allowed_methods else errors.REQUIRE_POST
            methods = "/".join(sorted(exc.allowed_methods))
            return web.json_response(ApiError(code, f"{request.path} takes {methods}").body())
        detail = f"{request.path} is not an endpoint of this server (see GET /api/v1/openapi.json)"
        return web.json_response(ApiError(errors.API_UNAUTHORIZED, detail).body())


@web.middleware
async def store_unavailable(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """A request that found the store unreachable (Redis down) is answered with the reason, in the shape
    of its API: WeChat's errcode -1, or the REST API's 503 (routes that shape their own errors do so)."""
    try:
        return await handler(request)
    except StoreUnavailable as exc:
        log.warning("%s %s: %s", request.method, request.path, exc.errmsg)
        if request.path.startswith(WECHAT_PREFIXES):
            return web.json_response(exc.body())
        return json_error(exc)


class HubControl:
    """What room status changes may do to streams on this node."""

    def __init__(self, hub: Hub, app: str) -> None:
        self.hub = hub
        self.app = app

    def kick(self, stream: str, reason: str) -> bool:
        return self.hub.kick(self.app, stream, reason)

    def end(self, stream: str, reason: str) -> bool:
        return self.hub.end_stream(self.app, stream, reason)

    def hold(self, stream: str) -> bool:
        return self.hub.hold(self.app, stream)

    def release(self, stream: str) -> bool:
        return self.hub.release(self.app, stream)

    def publishing(self, stream: str) -> bool:
        stats = self.hub.stats(self.app, stream)
        return bool(stats and stats["live"] and not stats["relayed"])  # a pull is not the anchor


class Server:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hub = Hub(settings.relay)
        self.http_limits = Limits(
            settings.http_head_timeout_seconds,
            settings.http_max_connections_per_address,
            tuple(ipaddress.ip_network(a, strict=False) for a in settings.http_cap_exempt),
        )
        self.store = open_store(settings.data_dir, settings.redis, shared_events=cluster.worker()[1] > 1)
        self.store_latency = time_store(self.store)  # first: every part below calls the timed methods
        self.apps = Apps(self.store, settings.rooms)
        self.bus = RoomBus(self.store)
        self.rooms = Rooms(self.store, settings.rooms)
        transcode = settings.transcode
        self.ladders = Ladders(self.store, settings.rooms.rtmp_app)
        self.renditions = (
            Renditions(self.hub, transcode, self.ladders.lookup)
            if transcode.renditions or transcode.compat_rendition
            else None
        )
        self.urls = Urls(settings.rooms, player_rendition=self.renditions.for_players if self.renditions else None)
        self.room_status = RoomStatus(
            self.store, settings.rooms, self.rooms, HubControl(self.hub, settings.rooms.rtmp_app)
        )
        self.webhooks = Webhooks(
            self.store,
            settings.rooms.webhook_retry_seconds,
            settings.rooms.webhook_timeout_seconds,
            allow_private=settings.rooms.webhook_private_addresses,
        )
        self.room_status.on_change.append(self.webhooks.send)
        self.roles = Roles(self.store, settings.rooms.require_anchor_role)
        self.rooms.check_anchor = self.roles.check_anchor
        self.subscribers = Subscribers(self.store, self.bus, self.webhooks, settings.rooms.zone)
        self.room_status.on_change.append(self.subscribers.room_changed)
        self.recorder = Recorder(self.hub, settings.data_dir / "replays", settings.recorder)
        self.replays = ReplayService(
            self.store,
            self.urls,
            settings.rooms.rtmp_app,
            self.recorder,
            self.webhooks,
            renditions=self.renditions if transcode.record_renditions else None,
        )
        self.goods = GoodsLibrary(
            self.store, self.rooms, self.bus, self.webhooks, self.urls, self.replays, settings.rooms, settings.recorder
        )
        self.rooms.on_delete += [self.subscribers.forget_room, self.goods.forget_room]
        self.status = StatusRoutes(self.store, self.audience, self.bus)
        self.comments = Comments(
            self.store, self.bus, settings.channel, self.stream_time_ms, settings.rooms.webhook_private_addresses
        )
        self.channel = Channel(self.store, self.status.feed, self.comments, settings.channel)
        self.policy = AccessPolicy(settings.allow_anonymous_publish, self.store, settings.rooms, self.room_status)
        self.media = MediaLibrary(self.store, settings.data_dir, settings.rooms.media_ttl_seconds)
        self.console = Sessions(self.store, settings.console, settings.data_dir)
        self.live = LiveStreams(self.hub, settings.rooms.rtmp_app, self.audience)
        self.hls = HlsPlayback(self.hub, settings.hls, self.policy.play, self.renditions)
        # One of several nodes (workers, or boxes behind Redis): a publish claims its stream in the
        # registry, and viewers here of a stream published elsewhere are served by a pull.
        self.cluster = (
            cluster.ClusterPart(settings, self.hub, self.hls, self.policy.play) if cluster.enabled(settings) else None
        )
        publish = self.cluster.cluster.gate(self.policy.publish) if self.cluster else self.policy.publish
        if self.cluster is not None:
            self.room_status.held = self._held
            self.replays.cluster = self.cluster.cluster
        self.rtmp = RtmpServer(self.hub, publish, self.policy.play, settings.rtmp, settings.play_wait_seconds)
        self.flv = FlvPlayback(self.hub, self.policy.play, settings.play_wait_seconds, settings.http_flv_chunked)
        self.webrtc = WebRtc(
            self.hub,
            publish,
            self.policy.play,
            settings.webrtc,
            settings.rooms.rtmp_app,
            settings.play_wait_seconds,
            self.cluster.sessions if self.cluster else None,
        )
        if self.cluster is not None:
            self.cluster.listener.extra_routes = self.webrtc.session_routes()
            self.cluster.listener.extra_routes += self.live.node_routes()
            self.live.cluster = self.cluster.cluster
        self.metrics = Metrics(
            settings.metrics,
            self.hub,
            hls_latency=self.hls.latency,
            store_latency=self.store_latency,
            store_backend=store_backend(self.store),
            renditions=self.renditions,
            cluster=self.cluster,
            rtmp=self.rtmp,
            http=self.http_limits,
            webrtc=self.webrtc.registry,
        )
        self.app = self.build_app()
        self._runner: web.AppRunner | None = None
        self._metrics_runner: web.AppRunner | None = None  # [metrics] port
        self._metrics_site: FastPathListener | None = None
        self.http_site: FastPathListener | None = None
        self._stopped = False
        self.rtmp_port = 0
        self.http_port = 0

    def audience(self, stream: str) -> Audience:
        """The audience of a room's stream on this node, every protocol (HLS players and WHEP sessions too)."""
        app = self.settings.rooms.rtmp_app
        by_protocol = self.hub.audience(app, stream)
        by_protocol.pop("relay", None)  # other nodes' pulls: their viewers are counted there
        if self.cluster is not None:
            for protocol, count in self.cluster.cluster.audience_elsewhere(app, stream).items():
                by_protocol[protocol] = by_protocol.get(protocol, 0) + count
        return {"total": sum(by_protocol.values()), "by_protocol": by_protocol}

    def stream_time_ms(self, room: Room) -> int | None:
        """The clock of a room's stream in ms, if its anchor publishes to this node (not a pull)."""
        stats = self.hub.stats(self.settings.rooms.rtmp_app, room.stream_name)
        if stats is None or not stats["live"] or stats["relayed"]:
            return None
        return stats["time_ms"]

    async def _held(self, stream: str) -> bool | None:
        """Whether a live node originates a room's stream (None: the registry cannot say now)."""
        assert self.cluster is not None
        return await self.cluster.cluster.held_anywhere(self.settings.rooms.rtmp_app, stream)

    async def _listen(
        self, app: web.Application, port: int, routes: Sequence[Route], reuse_port: bool = False
    ) -> tuple[web.AppRunner, FastPathListener]:
        """Serve ``app`` on ``port`` behind the HTTP limits (head deadline, per-address cap, keep-alive
        time), with ``routes`` on the lean path: every HTTP port a client can reach holds them."""
        keepalive = self.settings.http_keepalive_seconds
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0, keepalive_timeout=keepalive)
        await runner.setup()
        site = FastPathListener(
            runner,
            self.settings.host,
            port,
            routes,
            backlog=1024,
            reuse_address=True,
            reuse_port=reuse_port,
            keepalive_seconds=keepalive,
            limits=self.http_limits,
        )
        await site.start()
        return runner, site

    def build_app(self) -> web.Application:
        app = web.Application(
            middlewares=[
                head_watch,
                client_gone(self.http_limits),
                cors_preflight,
                wechat_unknown_path,
                store_unavailable,
            ],
            client_max_size=4 * 1024 * 1024,
        )
        # HLS first: relay.http.fast claims these paths ahead of every other route, and so does aiohttp.
        app.add_routes((self.cluster.gateway if self.cluster else self.hls).routes())
        app.add_routes(
            streams.routes(self.hub, self.metrics, self.renditions, self.cluster, self.settings.public_stats)
        )
        app.add_routes(self.flv.routes())
        app.add_routes(debug.routes(self.settings.data_dir))
        app[keys.APPS], app[keys.ROOMS], app[keys.ROOM_STATUS] = self.apps, self.rooms, self.room_status
        app[keys.URLS], app[keys.MEDIA], app[keys.AUDIENCE] = self.urls, self.media, self.audience
        app[keys.LADDERS], app[keys.BUS], app[keys.REPLAYS] = self.ladders, self.bus, self.replays
        app[keys.SUBSCRIBERS], app[keys.ROLES] = self.subscribers, self.roles
        app.add_routes(wechat.routes())
        app.add_routes(role_routes.routes())
        app.add_routes(subscriber_routes.routes())
        app.add_routes(self.status.routes())
        app[keys.CHANNEL] = self.channel
        app.add_routes([*self.channel.routes(), *channel_routes.routes()])
        app.add_routes(rest.routes())
        app.add_routes(self.webrtc.routes())
        app.add_routes(self.replays.routes())
        app[keys.GOODS] = self.goods
        app.add_routes(goods_api.routes())
        app[keys.CONSOLE], app[keys.LIVE], app[keys.WEBHOOKS] = self.console, self.live, self.webhooks
        app.add_routes([*console_routes.routes(), *operator_routes.routes()])
        app.cleanup_ctx.append(self.media.cleanup_ctx)
        app.cleanup_ctx.append(self.hls.cleanup_ctx)
        return app

    async def start(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        await self.store.open()
        if self.cluster is not None:
            await self.cluster.start()  # before recovery: it must know which nodes are alive
        await self.replays.recover()
        await self.hub.start()
        if self.renditions is not None:
            await self.renditions.start()
        shared = worker_index() is not None  # the supervisor's other workers listen on the same ports
        rtmp_addrs = await self.rtmp.start(s.host, s.rtmp_port, reuse_port=shared)
        self.rtmp_port = rtmp_addrs[0][1]
        routes = (self.cluster.gateway if self.cluster else self.hls).fast_routes()
        self._runner, site = await self._listen(self.app, s.http_port, routes, reuse_port=shared)
        self.http_site, self.http_port = site, site.addresses[0][1]
        if s.metrics.port:  # each worker on a port of its own, for a scrape of every worker
            metrics_app = web.Application(middlewares=[head_watch, client_gone(self.http_limits)])
            metrics_app.add_routes([web.get("/metrics", self.metrics.handle)])
            port = s.metrics.port + (worker_index() or 0)
            self._metrics_runner, self._metrics_site = await self._listen(metrics_app, port, ())
        host = s.public_host
        rtmp_base = f"rtmp://{host}" + ("" if self.rtmp_port == 1935 else f":{self.rtmp_port}")
        http_base = s.public_url.rstrip("/") if s.public_url else f"http://{host}:{self.http_port}"
        self.urls.rtmp_base, self.urls.http_base = rtmp_base, http_base
        self.hub.add_listener(self.room_status.stream_event)
        self.hub.add_listener(self.ladders.stream_event)
        self.hub.add_listener(self.replays.stream_event)
        await self.room_status.start()
        await self.replays.start()
        await self.comments.start()
        log.info(
            "RTMP  listening on %s:%d  push/play rtmp://%s:%d/live/STREAM",
            s.host,
            self.rtmp_port,
            host,
            self.rtmp_port,
        )
        log.info(
            "HTTP  listening on %s:%d  HTTP-FLV/WS-FLV http://%s:%d/live/STREAM.flv, API /api/v1/streams",
            s.host,
            self.http_port,
            host,
            self.http_port,
        )
        if s.allow_anonymous_publish:
            log.warning("anonymous publishing is ON: anyone can push to rtmp://%s:%d/live/ANY", host, self.rtmp_port)

    async def stop(self) -> None:
        """Stop accepting, end publishers and viewers cleanly, then close the listeners."""
        if self._stopped:
            return
        self._stopped = True
        log.info("shutting down")
        if self.cluster is not None:
            self.cluster.cluster.stopping()
        await self.rtmp.close()
        await self.webrtc.close()
        if self.renditions is not None:
            await self.renditions.stop()
        await self.hub.stop()
        await self.room_status.stop()
        await self.replays.stop()
        await self.webhooks.close()
        await self.live.close()
        await self.status.close()
        await self.comments.stop()
        if self.cluster is not None:
            await self.cluster.stop()
        if self.http_site is not None:
            await self.http_site.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._metrics_site is not None:
            await self._metrics_site.stop()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        await self.store.close()

    async def run_forever(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        # Media work allocates short-lived containers for every packet; with the default threshold
        # (700) the collector runs thousands of times a second. What startup built is frozen (never
        # scanned again) and the youngest generation is collected every 20,000 allocations.
        gc.freeze()
        gc.set_threshold(20_000, 10, 10)
        if self.settings.malloc_mmap_threshold:
            # Big buffers (HLS parts, viewers' start bytes, GOP frames) go back to the system as they
            # are freed instead of leaving holes in the heap that RSS keeps (decisions: "RSS").
            heap.set_mmap_threshold(self.settings.malloc_mmap_threshold)
        try:
            await stop.wait()
        finally:
            await self.stop()
