"""The room channel's REST routes: viewer tokens, a replay's comments, the app's channel settings.

Thin handlers in the REST API's shape (``api.rest``); the WebSocket itself is ``api.channel``.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from api import channel, errors
from api.errors import ApiError
from api.keys import APPS, CHANNEL
from api.models import App
from api.rest import authenticated, json_body, shaped
from api.views import app_json
from relay.http.cors import CORS

MAX_COMMENTS_LISTED = 1000
ASYNCAPI = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml"


@authenticated
async def viewer_token(request: web.Request, app: App) -> web.Response:
    service = request.app[CHANNEL]
    roomid = int(request.match_info["id"])
    token = await channel.viewer_token(
        service.store, service.settings, app, roomid, await json_body(request), service.clock()
    )
    return web.json_response({"token": token, "expires_in": service.settings.token_ttl_seconds})


@authenticated
async def channel_settings(request: web.Request, app: App) -> web.Response:
    allow_private = request.app[APPS].settings.webhook_private_addresses
    changed = await channel.update_settings(request.app[CHANNEL].store, app, await json_body(request), allow_private)
    return web.json_response(app_json(changed))


def _seconds(request: web.Request, name: str) -> float | None:
    value = request.query.get(name, "")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise ApiError(errors.INVALID_ARGS, f"{name} must be a number of seconds from the replay's start") from None
    if not 0 <= seconds < 1e9:
        raise ApiError(errors.INVALID_ARGS, f"{name} must be 0 or more seconds")
    return seconds


@shaped
async def replay_comments(request: web.Request) -> web.Response:
    """Public as the replay's files are: whoever has the replay's id may read its comments."""
    service = request.app[CHANNEL]
    start, end = _seconds(request, "from") or 0.0, _seconds(request, "to")
    limit = request.query.get("limit", str(MAX_COMMENTS_LISTED))
    if not limit.isdigit() or not 1 <= int(limit) <= MAX_COMMENTS_LISTED:
        raise ApiError(errors.INVALID_ARGS, f"limit must be 1-{MAX_COMMENTS_LISTED}")
    replay = await service.store.get_replay(request.match_info["replay_id"])
    if replay is None:
        raise ApiError(errors.REPLAY_NOT_FOUND, f"no replay {request.match_info['replay_id']}")
    comments = await service.comments.for_replay(replay, start, end, int(limit))
    body = {"replay_id": replay.replay_id, "roomid": replay.roomid, "comments": comments}
    return web.json_response(body, headers=CORS)


async def asyncapi(request: web.Request) -> web.StreamResponse:
    if not ASYNCAPI.is_file():
        raise web.HTTPNotFound(text="docs/asyncapi.yaml is not installed with this copy of minilive", headers=CORS)
    return web.FileResponse(ASYNCAPI, headers={**CORS, "Content-Type": "application/yaml"})


def routes() -> list[web.RouteDef]:
    return [
        web.post("/api/v1/rooms/{id:[0-9]+}/viewer_tokens", viewer_token),
        web.patch("/api/v1/app/channel", channel_settings),
        web.get("/api/v1/replays/{replay_id}/comments", replay_comments),
        web.get("/api/v1/asyncapi.yaml", asyncapi),
    ]
