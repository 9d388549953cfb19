"""The OpenAPI 3.1 document of every ``/api/v1`` route, served at ``/api/v1/openapi.json``.

A test checks that every route registered under ``/api/v1`` is described here.
"""

from __future__ import annotations

from typing import Any

from api.models import (
    GOODS_AUDIT_MODES,
    ROOM_EDITABLE,
    ROOM_FIELDS,
    ROOM_INPUTS,
    ROOM_MEDIA,
    STATUS_CODES,
    RoomField,
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "invalid arguments (errcode 200002, 47001, 300002, 300031...)",
        401: "missing, invalid or expired access token (41001, 40001, 42001)",
        404: "no such room for this app (300022), or replay (9410201)",
        409: "the room's status forbids this (300023)",
    }
    return {str(status): _json(_ref("Error"), meaning[status]) for status in statuses}


def _operation(
    summary: str,
    ok: dict[str, Any],
    *,
    status: int = 200,
    errors: tuple[int, ...] = (401,),
    body: str | None = None,
    params: list[dict[str, Any]] | None = None,
    public: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {str(status): ok, **_errors(*errors)}}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    if public:
        op["security"] = []
    return op


def _query(name: str, description: str, default: int) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": {"type": "integer", "default": default}}


def _object(properties: dict[str, Any], *optional: str) -> dict[str, Any]:
    """A response object: every property is in it, but the ``optional`` ones."""
    return {"type": "object", "properties": properties, "required": [p for p in properties if p not in optional]}


ROOM_ID = {"name": "id", "in": "path", "required": True, "description": "room id", "schema": {"type": "integer"}}
INT = {"type": "integer"}
GOODS_AUDIT_ABOUT = (
    "who reviews the goods the app adds: auto (approved at once), manual (POST /api/v1/apps/{appid}/goods/"
    "{goods_id}/audit), webhook (a goods_audit event to webhook_url, answered through that route)"
)
STR = {"type": "string"}
NUM = {"type": "number"}

# /api/v1/streams: relay.transcode.renditions.Renditions.totals()
TRANSCODE_TOTALS = ("jobs", "running", "refused", "worker_restarts", "dropped", "decode_errors", "unsupported_sources")
TRANSCODE_ABOUT = (
    "transcoding totals: sources and renditions being made, requests refused (max_transcodes), worker "
    "restarts, packets dropped for a worker too far behind, frames that did not decode, sources that cannot be "
    "transcoded"
)

_JSON_TYPES = {int: "integer", str: "string", float: "number", list: "array"}
ROOM_RENDITIONS = next(f for f in ROOM_FIELDS if f.name == "renditions")
RENDITIONS = {
    "type": ["array", "null"],
    "items": {"type": ["string", "object"]},
    "description": 'the renditions of its rooms\' streams, as [transcode] renditions entries ("480p" or '
    "{name, height, video_bitrate, max_rate, fps_cap}); null: the server's; []: none",
}


def _room_field(field: RoomField) -> dict[str, Any]:
    """The schema of a room field's value, from ``Room``'s definition."""
    kind = _JSON_TYPES[field.kind]
    schema: dict[str, Any] = {"type": [kind, "null"] if field.nullable else kind}
    if field.wire.flag:
        schema["enum"] = [0, 1]
    if field.kind is list:
        items = list(field.wire.items)
        schema["items"] = {"type": items[0] if len(items) == 1 else items}
    if field.wire.width is not None:
        low, high = field.wire.width
        schema["description"] = f"{low}-{high} wide (a CJK character counts 2)"
    if field.wire.doc:
        schema["description"] = field.wire.doc
    if field.wire.wechat and (field.wire.rest_default or not field.wire.required):
        schema["default"] = field.default  # what REST create takes when the field is left out
    return schema


def _room_properties(fields: tuple[RoomField, ...]) -> dict[str, Any]:
    return {field.rest_name: _room_field(field) for field in fields}


