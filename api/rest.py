"""The REST API under ``/api/v1``: the calling app, its rooms, their actions, URLs and replays.

Handlers are thin: they read snake_case JSON, call one service function (the services the WeChat-
compatible routes call) and shape the reply. Services come from ``request.app`` (``api.keys``). A
request is authenticated by ``Authorization: Bearer <access_token>``, the token from
``/cgi-bin/token`` or ``POST /api/v1/token``, or by the console's session cookie. Errors are
``{"error": {"code": errcode, "message": errmsg}}`` with the HTTP status the errcode maps to.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from api import errors
from api.console import sessions as console
from api.errors import ApiError, json_error
from api.json_body import read_object
from api.keys import APPS, AUDIENCE, CONSOLE, LADDERS, ROOM_STATUS, ROOMS, URLS
from api.models import ROOM_EDITABLE, ROOM_INPUTS, App, Room
from api.openapi import DOCUMENT
from api.room_status import ACTIONS
from api.views import app_json, replay_json, room_json

log = logging.getLogger("minilive.rest")

# REST field -> the official camelCase field that create_room/edit_room read.
CREATE_FIELDS = {field.rest_name: field.wire.wechat for field in ROOM_INPUTS}
EDIT_FIELDS = {field.rest_name: field.wire.wechat for field in ROOM_EDITABLE}
# Switches the official create requires; REST leaves them as a new room has them unless asked.
CREATE_DEFAULTS = {field.wire.wechat: field.default for field in ROOM_INPUTS if field.wire.rest_default}

AppHandler = Callable[[web.Request, App], Awaitable[web.StreamResponse]]


def shaped(handler: Handler) -> Handler:
    """Refusals become the REST error shape; anything unexpected is logged and answered as a 500."""

    @functools.wraps(handler)
    async def view(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return json_error(exc)
        except (web.HTTPException, ConnectionResetError):  # the client gone: see api.server.client_gone
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return json_error(ApiError(errors.SYSTEM_ERROR))

    return view


def authenticated(handler: AppHandler) -> Handler:
    """A handler for the app whose access token the request carries (``Authorization: Bearer``), or
    for the console session's app (its cookie; see ``request_app``)."""

    @shaped
    @functools.wraps(handler)
    async def view(request: web.Request) -> web.StreamResponse:
        return await handler(request, await request_app(request))

    return view


async def request_app(request: web.Request) -> App:
    """The app a REST request acts for. A Bearer token decides when there is one (a program, not a
    browser: no CSRF). Otherwise the console's session cookie: its app, or for the admin the app named by
    ``X-Minilive-App`` (or the path's ``{appid}``); its writes must carry ``X-CSRF-Token``."""
    header = request.headers.get("Authorization", "")
    cookie = request.cookies.get(console.COOKIE, "")
    if cookie and not header and CONSOLE in request.app:
        named = request.headers.get("X-Minilive-App", "") or request.match_info.get("appid", "")
        csrf = request.headers.get("X-CSRF-Token", "")
        return await request.app[CONSOLE].app_for(cookie, request.method, csrf, named)
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        token = ""
    return await request.app[APPS].app_for_token(token.strip())


def _room_id(request: web.Request) -> int:
    return int(request.match_info["id"])


def _room_view(request: web.Request, room: Room) -> dict[str, Any]:
    return room_json(room, request.app[URLS], request.app[AUDIENCE](room.stream_name))


# ---------------------------------------------------------------- the app


@shaped
async def token(request: web.Request) -> web.Response:
    body = await json_body(request)
    apps = request.app[APPS]
    issued = await apps.issue_token(str(body.get("appid") or ""), str(body.get("secret") or ""))
    return web.json_response({"access_token": issued.token, "expires_in": apps.settings.token_ttl_seconds})


@authenticated
async def get_app(request: web.Request, app: App) -> web.Response:
    return web.json_response(app_json(app))


@authenticated
async def patch_app(request: web.Request, app: App) -> web.Response:
    changes = await json_body(request)
    app = await request.app[APPS].update_app(app, changes)
    if "renditions" in changes:
        await request.app[LADDERS].app_changed(app.appid)
    return web.json_response(app_json(app))


@authenticated
async def deliveries(request: web.Request, app: App) -> web.Response:
    found = await request.app[APPS].webhook_deliveries(app, query_int(request, "limit", 100))
    return web.json_response({"deliveries": found})


# ---------------------------------------------------------------- rooms


