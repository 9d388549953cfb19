"""The back end's HTTP routes: thin handlers that parse, call one function of ``rooms`` (or the
login), and shape the reply. Errors are ``{"error": {"code", "message"}}`` with a fitting status."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from examples.backend import rooms, sessions, wechat
from examples.backend.config import Config
from examples.backend.errors import BackendError
from examples.backend.minilive import Minilive

log = logging.getLogger("backend")

CONFIG = web.AppKey("config", Config)
MINILIVE = web.AppKey("minilive", Minilive)
HTTP = web.AppKey("http", aiohttp.ClientSession)
MAX_BODY = 4096  # a login or nickname: anything bigger is not from the sample


@web.middleware
async def errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    try:
        return await handler(request)
    except BackendError as exc:
        return web.json_response({"error": {"code": exc.code, "message": exc.message}}, status=exc.status)


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BackendError(413, "too_big", f"a request body is at most {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise BackendError(400, "bad_json", "send a JSON object (Content-Type: application/json)") from None
    if not isinstance(body, dict) or len(raw) > MAX_BODY:
        raise BackendError(400, "bad_json", f"send a JSON object of at most {MAX_BODY} bytes")
    return body


def _openid(request: web.Request) -> str:
    return sessions.verify(request.app[CONFIG].session_secret, request.headers.get("Authorization", ""))


def _roomid(request: web.Request) -> int:
    return int(request.match_info["roomid"])


async def login(request: web.Request) -> web.Response:
    body = await _body(request)
    code = body.get("code")
    if not isinstance(code, str):
        raise BackendError(400, "bad_code", 'send {"code": CODE} with the code that wx.login returned')
    config = request.app[CONFIG]
    who = await wechat.code2session(request.app[HTTP], config, code)
    session = sessions.issue(config.session_secret, who.openid, config.session_ttl_seconds)
    reply = {"session": session, "openid": who.openid, "mocked": who.mocked, "expires_in": config.session_ttl_seconds}
    return web.json_response(reply)


async def room_list(request: web.Request) -> web.Response:
    return web.json_response({"rooms": await rooms.room_list(request.app[MINILIVE])})


async def room_page(request: web.Request) -> web.Response:
    _openid(request)  # play URLs may be signed with the app's play key: only for the app's users
    return web.json_response(await rooms.room_page(request.app[MINILIVE], _roomid(request)))


async def channel(request: web.Request) -> web.Response:
    openid = _openid(request)
    nickname = (await _body(request)).get("nickname", "")
    if not isinstance(nickname, str):
        raise BackendError(400, "bad_nickname", "nickname must be a string (the user's WeChat nickname)")
    return web.json_response(await rooms.channel(request.app[MINILIVE], _roomid(request), openid, nickname))


async def push_url(request: web.Request) -> web.Response:
    openid = _openid(request)
    return web.json_response(await rooms.push_url(request.app[MINILIVE], _roomid(request), openid))


async def replays(request: web.Request) -> web.Response:
    return web.json_response({"replays": await rooms.replays(request.app[MINILIVE], _roomid(request))})


async def _client(app: web.Application) -> AsyncIterator[None]:
    app[HTTP] = aiohttp.ClientSession()
    app[MINILIVE] = Minilive(app[HTTP], app[CONFIG])
    yield
    await app[HTTP].close()


def create_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[errors], client_max_size=MAX_BODY)
    app[CONFIG] = config
    app.cleanup_ctx.append(_client)
    room = "/api/rooms/{roomid:[0-9]{1,10}}"
    app.add_routes(
        [
            web.post("/api/login", login),
            web.get("/api/rooms", room_list),
            web.get(room, room_page),
            web.post(f"{room}/channel", channel),
            web.get(f"{room}/push_url", push_url),
            web.get(f"{room}/replays", replays),
        ]
    )
    if config.mock_wechat == "1":
        log.warning("MOCK_WECHAT=1: logins are not checked by WeChat; openids are made up from the login code")
    return app
