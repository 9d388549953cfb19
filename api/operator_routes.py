"""REST routes an operator needs beyond rooms (the console uses them; Bearer tokens work too): image
upload, today's quota use, a webhook test delivery, a live stream's details, kicking its anchor,
deleting a replay, and pushing goods to a live room's viewers. Thin handlers over the services, in the
REST API's shape (``api.rest``)."""

from __future__ import annotations

from aiohttp import web

from api.keys import APPS, GOODS, LIVE, MEDIA, REPLAYS, ROOMS, URLS, WEBHOOKS
from api.models import App
from api.rest import authenticated
from api.wechat import media_part, quota_endpoints

ROOM = "/api/v1/rooms/{id:[0-9]+}"


@authenticated
async def upload(request: web.Request, app: App) -> web.Response:
    """The library of /cgi-bin/media/upload: the media_id goes into a room's cover_img and the like."""
    item = await request.app[MEDIA].upload(app, "image", await media_part(request))
    return web.json_response({"media_id": item.media_id, "url": request.app[URLS].media_url(item.media_id)}, status=201)


@authenticated
async def usage(request: web.Request, app: App) -> web.Response:
    return web.json_response(await request.app[APPS].usage(app, quota_endpoints(request.app)))


@authenticated
async def webhook_test(request: web.Request, app: App) -> web.Response:
    app = await request.app[APPS].app(app.appid)  # its webhook_url as it is now
    answer = await request.app[WEBHOOKS].test(app)
    reply = {"status": answer.status, "body": answer.body, "error": answer.error, "duration_ms": answer.duration_ms}
    return web.json_response(reply)


@authenticated
async def stream(request: web.Request, app: App) -> web.Response:
    room = await request.app[ROOMS].room(app, int(request.match_info["id"]))
    return web.json_response(await request.app[LIVE].details(room))


@authenticated
async def kick(request: web.Request, app: App) -> web.Response:
    room = await request.app[ROOMS].room(app, int(request.match_info["id"]))
    await request.app[LIVE].kick(room)
    return web.Response(status=204)


@authenticated
async def delete_replay(request: web.Request, app: App) -> web.Response:
    await request.app[REPLAYS].delete(app, request.match_info["replay_id"])
    return web.Response(status=204)


@authenticated
async def push_goods(request: web.Request, app: App) -> web.Response:
    """The official goods/push over REST: the console holds a session, not an access token."""
    await request.app[GOODS].push(app, int(request.match_info["id"]), int(request.match_info["goods_id"]))
    return web.Response(status=204)


def routes() -> list[web.RouteDef]:
    return [
        web.post("/api/v1/media", upload),
        web.get("/api/v1/app/usage", usage),
        web.post("/api/v1/app/webhook_test", webhook_test),
        web.get(f"{ROOM}/stream", stream),
        web.post(f"{ROOM}/kick", kick),
        web.delete("/api/v1/replays/{replay_id}", delete_replay),
        web.post(f"{ROOM}/goods/{{goods_id:[0-9]+}}/push", push_goods),
    ]