@authenticated
async def list_rooms(request: web.Request, app: App) -> web.Response:
    start, limit = query_int(request, "start", 0), query_int(request, "limit", 20)
    page, total = await request.app[ROOMS].list_rooms(app, start, limit)
    listed = [_room_view(request, room) for room in page]
    return web.json_response({"rooms": listed, "total": total, "start": start})


@authenticated
async def create_room(request: web.Request, app: App) -> web.Response:
    body = translate(await json_body(request), CREATE_FIELDS)
    room = await request.app[ROOMS].create_room(app, {**CREATE_DEFAULTS, **body})
    headers = {"Location": f"/api/v1/rooms/{room.roomid}"}
    return web.json_response(_room_view(request, room), status=201, headers=headers)


@authenticated
async def get_room(request: web.Request, app: App) -> web.Response:
    return web.json_response(_room_view(request, await request.app[ROOMS].room(app, _room_id(request))))


@authenticated
async def patch_room(request: web.Request, app: App) -> web.Response:
    body = await json_body(request)
    renditions = body.pop("renditions", ...)
    changes = translate(body, EDIT_FIELDS)
    rooms = request.app[ROOMS]
    room = await rooms.room(app, _room_id(request))
    if renditions is not ...:  # ours, not an editRoom field: set apart, checked as the config's ladder is
        room = await rooms.set_renditions(app, room.roomid, renditions)
        await request.app[LADDERS].load(room.stream_name)
    if changes or renditions is ...:
        # editRoom takes every field: the room's current values, then the changes.
        current = {field.wire.wechat: getattr(room, field.name) for field in ROOM_EDITABLE}
        room = await rooms.edit_room(app, {**current, **changes, "id": room.roomid})
    return web.json_response(_room_view(request, room))


@authenticated
async def delete_room(request: web.Request, app: App) -> web.Response:
    await request.app[ROOMS].delete_room(app, _room_id(request))
    return web.Response(status=204)


def _room_action(action: str) -> Handler:
    """``POST /api/v1/rooms/{id}/ACTION``: start, pause, resume, ban or end the room."""

    @authenticated
    async def act(request: web.Request, app: App) -> web.Response:
        room = await request.app[ROOM_STATUS].admin_action(app, _room_id(request), action)
        return web.json_response(_room_view(request, room))

    return act


@authenticated
async def push_url(request: web.Request, app: App) -> web.Response:
    room = await request.app[ROOMS].room(app, _room_id(request))
    url = request.app[URLS].push_url(app, room)
    tx_time = parse_qs(urlsplit(url).query)["txTime"][0]
    return web.json_response({"push_url": url, "expires_at": int(tx_time, 16)})


@authenticated
async def play_urls(request: web.Request, app: App) -> web.Response:
    room = await request.app[ROOMS].room(app, _room_id(request))
    return web.json_response(request.app[URLS].play_urls(app, room))


@authenticated
async def replays(request: web.Request, app: App) -> web.Response:
    found = await request.app[ROOMS].replays(app, _room_id(request))
    urls = request.app[URLS]
    return web.json_response({"replays": [replay_json(replay, urls) for replay in found]})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(DOCUMENT, headers={"Access-Control-Allow-Origin": "*"})


def routes() -> list[web.RouteDef]:
    room = "/api/v1/rooms/{id:[0-9]+}"
    return [
        web.post("/api/v1/token", token),
        web.get("/api/v1/app", get_app),
        web.patch("/api/v1/app", patch_app),
        web.get("/api/v1/app/webhook_deliveries", deliveries),
        web.get("/api/v1/rooms", list_rooms),
        web.post("/api/v1/rooms", create_room),
        web.get(room, get_room),
        web.patch(room, patch_room),
        web.delete(room, delete_room),
        *(web.post(f"{room}/{action}", _room_action(action)) for action in ACTIONS),
        web.get(f"{room}/push_url", push_url),
        web.get(f"{room}/play_urls", play_urls),
        web.get(f"{room}/replays", replays),
        web.get("/api/v1/openapi.json", openapi),
    ]


async def json_body(request: web.Request) -> dict[str, Any]:
    return await read_object(request)


def query_int(request: web.Request, name: str, default: int) -> int:
    value = request.query.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ApiError(errors.INVALID_ARGS, f"{name} must be an integer") from None


def translate(body: dict[str, Any], fields: dict[str, str]) -> dict[str, Any]:
    """snake_case REST fields to the service's camelCase ones; unknown fields are refused."""
    unknown = body.keys() - fields.keys()
    if unknown:
        raise ApiError(
            errors.INVALID_ARGS,
            f"unknown field(s) {', '.join(sorted(unknown))}; accepted: {', '.join(fields)}",
        )
    return {fields[key]: value for key, value in body.items()}
