"""Subscribers over HTTP: the official get_wxa_followers and push_message (``/wxa/business/...``), and
the REST routes of a room's subscribers (``/api/v1/rooms/{id}/subscribers``), for a back end that
vouches for its viewers' openids. Thin handlers over ``api.subscribers.Subscribers``."""

from __future__ import annotations

from aiohttp import web

from api import errors
from api.errors import ApiError
from api.keys import ROOMS, SUBSCRIBERS
from api.models import App
from api.rest import authenticated, json_body, query_int
from api.subscribers import FOLLOWERS_DEFAULT
from api.validation import Fields
from api.wechat import Reply, official

BUSINESS = "/wxa/business/"
REST_FIELDS = ("openid", "nickname")


@official("POST")
async def followers(request: web.Request, app: App, f: Fields) -> Reply:
    limit = f.integer("limit", required=False, default=FOLLOWERS_DEFAULT)
    found, page_break = await request.app[SUBSCRIBERS].followers(app, limit, f.integer("page_break", required=False))
    listed = [
        {"openid": s.openid, "subscribe_time": s.subscribe_time, "room_status": s.room_status, "room_id": roomid}
        for roomid, s in found
    ]
    return {"followers": listed, "page_break": page_break}


@official("POST")
async def push_message(request: web.Request, app: App, f: Fields) -> Reply:
    room = await request.app[ROOMS].room(app, f.room_id("room_id"))
    openids = f.body.get("user_openid")
    if not isinstance(openids, list) or not all(isinstance(o, str) for o in openids):
        raise ApiError(errors.INVALID_ARGS, "user_openid must be an array of openids")
    return {"message_id": await request.app[SUBSCRIBERS].push(app, room, openids)}


# ---------------------------------------------------------------- REST


@authenticated
async def subscribe(request: web.Request, app: App) -> web.Response:
    body = await json_body(request)
    unknown = body.keys() - set(REST_FIELDS)
    if unknown:
        accepted = ", ".join(REST_FIELDS)
        raise ApiError(errors.INVALID_ARGS, f"unknown field(s) {', '.join(sorted(unknown))}; accepted: {accepted}")
    f = Fields(body)
    room = await request.app[ROOMS].room(app, int(request.match_info["id"]))
    subscribers = request.app[SUBSCRIBERS]
    new = await subscribers.subscribe(room, f.string("openid"), f.string("nickname", required=False))
    reply = {"subscribed": new, "subscribers": await subscribers.count(room)}
    return web.json_response(reply, status=201 if new else 200)


@authenticated
async def unsubscribe(request: web.Request, app: App) -> web.Response:
    room = await request.app[ROOMS].room(app, int(request.match_info["id"]))
    subscribers = request.app[SUBSCRIBERS]
    gone = await subscribers.unsubscribe(room, request.match_info["openid"])
    return web.json_response({"unsubscribed": gone, "subscribers": await subscribers.count(room)})


@authenticated
async def subscriber_list(request: web.Request, app: App) -> web.Response:
    room = await request.app[ROOMS].room(app, int(request.match_info["id"]))
    start, limit = query_int(request, "start", 0), query_int(request, "limit", 20)
    page, total = await request.app[SUBSCRIBERS].page(room, start, limit)
    return web.json_response({"subscribers": [s.to_json() for s in page], "total": total, "start": start})


def routes() -> list[web.RouteDef]:
    subscribers = "/api/v1/rooms/{id:[0-9]+}/subscribers"
    return [
        web.route("*", BUSINESS + "get_wxa_followers", followers),
        web.route("*", BUSINESS + "push_message", push_message),
        web.post(subscribers, subscribe),
        web.get(subscribers, subscriber_list),
        web.delete(subscribers + "/{openid}", unsubscribe),
    ]
