"""The WeChat-compatible API: the official live-room endpoints, paths, parameters and replies.

Handlers parse, call one service function, and shape the reply as api.weixin.qq.com does: HTTP
200 with ``errcode``/``errmsg`` always (``0``/``"ok"`` on success), official field names and quirks
(``roomid`` in the list, ``creater_openid``, prices in fen, 9410000 for an empty page). Every
endpoint but /cgi-bin/token and /cgi-bin/stable_token takes ``?access_token=`` and counts against the
app's daily quota (the ``official`` decorator). Services come from ``request.app`` (``api.keys``).
See ../shared/reference/wechat-live-semantics.md §1-§2.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.typedefs import Handler

from api import errors, media, poster, qr
from api.errors import ApiError
from api.json_body import read_object
from api.keys import APPS, GOODS, MEDIA, ROOMS, URLS
from api.media import MAX_BYTES
from api.models import App
from api.urls import page_path
from api.validation import Fields
from api.views import live_replay, room_info

log = logging.getLogger("minilive.wechat")

ROOM_API = "/wxaapi/broadcast/room/"
LIVE_INFO = "/wxa/business/getliveinfo"
UPLOAD = "/cgi-bin/media/upload"

Reply = dict[str, Any]
# An official endpoint's handler: the request (for the services), the calling app, the parameters.
Endpoint = Callable[[web.Request, App, Fields], Awaitable[Reply]]

_dumps = functools.partial(json.dumps, ensure_ascii=False, separators=(",", ":"))


def answered(handler: Callable[[web.Request], Awaitable[Reply]]) -> Handler:
    """The official reply: ``errcode`` 0 and ``errmsg`` "ok" with the handler's fields, or the
    refusal's errcode; anything unexpected is logged and answered as a system error (-1)."""

    @functools.wraps(handler)
    async def view(request: web.Request) -> web.Response:
        try:
            body = {"errcode": 0, "errmsg": "ok", **await handler(request)}
        except ApiError as exc:
            body = exc.body()
        except ConnectionResetError:  # the client gone: see api.server.client_gone
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            body = ApiError(errors.SYSTEM_ERROR).body()
        return web.json_response(body, dumps=_dumps)

    return view


def official(method: str, json_body: bool = True) -> Callable[[Endpoint], Handler]:
    """An endpoint called with ``?access_token=``: the method is checked (every method reaches the
    view, so a wrong one gets 43001/43002 as WeChat answers), the token names the app, the call counts
    against the app's quota of this endpoint, and the parameters are the query of a GET or the JSON
    body of a POST (with ``json_body`` off, the query: the handler reads the body itself)."""

    def wrap(handler: Endpoint) -> Handler:
        @answered
        @functools.wraps(handler)
        async def view(request: web.Request) -> Reply:
            _require(request, method)
            apps = request.app[APPS]
            app = await apps.app_for_token(request.query.get("access_token", ""))
            await apps.quota(app, _endpoint_name(request))
            params = await _json_object(request) if method == "POST" and json_body else dict(request.query)
            return await handler(request, app, Fields(params))

        view.counts_quota = True  # type: ignore[attr-defined]  # GET /api/v1/app/usage lists these
        return view

    return wrap


def quota_endpoints(app: web.Application) -> list[str]:
    """The names under which the app's routes count calls against the daily quotas."""
    return sorted(
        {
            route.resource.canonical.rsplit("/", 1)[-1]
            for route in app.router.routes()
            if route.resource and getattr(route.handler, "counts_quota", False)
        }
    )


def _endpoint_name(request: web.Request) -> str:
    """The last part of the endpoint's path: the name its quota counts calls under."""
    return request.path.rsplit("/", 1)[-1]


def _require(request: web.Request, method: str) -> None:
    if request.method == method or (method == "GET" and request.method == "HEAD"):
        return
    raise ApiError(errors.REQUIRE_GET if method == "GET" else errors.REQUIRE_POST)


async def _json_object(request: web.Request) -> dict[str, Any]:
    return await read_object(request)


def _list(f: Fields, name: str, kind: type) -> list[Any]:
    value = f.body.get(name)
    if not isinstance(value, list) or not value or any(isinstance(v, bool) or not isinstance(v, kind) for v in value):
        raise ApiError(errors.INVALID_ARGS, f"{name} must be a non-empty array of {kind.__name__}")
    return value


# ---------------------------------------------------------------- credentials and media