_ROOM = {
    **_room_properties(ROOM_FIELDS),
    **{f"{field.name}_url": {**STR, "description": f"where {field.name} is served"} for field in ROOM_MEDIA},
    "viewers": {**INT, "description": "viewers on the node that answered"},
    "viewers_by_protocol": {
        "type": "object",
        "description": "the same viewers by protocol (rtmp, http-flv, ws-flv...); a protocol without any may be absent",
        "additionalProperties": INT,
    },
}
_STATUS_MESSAGE = {
    "type": "object",
    "description": "type 'status' (first the current status, with previous_status null; then each change) or "
    "'viewers' (the count changed: type, roomid and viewers only)",
    "properties": {
        "type": {**STR, "enum": ["status", "viewers"]},
        "roomid": INT,
        "live_status": {**INT, "description": STATUS_CODES},
        "previous_status": {"type": ["integer", "null"]},
        "reason": STR,
        "time": NUM,
        "viewers": INT,
    },
    "required": ["type", "roomid", "viewers"],
}

# ---------------------------------------------------------------- the room channel (issue 14)
# Its messages are described in docs/asyncapi.yaml (AsyncAPI 3.0), served at /api/v1/asyncapi.yaml.
ASYNCAPI = {"description": "the room channel's messages (AsyncAPI 3.0)", "url": "/api/v1/asyncapi.yaml"}
CHANNEL_APP_FIELDS = {
    "channel_anonymous": {
        "type": "boolean",
        "description": "may clients join the room channel without a viewer token (receive only)",
    },
    "comment_words": {"type": "array", "items": STR, "description": "comments containing one are refused"},
    "comment_webhook": {**STR, "description": 'moderation URL: POSTed each comment, answers {"allow": bool}'},
}
_COMMENT = _object(
    {
        "type": {**STR, "enum": ["comment"]},
        "roomid": INT,
        "id": {**INT, "description": "the room's comment number, in the order every member saw them"},
        "openid": STR,
        "nickname": STR,
        "text": STR,
        "time": {**NUM, "description": "wall-clock Unix seconds"},
        "stream_ms": {"type": ["integer", "null"], "description": "the live stream's clock, if known"},
        "offset": {**NUM, "description": "seconds from the replay's start"},
    }
)
_SECONDS = {"in": "query", "schema": NUM}
CHANNEL_PATHS: dict[str, Any] = {
    "/api/v1/rooms/{id}/events": {
        "get": {
            **_operation(
                "Server-Sent Events: the room channel's messages for read-only clients: 'status' (the current "
                "status, then each change), 'viewers', and every room message ('comment', 'likes', 'goods'...), "
                "each event named after its message's type, the message as data; a comment line every 15 s",
                {"description": "the event stream", "content": {"text/event-stream": {"schema": {"type": "object"}}}},
                errors=(404,),
                params=[ROOM_ID],
                public=True,
            ),
            "externalDocs": ASYNCAPI,
        }
    },
    "/api/v1/rooms/{id}/ws": {
        "get": {
            **_operation(
                "WebSocket: the room channel (status, viewers, comments, likes, goods, moderation), one JSON text "
                "message each way. ?token= a viewer token; without one (if the app allows it) receive only. A bad "
                "or expired token is refused before the upgrade (401)",
                {"description": "switching to WebSocket"},
                status=101,
                errors=(401, 404),
                params=[ROOM_ID, {"name": "token", "in": "query", "schema": STR, "description": "viewer token"}],
                public=True,
            ),
            "externalDocs": ASYNCAPI,
        }
    },
    "/api/v1/rooms/{id}/viewer_tokens": {
        "post": _operation(
            "A viewer token for the room channel, for the app's own server to give its viewer: bound to the room "
            "and openid, short-lived (checked when joining). role admin may moderate and comment while comments "
            "are banned",
            _json(_object({"token": STR, "expires_in": {**INT, "description": "seconds"}}), "the token"),
            errors=(400, 401, 404),
            body="ViewerTokenRequest",
            params=[ROOM_ID],
        )
    },
    "/api/v1/app/channel": {
        "patch": _operation(
            "Set the app's room channel settings: channel_anonymous, comment_words, comment_webhook",
            _json(_ref("App"), "the app as changed"),
            body="ChannelPatch",
            errors=(400, 401),
        )
    },
    "/api/v1/replays/{replay_id}/comments": {
        "get": _operation(
            "The comments made during a replay's span, in order, deleted ones left out; no token (as the replay's "
            "files). Page with from: the last offset seen",
            _json(
                _object({"replay_id": STR, "roomid": INT, "comments": {"type": "array", "items": _COMMENT}}),
                "comments",
            ),
            errors=(400, 404),
            params=[
                {"name": "replay_id", "in": "path", "required": True, "schema": STR},
                {**_SECONDS, "name": "from", "description": "seconds from the replay's start (default 0)"},
                {**_SECONDS, "name": "to", "description": "seconds from the replay's start (default: its end)"},
                _query("limit", "at most this many (1-1000)", 1000),
            ],
            public=True,
        )
    },
    "/api/v1/asyncapi.yaml": {
        "get": _operation(
            "The AsyncAPI document of the room channel's messages",
            {"description": "AsyncAPI 3.0", "content": {"application/yaml": {}}},
            errors=(),
            public=True,
        )
    },
}
CHANNEL_SCHEMAS: dict[str, Any] = {
    "ViewerTokenRequest": {
        "type": "object",
        "properties": {
            "openid": {**STR, "description": "the viewer's openid (1-128 characters)"},
            "nickname": {**STR, "description": "shown with its comments (at most 64 characters)"},
            "role": {**STR, "enum": ["viewer", "admin"], "default": "viewer"},
        },
        "required": ["openid"],
        "additionalProperties": False,
    },
    "ChannelPatch": {"type": "object", "properties": CHANNEL_APP_FIELDS, "additionalProperties": False},
}


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {"code": {**INT, "description": "the official errcode"}, "message": STR},
                "required": ["code", "message"],
            }
        },
        "required": ["error"],
    },
    "TokenRequest": {"type": "object", "properties": {"appid": STR, "secret": STR}, "required": ["appid", "secret"]},
    "Token": _object({"access_token": STR, "expires_in": INT}),
    "App": _object(
        {
            "appid": STR,
            "name": STR,
            "push_key": {**STR, "description": "signs push URLs and webhooks: sign = MD5(push_key + t)"},
            "play_key": {**STR, "description": "signs play URLs; empty: playing is open"},
            "webhook_url": STR,
            "replay_retention_days": INT,
            "renditions": RENDITIONS,
            "created_at": NUM,
            "goods_audit": {**STR, "enum": list(GOODS_AUDIT_MODES), "description": GOODS_AUDIT_ABOUT},
            **CHANNEL_APP_FIELDS,
        }
    ),
    "AppPatch": {
        "type": "object",
        "properties": {
            "webhook_url": {**STR, "description": 'http(s) URL; "" turns webhooks off'},
            "play_key": {**STR, "description": '"" turns play URL signing off'},
            "replay_retention_days": {**INT, "minimum": 1},
            "renditions": RENDITIONS,
            "goods_audit": {**STR, "enum": list(GOODS_AUDIT_MODES), "description": GOODS_AUDIT_ABOUT},
        },
        "additionalProperties": False,
    },
    "Delivery": _object(
        {
            "delivery_id": {**STR, "description": "the same for every attempt of one event (X-Minilive-Delivery)"},
            "event": {**STR, "enum": ["status", "replay_ready", "goods_audit"]},
            "roomid": INT,
            "live_status": INT,
            "url": STR,
            "attempt": INT,
            "status": {**STR, "enum": ["delivered", "retrying", "failed"]},
            "http_status": {**INT, "description": "the receiver's answer, if one came"},
            "error": {**STR, "description": "why no answer came"},
            "duration_ms": NUM,
            "time": NUM,
        },
        "http_status",
        "error",
    ),
    "Room": _object(_ROOM),
    "RoomCreate": {
        "type": "object",
        "properties": _room_properties(ROOM_INPUTS),
        "required": [f.rest_name for f in ROOM_INPUTS if f.wire.required and not f.wire.rest_default],
        "additionalProperties": False,
    },
    "RoomPatch": {
        "type": "object",
        "description": "any editable field; the others keep their values (official editRoom rules apply)",
        "properties": {**_room_properties(ROOM_EDITABLE), "renditions": _room_field(ROOM_RENDITIONS)},
        "additionalProperties": False,
    },
    "RoomList": _object({"rooms": {"type": "array", "items": _ref("Room")}, "total": INT, "start": INT}),
    "PushUrl": _object({"push_url": STR, "expires_at": {**INT, "description": "Unix seconds (txTime)"}}),
    "PlayUrls": _object(
        {
            "rtmp": {**STR, "description": "for live-player (RTMP)"},
            "flv": {**STR, "description": "for live-player (HTTP-FLV)"},
            "hls": {**STR, "description": "for the video component and browsers"},
            "rendition": {
                "type": ["string", "null"],
                "description": "the rendition that rtmp, flv and hls point at (h264: the stream is live in a codec "
                "live-player cannot play, and [transcode] compat_rendition is on), or null for the stream itself",
            },
            "source": {
                **_object({"rtmp": STR, "flv": STR, "hls": STR}),
                "description": "the stream as its anchor publishes it, in any codec",
            },
        }
    ),
    "Replay": _object(
        {
            "replay_id": STR,
            "session": INT,
            "status": {**STR, "enum": ["recording", "ready", "failed"]},
            "created_at": NUM,
            "expire_at": NUM,
            "duration": {**NUM, "description": "seconds"},
            "size": {**INT, "description": "bytes"},
            "urls": {
                "type": "object",
                "description": "hls, mp4 and cover URLs once ready",
                "additionalProperties": STR,
            },
        }
    ),
    "Status": _object({"roomid": INT, "live_status": {**INT, "description": STATUS_CODES}, "viewers": INT}),
    "StatusMessage": _STATUS_MESSAGE,
    **CHANNEL_SCHEMAS,
}

