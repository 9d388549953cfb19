"""What the mini-program's pages ask for, made from minilive's answers: the room list, a room's play
URLs and renditions, the channel's URL with a viewer token, the anchor's push URL, the replays."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from examples.backend.config import Config
from examples.backend.errors import BackendError
from examples.backend.minilive import Minilive

ROOM_FIELDS = ("roomid", "name", "live_status", "anchor_name", "start_time", "end_time", "cover_img_url", "viewers")
GOODS_FIELDS = ("goods_id", "name", "url", "price", "price2", "price_type", "on_sale")


async def room_list(minilive: Minilive) -> list[dict[str, Any]]:
    body = await minilive.rest("GET", "/rooms?limit=100")
    return [{key: room.get(key) for key in ROOM_FIELDS} for room in body["rooms"]]


async def room_page(minilive: Minilive, roomid: int) -> dict[str, Any]:
    """The viewer page's start: the room, its goods shelf and what to play."""
    room = await minilive.rest("GET", f"/rooms/{roomid}")
    urls = await minilive.rest("GET", f"/rooms/{roomid}/play_urls")
    return {
        "room": {key: room.get(key) for key in ROOM_FIELDS}
        | {"close_like": room.get("close_like"), "close_comment": room.get("close_comment")},
        "goods": [_goods(minilive.config, g) for g in room.get("goods", [])],
        "qualities": await _qualities(minilive, room, urls),
        "hls": urls["hls"],
    }


async def _qualities(minilive: Minilive, room: dict[str, Any], urls: dict[str, Any]) -> list[dict[str, str]]:
    """The FLV URL of each rendition live-player may switch to, the one to start with first. A rendition
    is the stream ``NAME_RUNG`` with the stream's own signature (minilive accepts it for every rung)."""
    ladder = room.get("renditions")
    if ladder is None:
        ladder = (await minilive.rest("GET", "/app")).get("renditions")
    names = [_rung_name(entry) for entry in ladder] if ladder is not None else list(minilive.config.renditions)
    source_flv = urls["source"]["flv"]
    stream_path, _, query = source_flv.partition(".flv")
    # "auto" is what minilive says players should play: the source, or its H.264 rendition when the
    # anchor pushes a codec live-player cannot decode (HEVC, AV1...).
    qualities = [{"name": "auto", "flv": urls["flv"]}]
    if urls.get("rendition"):
        qualities.append({"name": "source", "flv": source_flv})
    qualities += [{"name": name, "flv": f"{stream_path}_{name}.flv{query}"} for name in names if name]
    return qualities


def _rung_name(entry: Any) -> str:
    return entry if isinstance(entry, str) else str(entry.get("name", "")) if isinstance(entry, dict) else ""


def _goods(config: Config, goods: dict[str, Any]) -> dict[str, Any]:
    view = {key: goods.get(key) for key in GOODS_FIELDS}
    media = goods.get("cover_img") or ""
    view["cover_img"] = f"{(config.public_url or config.minilive_url).rstrip('/')}/media/{media}" if media else ""
    return view


async def channel(minilive: Minilive, roomid: int, openid: str, nickname: str) -> dict[str, Any]:
    """A viewer token for the room channel, and the channel's URL with it. Anchors (ANCHOR_OPENIDS)
    get an admin token: they may delete comments and mute viewers from their page."""
    role = "admin" if minilive.config.may_push(openid) and "*" not in minilive.config.anchors else "viewer"
    body = {"openid": openid, "nickname": nickname[:32], "role": role}
    issued = await minilive.rest("POST", f"/rooms/{roomid}/viewer_tokens", json=body)
    url = f"{minilive.config.channel_base}/api/v1/rooms/{roomid}/ws?token={quote(issued['token'])}"
    return {"token": issued["token"], "expires_in": issued["expires_in"], "url": url, "role": role}


async def push_url(minilive: Minilive, roomid: int, openid: str) -> dict[str, Any]:
    if not minilive.config.may_push(openid):
        raise BackendError(403, "not_anchor", f"{openid} is not an anchor: add the openid to ANCHOR_OPENIDS")
    body = await minilive.wxa("/wxaapi/broadcast/room/getpushurl", {"roomId": roomid})
    return {"push_url": body["pushAddr"]}


async def replays(minilive: Minilive, roomid: int) -> list[dict[str, Any]]:
    """The room's ready replays, unless the room hides them (closeReplay): the REST list is the
    operator's and shows them either way."""
    room = await minilive.rest("GET", f"/rooms/{roomid}")
    if room.get("close_replay"):
        return []
    listed = (await minilive.rest("GET", f"/rooms/{roomid}/replays"))["replays"]
    return [
        {key: replay.get(key) for key in ("replay_id", "created_at", "duration")} | replay["urls"]
        for replay in listed
        if replay.get("status") == "ready" and replay.get("urls")
    ]