@answered
async def token(request: web.Request) -> Reply:
    _require(request, "GET")
    query = request.query
    if query.get("grant_type") != "client_credential":
        raise ApiError(errors.INVALID_GRANT_TYPE, "grant_type must be client_credential")
    apps = request.app[APPS]
    issued = await apps.issue_token(query.get("appid", ""), query.get("secret", ""))
    return {"access_token": issued.token, "expires_in": apps.settings.token_ttl_seconds}


@answered
async def stable_token(request: web.Request) -> Reply:
    _require(request, "POST")
    f = Fields(await _json_object(request))
    if f.string("grant_type", required=False) != "client_credential":
        raise ApiError(errors.INVALID_GRANT_TYPE, "grant_type must be client_credential")
    force_refresh = f.body.get("force_refresh", False)
    if not isinstance(force_refresh, bool):
        raise ApiError(errors.DATA_FORMAT_ERROR, "force_refresh must be true or false")
    apps = request.app[APPS]
    issued = await apps.stable_token(
        f.string("appid", required=False), f.string("secret", required=False), force_refresh
    )
    return {"access_token": issued.token, "expires_in": int(issued.expires_at - apps.clock())}


@official("GET")
async def callback_ip(request: web.Request, app: App, f: Fields) -> Reply:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return {"ip_list": request.app[APPS].callback_ips(sockname[0] if sockname else "")}


@official("POST", json_body=False)
async def upload(request: web.Request, app: App, f: Fields) -> Reply:
    data = await media_part(request)
    item = await request.app[MEDIA].upload(app, f.string("type", required=False), data)
    return {"type": item.type, "media_id": item.media_id, "created_at": int(item.created_at)}


# ---------------------------------------------------------------- rooms


@official("POST")
async def create(request: web.Request, app: App, f: Fields) -> Reply:
    room = await request.app[ROOMS].create_room(app, f.body)
    return {"roomId": room.roomid}


@official("POST")
async def edit(request: web.Request, app: App, f: Fields) -> Reply:
    await request.app[ROOMS].edit_room(app, f.body)
    return {}


@official("POST")
async def delete(request: web.Request, app: App, f: Fields) -> Reply:
    await request.app[ROOMS].delete_room(app, f.room_id("id", "roomId"))
    return {}


@official("GET")
async def push_url(request: web.Request, app: App, f: Fields) -> Reply:
    room = await request.app[ROOMS].room(app, f.room_id("roomId"))
    return {"pushAddr": request.app[URLS].push_url(app, room)}


@official("GET")
async def shared_code(request: web.Request, app: App, f: Fields) -> Reply:
    room = await request.app[ROOMS].room(app, f.room_id("roomId"))
    params = f.string("params", required=False)
    base = request.app[URLS].http_base
    return {
        "cdnUrl": qr.image_url(base, room.roomid, params),
        "pagePath": page_path(room.roomid, params),
        "posterUrl": qr.image_url(base, room.roomid, params, "poster"),
    }


def _switch(key: str, field: str, *room_keys: str) -> Handler:
    """updatereplay / updatecomment / updatefeedpublic / updatekf: one 0/1 switch of a room."""

    @official("POST")
    async def switch(request: web.Request, app: App, f: Fields) -> Reply:
        await request.app[ROOMS].set_flag(app, f.room_id(*room_keys), key, f.flag(field))
        return {}

    return switch


update_replay = _switch("close_replay", "closeReplay", "roomId")
update_comment = _switch("ban_comment", "banComment", "id", "roomId")
update_feed_public = _switch("is_feeds_public", "isFeedsPublic", "roomId")
update_kf = _switch("close_kf", "closeKf", "roomId")


@official("POST")
async def add_goods(request: web.Request, app: App, f: Fields) -> Reply:
    await request.app[GOODS].add_to_room(app, f.room_id("roomId"), _list(f, "ids", int))
    return {}


@official("POST")
async def live_info(request: web.Request, app: App, f: Fields) -> Reply:
    rooms, urls = request.app[ROOMS], request.app[URLS]
    start, limit = f.integer("start"), f.integer("limit")
    if action := f.string("action", required=False):  # "" lists rooms, as omitting it does
        if action != "get_replay":
            raise ApiError(errors.INVALID_ARGS, 'action may only be "get_replay" (or "" to list rooms)')
        replays, total = await rooms.list_replays(app, f.room_id("room_id"), start, limit)
        return {"room_info": [], "live_replay": [live_replay(r, urls) for r in replays], "total": total}
    page, total = await rooms.list_rooms(app, start, limit)
    if not page:
        raise ApiError(errors.EMPTY_ROOM_LIST, room_info=[], live_replay=[], total=total)
    return {"room_info": [room_info(r, urls) for r in page], "live_replay": [], "total": total}