_ROOM_RESPONSE = _json(_ref("Room"), "the room")


def _action(summary: str) -> dict[str, Any]:
    return {"post": _operation(summary, _ROOM_RESPONSE, errors=(401, 404, 409), params=[ROOM_ID])}


PATHS: dict[str, Any] = {
    "/api/v1/token": {
        "post": _operation(
            "Issue an access token (as /cgi-bin/token does)",
            _json(_ref("Token"), "a token valid for expires_in seconds"),
            body="TokenRequest",
            errors=(400, 401),
            public=True,
        )
    },
    "/api/v1/app": {
        "get": _operation("The calling app (never its secret)", _json(_ref("App"), "the app")),
        "patch": _operation(
            "Set the app's webhook_url, play_key, replay_retention_days, renditions or goods_audit",
            _json(_ref("App"), "the app as changed"),
            body="AppPatch",
            errors=(400, 401),
        ),
    },
    "/api/v1/app/webhook_deliveries": {
        "get": _operation(
            "Recent webhook delivery attempts, newest first",
            _json(
                _object({"deliveries": {"type": "array", "items": _ref("Delivery")}}),
                "delivery attempts",
            ),
            errors=(400, 401),
            params=[_query("limit", "at most this many (1-1000)", 100)],
        )
    },
    "/api/v1/rooms": {
        "get": _operation(
            "The app's rooms, by start_time descending",
            _json(_ref("RoomList"), "one page and the total"),
            errors=(400, 401),
            params=[_query("start", "offset", 0), _query("limit", "page size (at most the list limit, 100)", 20)],
        ),
        "post": _operation(
            "Create a room (the official createRoom rules and error codes)",
            _json(_ref("Room"), "the new room (Location: its URL)"),
            status=201,
            errors=(400, 401),
            body="RoomCreate",
        ),
    },
    "/api/v1/rooms/{id}": {
        "get": _operation("One room", _ROOM_RESPONSE, errors=(401, 404), params=[ROOM_ID]),
        "patch": _operation(
            "Edit a room that has not started (the official editRoom rules; fields left out keep their"
            " values; 409 once the room has gone live)",
            _ROOM_RESPONSE,
            errors=(400, 401, 404, 409),
            body="RoomPatch",
            params=[ROOM_ID],
        ),
        "delete": _operation(
            "Delete a room that is not live",
            {"description": "deleted"},
            status=204,
            errors=(401, 404, 409),
            params=[ROOM_ID],
        ),
    },
    "/api/v1/rooms/{id}/start": _action(
        "Resume a paused room (a live room is returned unchanged); any other room goes live when its anchor "
        "pushes to its push URL (409)",
    ),
    "/api/v1/rooms/{id}/pause": _action("Pause a live room (105): the anchor may push on, viewers get nothing"),
    "/api/v1/rooms/{id}/resume": _action("Resume a paused room: 101 if its anchor pushes, else 106 until it does"),
    "/api/v1/rooms/{id}/ban": _action("Ban a room (104, final)"),
    "/api/v1/rooms/{id}/end": _action("End a room (103, final)"),
    "/api/v1/rooms/{id}/push_url": {
        "get": _operation(
            "The signed RTMP push URL of the room (409 once the room is over)",
            _json(_ref("PushUrl"), "push URL"),
            errors=(401, 404, 409),
            params=[ROOM_ID],
        )
    },
    "/api/v1/rooms/{id}/play_urls": {
        "get": _operation(
            "Play URLs (signed when the app has a play_key). While the room's stream is live in a codec "
            "live-player cannot play (HEVC, AV1, VP8, VP9), rtmp, flv and hls point at its H.264 rendition "
            "STREAM_h264 (made while someone plays it), and source lists the stream's own URLs",
            _json(_ref("PlayUrls"), "play URLs"),
            errors=(401, 404),
            params=[ROOM_ID],
        )
    },
    "/api/v1/rooms/{id}/replays": {
        "get": _operation(
            "The room's replay segments (one per stretch its anchor was on), oldest first, whatever its "
            "close_replay (while it is 1, get_replay lists none and their files answer 404)",
            _json(
                _object({"replays": {"type": "array", "items": _ref("Replay")}}),
                "replays",
            ),
            errors=(401, 404),
            params=[ROOM_ID],
        )
    },
    "/api/v1/rooms/{id}/status": {
        "get": {
            **_operation(
                "Status and viewers of a room (getLiveStatus): no token, no quota, cacheable",
                {
                    **_json(_ref("Status"), "the status"),
                    "headers": {"ETag": {"schema": STR}, "Cache-Control": {"schema": STR}},
                },
                errors=(404,),
                params=[
                    ROOM_ID,
                    {"name": "If-None-Match", "in": "header", "schema": STR, "description": "a previous ETag"},
                ],
                public=True,
            ),
        }
    },
    **CHANNEL_PATHS,
    "/api/v1/streams": {
        "get": _operation(
            "Streams on this node with their publisher, codecs, rates and viewers; a source's renditions "
            "(what it can have now, and how the running ones do: bitrate, fps, encoder, behind_ms, latency_ms); "
            "a rendition's rendition_of",
            _json(
                _object(
                    {
                        "streams": {"type": "array", "items": {"type": "object"}},
                        "transcode": {**_object(dict.fromkeys(TRANSCODE_TOTALS, INT)), "description": TRANSCODE_ABOUT},
                    },
                    "transcode",
                ),
                "streams",
            ),
        )
    },
    "/api/v1/debug/runtime": {
        "get": _operation(
            "This process's asyncio tasks and threads (a leak hunt, as the soak does); with types=N also the N "
            "most numerous live object types. Needs the server's admin token (`minilive admin token`) as Bearer",
            _json(
                _object(
                    {
                        "pid": INT,
                        "tasks": INT,
                        "threads": INT,
                        **{key: {"type": "object"} for key in ("types", "malloc", "buffers")},
                    },
                    "types",
                    "malloc",
                    "buffers",
                ),
                "the counts",
            ),
            errors=(400, 401),
            params=[
                _query("types", "also list the N most numerous live object types (1 to 1000)", 0),
                _query("malloc", "also glibc's heap figures and, under PYTHONTRACEMALLOC, the top N lines", 0),
                _query("buffers", "also the bytes and bytearrays held by containers, by holder type", 0),
            ],
        )
    },
    "/api/v1/openapi.json": {
        "get": _operation(
            "This document", {"description": "OpenAPI 3.1", "content": {"application/json": {}}}, errors=(), public=True
        )
    },
}

