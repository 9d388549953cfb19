"""The composition root: builds the hub, the RTMP server and the HTTP application, and runs them."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from api import streams
from api.access import AccessPolicy
from api.config import Settings
from ingest.server import RtmpServer
from relay.http_flv import CORS, FlvPlayback
from relay.hub import Hub

log = logging.getLogger("minilive")


class BadRequestLogFilter(logging.Filter):
    """aiohttp logs every unparseable request at ERROR with a traceback, so anyone could fill the
    error log with junk requests. Those are the client's fault: one INFO line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "bad HTTP request: %s", (exc,)
            record.exc_info = record.exc_text = None
        return True


logging.getLogger("aiohttp.server").addFilter(BadRequestLogFilter())


@web.middleware
async def cors_preflight(request: web.Request, handler):  # type: ignore[no-untyped-def]
    if request.method == "OPTIONS":
        return web.Response(status=204, headers={**CORS, "Access-Control-Max-Age": "86400"})
    return await handler(request)


class Server:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hub = Hub(settings.relay)
        self.policy = AccessPolicy(settings.allow_anonymous_publish)
        self.rtmp = RtmpServer(
            self.hub, self.policy.publish, self.policy.play, settings.rtmp, settings.play_wait_seconds
        )
        self.flv = FlvPlayback(
            self.hub, self.policy.play, settings.play_wait_seconds, settings.http_flv_chunked
        )
        self.app = self.build_app()
        self._runner: web.AppRunner | None = None
        self.rtmp_port = 0
        self.http_port = 0

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[cors_preflight], client_max_size=4 * 1024 * 1024)
        app.add_routes(streams.routes(self.hub))
        app.add_routes(self.flv.routes())
        return app

    async def start(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        await self.hub.start()
        rtmp_addrs = await self.rtmp.start(s.host, s.rtmp_port)
        self.rtmp_port = rtmp_addrs[0][1]
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.host, s.http_port, backlog=1024, reuse_address=True)
        await site.start()
        self.http_port = self._runner.addresses[0][1]
        host = s.public_host
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
            log.warning(
                "anonymous publishing is ON: anyone can push to rtmp://%s:%d/live/ANY", host, self.rtmp_port
            )

    async def stop(self) -> None:
        """Stop accepting, end publishers and viewers cleanly, then close the listeners."""
        log.info("shutting down")
        await self.rtmp.close()
        await self.hub.stop()
        if self._runner is not None:
            await self._runner.cleanup()

    async def run_forever(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