# ---------------------------------------------------------------- assistants and the sub-anchor


@official("POST")
async def add_assistants(request: web.Request, app: App, f: Fields) -> Reply:
    await request.app[ROOMS].add_assistants(app, f.room_id("roomId"), _list(f, "users", dict))
    return {}


@official("POST")
async def modify_assistant(request: web.Request, app: App, f: Fields) -> Reply:
    await request.app[ROOMS].modify_assistant(app, f.room_id("roomId"), f.string("username"), f.string("nickname"))
    return {}


@official("POST")
async def remove_assistant(request: web.Request, app: App, f: Fields) -> Reply:
    await request.app[ROOMS].remove_assistant(app, f.room_id("roomId"), f.string("username"))
    return {}


@official("GET")
async def assistant_list(request: web.Request, app: App, f: Fields) -> Reply:
    rooms = request.app[ROOMS]
    room = await rooms.room(app, f.room_id("roomId"))
    keys = ("timestamp", "headimg", "nickname", "alias", "openid")
    people = [{key: a.get(key, "") for key in keys} for a in room.assistants]
    return {"list": people, "count": len(people), "maxCount": rooms.settings.max_assistants}


@official("POST")
async def set_sub_anchor(request: web.Request, app: App, f: Fields) -> Reply:
    """addsubanchor and modifysubanchor (the room has none yet / has one)."""
    replace = _endpoint_name(request) == "modifysubanchor"
    await request.app[ROOMS].set_sub_anchor(app, f.room_id("roomId"), f.string("username"), replace)
    return {}


@official("POST")
async def delete_sub_anchor(request: web.Request, app: App, f: Fields) -> Reply:
    await request.app[ROOMS].delete_sub_anchor(app, f.room_id("roomId"))
    return {}


@official("GET")
async def sub_anchor(request: web.Request, app: App, f: Fields) -> Reply:
    room = await request.app[ROOMS].room(app, f.room_id("roomId"))
    return {"username": room.sub_anchor_wechat}


def routes() -> list[web.RouteDef]:
    """The official endpoints, plus the media and share-code images their replies point at. Every
    method reaches an endpoint: a wrong one is answered as WeChat does (43001/43002)."""
    r = ROOM_API
    endpoints = {
        "/cgi-bin/token": token,
        "/cgi-bin/stable_token": stable_token,
        "/cgi-bin/getcallbackip": callback_ip,
        UPLOAD: upload,
        LIVE_INFO: live_info,
        r + "create": create,
        r + "editroom": edit,
        r + "deleteroom": delete,
        r + "getpushurl": push_url,
        r + "getsharedcode": shared_code,
        r + "updatereplay": update_replay,
        r + "updatecomment": update_comment,
        r + "updatefeedpublic": update_feed_public,
        r + "updatekf": update_kf,
        r + "addgoods": add_goods,
        r + "addassistant": add_assistants,
        r + "modifyassistant": modify_assistant,
        r + "removeassistant": remove_assistant,
        r + "getassistantlist": assistant_list,
        r + "addsubanchor": set_sub_anchor,
        r + "modifysubanchor": set_sub_anchor,
        r + "deletesubanchor": delete_sub_anchor,
        r + "getsubanchor": sub_anchor,
    }
    images = [*media.routes(), *qr.routes(), *poster.routes()]
    return [*(web.route("*", path, handler) for path, handler in endpoints.items()), *images]


async def media_part(request: web.Request) -> bytes:
    """The ``media`` field of a multipart upload; reading stops just past the size limit."""
    missing = ApiError(errors.MEDIA_DATA_MISSING, "upload the image as multipart/form-data field 'media'")
    if not request.content_type.startswith("multipart/"):
        raise missing
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, BodyPartReader) and part.name == "media":
                data = bytearray()
                while len(data) <= MAX_BYTES and (chunk := await part.read_chunk(256 * 1024)):
                    data += chunk
                return bytes(data)
    except ValueError:  # a malformed multipart body
        raise missing from None
    raise missing