# ---------------------------------------------------------------- goods (issue 14)

SCHEMAS["LibraryGoods"] = _object(
    {
        "goods_id": INT,
        "appid": STR,
        "name": STR,
        "cover_img": {**STR, "description": "media_id"},
        "cover_img_url": STR,
        "url": {**STR, "description": "the mini-program page of the goods"},
        "price_type": {**INT, "description": "1 fixed (price), 2 range (price..price2), 3 discount (price2 now)"},
        "price": {**INT, "description": "fen"},
        "price2": {**INT, "description": "fen"},
        "third_party_appid": STR,
        "audit_id": INT,
        "audit_status": {**INT, "description": "0 not audited, 1 in review, 2 approved, 3 rejected"},
        "audit_reason": {**STR, "description": "why the app's moderation rejected it"},
        "created_at": NUM,
        "updated_at": NUM,
    }
)
SCHEMAS["GoodsDecision"] = {
    "type": "object",
    "properties": {"approve": {"type": "boolean"}, "reason": {**STR, "description": "kept with a rejection"}},
    "required": ["approve"],
    "additionalProperties": False,
}
_APPID = {"name": "appid", "in": "path", "required": True, "description": "the token's app", "schema": STR}
_GOODS_ID = {"name": "goods_id", "in": "path", "required": True, "description": "goods id", "schema": INT}
PATHS["/api/v1/apps/{appid}/goods"] = {
    "get": _operation(
        "The app's goods library with each item's review state (the official goods/add makes them)",
        _json(_object({"goods": {"type": "array", "items": _ref("LibraryGoods")}, "total": INT}), "the goods"),
        errors=(400, 401),
        params=[_APPID, {**_query("status", "only this audit_status (0-3); -1: all", -1)}],
    )
}
PATHS["/api/v1/apps/{appid}/goods/{goods_id}/audit"] = {
    "post": _operation(
        "The app's moderation approves or rejects goods in review (audit_status 1): they become 2 or 3 "
        "(404: no such goods, 409: not in review)",
        _json(_ref("LibraryGoods"), "the goods as decided"),
        errors=(400, 401, 404, 409),
        body="GoodsDecision",
        params=[_APPID, _GOODS_ID],
    )
}
# ---------------------------------------------------------------- a room's subscribers (issue 14)

