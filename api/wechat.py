"""The WeChat-compatible API: the official live-room endpoints, paths, parameters and replies.

Handlers parse, call the room service, and shape the reply as api.weixin.qq.com does: HTTP 200
with ``errcode``/``errmsg`` always (``0``/``"ok"`` on success), official field names and quirks
(``roomid`` in the list, ``creater_openid``, prices in fen, 9410000 for an empty page). Every
endpoint but /cgi-bin/token takes ``?access_token=`` and counts against the app's daily quota.
See ../shared/reference/wechat-live-semantics.md §1-§2.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import BodyPartReader, web

from api import errors, qr
from api.apps import Apps
from api.errors import ApiError
from api.media import MAX_BYTES, MediaLibrary
from api.models import App
from api.rooms import Rooms
from api.urls import Urls, page_path
from api.validation import Fields
from api.views import live_replay, room_info

log = logging.getLogger("minilive.wechat")

ROOM_API = "/wxaapi/broadcast/room/"
LIVE_INFO = "/wxa/business/getliveinfo"
UPLOAD = "/cgi-bin/media/upload"

Reply = dict[str, Any]
Handler = Callable[[App, Fields], Awaitable[Reply]]

_dumps = functools.partial(json.dumps, ensure_ascii=False, separators=(",", ":"))


async def _reply(request: web.Request, work: Callable[[], Awaitable[Reply]]) -> web.Response:
    try:
        body = {"errcode": 0, "errmsg": "ok", **await work()}
    except ApiError as exc:
        body = exc.body()
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        body = {"errcode": errors.SYSTEM_ERROR, "errmsg": errors.MESSAGES[errors.SYSTEM_ERROR]}
    return web.json_response(body, dumps=_dumps)


def _require(request: web.Request, method: str) -> None:
    if request.method == method or (method == "GET" and request.method == "HEAD"):
        return
    raise ApiError(errors.REQUIRE_GET if method == "GET" else errors.REQUIRE_POST)


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read())
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(errors.DATA_FORMAT_ERROR, "the body is too large") from None
    except ValueError:  # not JSON, or not UTF-8
        raise ApiError(errors.DATA_FORMAT_ERROR, "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(errors.DATA_FORMAT_ERROR, "the body must be a JSON object")
    return body


def _list(f: Fields, name: str, kind: type) -> list[Any]:
    value = f.body.get(name)
    if not isinstance(value, list) or not value or any(isinstance(v, bool) or not isinstance(v, kind) for v in value):
        raise ApiError(errors.INVALID_ARGS, f"{name} must be a non-empty array of {kind.__name__}")
    return value


def routes(apps: Apps, rooms: Rooms, urls: Urls, media: MediaLibrary) -> list[web.RouteDef]:
    """The official endpoints, plus the media and share-code images their replies point at."""

    async def authorize(request: web.Request, method: str, api: str) -> App:
        _require(request, method)
        app = await apps.app_for_token(request.query.get("access_token", ""))
        await apps.quota(app, api)
        return app

    def endpoint(method: str, path: str, handler: Handler) -> web.RouteDef:
        api = path.rsplit("/", 1)[-1]  # the quota's name

        async def view(request: web.Request) -> web.Response:
            async def work() -> Reply:
                app = await authorize(request, method, api)
                params = dict(request.query) if method == "GET" else await _json_object(request)
                return await handler(app, Fields(params))

            return await _reply(request, work)

        # Every method reaches the view, so a wrong one gets 43001/43002 as WeChat answers.
        return web.route("*", path, view)

    # ------------------------------------------------------------ credentials and media

    async def token(request: web.Request) -> web.Response:
        async def work() -> Reply:
            _require(request, "GET")
            query = request.query
            if query.get("grant_type") != "client_credential":
                raise ApiError(errors.INVALID_GRANT_TYPE, "grant_type must be client_credential")
            issued = await apps.issue_token(query.get("appid", ""), query.get("secret", ""))
            return {"access_token": issued.token, "expires_in": apps.settings.token_ttl_seconds}

        return await _reply(request, work)

    async def upload(request: web.Request) -> web.Response:
        async def work() -> Reply:
            app = await authorize(request, "POST", "upload")
            data = await _media_part(request)
            item = await media.upload(app, request.query.get("type", ""), data)
            return {"type": item.type, "media_id": item.media_id, "created_at": int(item.created_at)}

        return await _reply(request, work)

    # ------------------------------------------------------------ rooms

    async def create(app: App, f: Fields) -> Reply:
        room = await rooms.create_room(app, f.body)
        return {"roomId": room.roomid}

    async def edit(app: App, f: Fields) -> Reply:
        await rooms.edit_room(app, f.body)
        return {}

    async def delete(app: App, f: Fields) -> Reply:
        await rooms.delete_room(app, f.room_id("id", "roomId"))
        return {}

    async def push_url(app: App, f: Fields) -> Reply:
        room = await rooms.room(app, f.room_id("roomId"))
        return {"pushAddr": urls.push_url(app, room)}

    async def shared_code(app: App, f: Fields) -> Reply:
        room = await rooms.room(app, f.room_id("roomId"))
        params = f.string("params", required=False)
        image = qr.image_url(urls.http_base, room.roomid, params)
        return {"cdnUrl": image, "pagePath": page_path(room.roomid, params), "posterUrl": image}

    def switch(key: str, field: str, *room_keys: str) -> Handler:
        """updatereplay / updatecomment / updatefeedpublic / updatekf: one 0/1 switch of a room."""

        async def handler(app: App, f: Fields) -> Reply:
            await rooms.set_flag(app, f.room_id(*room_keys), key, f.flag(field))
            return {}

        return handler

    async def add_goods(app: App, f: Fields) -> Reply:
        await rooms.add_goods(app, f.room_id("roomId"), _list(f, "ids", int))
        return {}

    async def live_info(app: App, f: Fields) -> Reply:
        start, limit = f.integer("start"), f.integer("limit")
        if f.has("action"):
            if f.string("action") != "get_replay":
                raise ApiError(errors.INVALID_ARGS, 'action may only be "get_replay"')
            replays, total = await rooms.list_replays(app, f.room_id("room_id"), start, limit)
            return {"room_info": [], "live_replay": [live_replay(r, urls) for r in replays], "total": total}
        page, total = await rooms.list_rooms(app, start, limit)
        if not page:
            raise ApiError(errors.EMPTY_ROOM_LIST, room_info=[], live_replay=[], total=total)
        return {"room_info": [room_info(r, urls) for r in page], "live_replay": [], "total": total}

    # ------------------------------------------------------------ assistants and the sub-anchor

    async def add_assistants(app: App, f: Fields) -> Reply:
        await rooms.add_assistants(app, f.room_id("roomId"), _list(f, "users", dict))
        return {}

    async def modify_assistant(app: App, f: Fields) -> Reply:
        await rooms.modify_assistant(app, f.room_id("roomId"), f.string("username"), f.string("nickname"))
        return {}

    async def remove_assistant(app: App, f: Fields) -> Reply:
        await rooms.remove_assistant(app, f.room_id("roomId"), f.string("username"))
        return {}

    async def assistant_list(app: App, f: Fields) -> Reply:
        room = await rooms.room(app, f.room_id("roomId"))
        keys = ("timestamp", "headimg", "nickname", "alias", "openid")
        people = [{key: a.get(key, "") for key in keys} for a in room.assistants]
        return {"list": people, "count": len(people), "maxCount": rooms.settings.max_assistants}

    async def set_sub_anchor(app: App, f: Fields) -> Reply:
        username = f.string("username")
        if not username:
            raise ApiError(errors.INVALID_ARGS, "username is required")
        await rooms.set_sub_anchor(app, f.room_id("roomId"), username)
        return {}

    async def delete_sub_anchor(app: App, f: Fields) -> Reply:
        await rooms.set_sub_anchor(app, f.room_id("roomId"), "")
        return {}

    async def sub_anchor(app: App, f: Fields) -> Reply:
        room = await rooms.room(app, f.room_id("roomId"))
        return {"username": room.sub_anchor_wechat}

    r = ROOM_API
    return [
        web.route("*", "/cgi-bin/token", token),
        web.route("*", UPLOAD, upload),
        endpoint("POST", LIVE_INFO, live_info),
        endpoint("POST", r + "create", create),
        endpoint("POST", r + "editroom", edit),
        endpoint("POST", r + "deleteroom", delete),
        endpoint("GET", r + "getpushurl", push_url),
        endpoint("GET", r + "getsharedcode", shared_code),
        endpoint("POST", r + "updatereplay", switch("close_replay", "closeReplay", "roomId")),
        endpoint("POST", r + "updatecomment", switch("ban_comment", "banComment", "id", "roomId")),
        endpoint("POST", r + "updatefeedpublic", switch("is_feeds_public", "isFeedsPublic", "roomId")),
        endpoint("POST", r + "updatekf", switch("close_kf", "closeKf", "roomId")),
        endpoint("POST", r + "addgoods", add_goods),
        endpoint("POST", r + "addassistant", add_assistants),
        endpoint("POST", r + "modifyassistant", modify_assistant),
        endpoint("POST", r + "removeassistant", remove_assistant),
        endpoint("GET", r + "getassistantlist", assistant_list),
        endpoint("POST", r + "addsubanchor", set_sub_anchor),
        endpoint("POST", r + "modifysubanchor", set_sub_anchor),
        endpoint("POST", r + "deletesubanchor", delete_sub_anchor),
        endpoint("GET", r + "getsubanchor", sub_anchor),
        *media.routes(),
        *qr.routes(rooms.store),
    ]


async def _media_part(request: web.Request) -> bytes:
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