SCHEMAS["Subscriber"] = _object(
    {
        "openid": STR,
        "nickname": STR,
        "subscribe_time": {**INT, "description": "Unix seconds"},
        "room_status": {**INT, "description": "the room's status when they subscribed: 101, 102 or 103"},
    }
)
SCHEMAS["SubscribeRequest"] = {
    "type": "object",
    "properties": {"openid": {**STR, "description": "the viewer's openid (the back end vouches)"}, "nickname": STR},
    "required": ["openid"],
}
_SUBSCRIBED = _object(
    {"subscribed": {"type": "boolean", "description": "false: already subscribed"}, "subscribers": INT}
)
_SUBSCRIBE = _operation(
    "Subscribe a viewer to the room's start reminder (201; 200 if already subscribed): the room channel hears "
    "it and the app's webhook gets wxalive_follow_notify",
    _json(_SUBSCRIBED, "subscribed now"),
    status=201,
    errors=(400, 401, 404, 409),
    body="SubscribeRequest",
    params=[ROOM_ID],
)
_SUBSCRIBE["responses"]["200"] = _json(_SUBSCRIBED, "already subscribed")
SUBSCRIBER_PATHS: dict[str, Any] = {
    "/api/v1/rooms/{id}/subscribers": {
        "post": _SUBSCRIBE,
        "get": _operation(
            "The room's subscribers, in the order they subscribed",
            _json(
                _object({"subscribers": {"type": "array", "items": _ref("Subscriber")}, "total": INT, "start": INT}),
                "one page and the total",
            ),
            errors=(400, 401, 404),
            params=[ROOM_ID, _query("start", "offset", 0), _query("limit", "page size (1-100)", 20)],
        ),
    },
    "/api/v1/rooms/{id}/subscribers/{openid}": {
        "delete": _operation(
            "Unsubscribe a viewer (unsubscribed false: was not subscribed)",
            _json(_object({"unsubscribed": {"type": "boolean"}, "subscribers": INT}), "the count after"),
            errors=(400, 401, 404),
            params=[ROOM_ID, {"name": "openid", "in": "path", "required": True, "schema": STR}],
        )
    },
}
PATHS.update(SUBSCRIBER_PATHS)

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "minilive REST API",
        "version": "1",
        "description": "Rooms with the official live plugin's semantics (live_status: "
        + STATUS_CODES
        + "). Errors are {error: {code, message}} with the official errcode. Webhooks: a POST of "
        "{event, appid, roomid, live_status, previous_status, reason, time, t, sign} to the app's "
        "webhook_url, sign = MD5(push_key + t) in lowercase hex, t = expiry in Unix seconds.",
    },
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "access_token from /cgi-bin/token or POST /api/v1/token",
            }
        },
    },
}

# ---------------------------------------------------------------- what the console uses (issue 15)

_FORBIDDEN = _json(
    _ref("Error"),
    "console session: a write without the right X-CSRF-Token (9410303), or another app named (9410304)",
)
_NOT_HERE = _json(_ref("Error"), "no such room for this app (300022), or its anchor is not on this server (9410308)")


def _console_operation(
    summary: str, ok: dict[str, Any], not_found: dict[str, Any] | None = None, **kwargs: Any
) -> dict[str, Any]:
    op = _operation(summary, ok, **kwargs)
    op["responses"]["403"] = _FORBIDDEN
    if not_found:
        op["responses"]["404"] = not_found
    return op


SCHEMAS["MediaUpload"] = _object({"media_id": STR, "url": {**STR, "description": "where the image is served"}})
SCHEMAS["Usage"] = _object(
    {
        "day": {**STR, "description": "today in time_zone, YYYY-MM-DD"},
        "time_zone": STR,
        "endpoints": {
            "type": "array",
            "items": _object({"endpoint": STR, "calls": INT, "quota": {**INT, "description": "calls a day"}}),
        },
    }
)
SCHEMAS["WebhookTest"] = _object(
    {
        "status": {"type": ["integer", "null"], "description": "the receiver's HTTP status; null: no answer"},
        "body": {**STR, "description": "the first 2 KB of its answer"},
        "error": {**STR, "description": "why no answer came (empty when one came)"},
        "duration_ms": NUM,
    }
)
_CODEC = {"type": ["string", "null"]}
SCHEMAS["LiveStream"] = _object(
    {
        "roomid": INT,
        "stream": STR,
        "live_status": INT,
        "held": {"type": "boolean", "description": "paused (105): the anchor may push, viewers get nothing"},
        "publisher": _object(
            {
                "address": {**STR, "description": "the anchor's address and port"},
                "protocol": {**STR, "description": "rtmp, rtmps, whip..."},
                "since": {**NUM, "description": "Unix seconds"},
                "uptime": {**NUM, "description": "seconds"},
            }
        ),
        "video": {
            "type": ["object", "null"],
            "properties": {
                "codec": _CODEC,
                "width": INT,
                "height": INT,
                "fps": {**NUM, "description": "measured over the last second"},
                "keyframe_interval": {
                    "type": ["number", "null"],
                    "description": "seconds between the anchor's last two keyframes (its GOP); null before two",
                },
            },
            "required": ["codec", "width", "height", "fps", "keyframe_interval"],
        },
        "audio": {
            "type": ["object", "null"],
            "properties": {"codec": _CODEC, "sample_rate": INT, "channels": INT},
            "required": ["codec", "sample_rate", "channels"],
        },
        "bitrate_in": {**INT, "description": "bit/s over the last second"},
        "audience": _object(
            {"total": INT, "by_protocol": {"type": "object", "additionalProperties": INT}},
        ),
        "latency_ms": {"type": ["number", "null"], "description": "null: not measured"},
    }
)
_REPLAY_ID = {"name": "replay_id", "in": "path", "required": True, "schema": STR}
CONSOLE_PATHS: dict[str, Any] = {
    "/api/v1/media": {
        "post": {
            **_console_operation(
                "Upload an image (multipart field 'media'; PNG, JPEG, GIF or WebP): the media_id a room's cover_img, "
                "share_img and feeds_img take, as /cgi-bin/media/upload gives",
                _json(_ref("MediaUpload"), "stored"),
                status=201,
                errors=(400, 401),
            ),
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"media": {"type": "string", "format": "binary"}},
                            "required": ["media"],
                        }
                    }
                },
            },
        }
    },
    "/api/v1/app/usage": {
        "get": _console_operation(
            "Today's calls of each official endpoint against its daily quota (the day of [rooms] time_zone)",
            _json(_ref("Usage"), "calls and quotas"),
        )
    },
    "/api/v1/app/webhook_test": {
        "post": _console_operation(
            "Send a signed 'test' event to the app's webhook_url now, once, and show what came back (400: no "
            "webhook_url)",
            _json(_ref("WebhookTest"), "the receiver's answer, or why none came"),
            errors=(400, 401),
        )
    },
    "/api/v1/rooms/{id}/stream": {
        "get": _console_operation(
            "The room's live stream on this server: the anchor's address, codecs, size, fps, keyframe "
            "interval, bitrate in and audience",
            _json(_ref("LiveStream"), "live here"),
            _NOT_HERE,
            params=[ROOM_ID],
        )
    },
    "/api/v1/rooms/{id}/kick": {
        "post": _console_operation(
            "Disconnect the anchor (204). The room changes as when an anchor drops (101 -> 106) and goes live "
            "again when the anchor pushes; to keep it off the air, ban or end it",
            {"description": "disconnected"},
            _NOT_HERE,
            status=204,
            params=[ROOM_ID],
        )
    },
    "/api/v1/replays/{replay_id}": {
        "delete": _console_operation(
            "Delete one of the app's replays, files and all (404: no such replay; 409: still being recorded)",
            {"description": "deleted"},
            _json(_ref("Error"), "the app has no such replay (9410201)"),
            status=204,
            errors=(401, 409),
            params=[_REPLAY_ID],
        )
    },
    "/api/v1/rooms/{id}/goods/{goods_id}/push": {
        "post": _console_operation(
            "Push (pin) goods of the room's list to its viewers, as the official goods/push: only while live "
            "(409), on sale and not while other goods are showing (400: 300052, 300047, 300053)",
            {"description": "pushed: the room channel announces it"},
            _json(_ref("Error"), "no such room for this app (300022)"),
            status=204,
            errors=(400, 401, 409),
            params=[ROOM_ID, _GOODS_ID],
        )
    },
}
PATHS.update(CONSOLE_PATHS)
SCHEMAS["Delivery"]["properties"]["event"]["enum"].append("test")
DOCUMENT["security"].append({"console": []})
DOCUMENT["components"]["securitySchemes"]["console"] = {
    "type": "apiKey",
    "in": "cookie",
    "name": "minilive_console",
    "description": "the console's session (POST /console/api/login). Writes carry X-CSRF-Token (the csrf it "
    "answered); an admin session names the app with X-Minilive-App",
}
