"""How apps, rooms and replays look in JSON: the WeChat-compatible shapes, the REST shapes, and the
replay announced in webhooks and room events. Every surface shapes them here."""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from api.audience import Audience
from api.models import ROOM_FIELDS, ROOM_LISTED, ROOM_MEDIA, App, Goods, Replay, Room, RoomField
from api.rooms import OFFICIAL_TIME_ZONE
from api.urls import Urls

View = dict[str, Any]


OFFICIAL_ZONE = ZoneInfo(OFFICIAL_TIME_ZONE)


def iso_time(ts: float, zone: tzinfo = OFFICIAL_ZONE) -> str:
    """Zone-less ISO-8601 as the official get_replay returns it: the wall clock of ``zone`` (the
    configured ``[rooms] time_zone``; the official service writes China Standard Time)."""
    return datetime.fromtimestamp(ts, zone).strftime("%Y-%m-%dT%H:%M:%S")


def app_json(app: App) -> View:
    """The app as its owner sees it: everything but the secret."""
    data = app.to_dict()
    del data["secret"]
    return data


def _value(room: Room, field: RoomField, urls: Urls) -> Any:
    value = getattr(room, field.name)
    return urls.media_url(value) if field.wire.media else value


def room_info(room: Room, urls: Urls) -> View:
    """A room as getliveinfo lists it: exactly the 18 official fields, images as URLs."""
    info = {field.name: _value(room, field, urls) for field in ROOM_LISTED}
    info["goods"] = [goods_view(goods, urls) for goods in room.goods]
    return info


# getliveinfo's goods[] fields (a room's copies also hold ours, such as on_sale).
GOODS_LISTED = ("name", "cover_img", "url", "price", "price2", "price_type", "goods_id", "third_party_appid")


def goods_view(goods: dict[str, Any], urls: Urls) -> View:
    """Goods of a room as getliveinfo lists them: the 8 official fields, prices in fen, the cover's URL."""
    record = Goods.from_dict(goods)
    view = {key: getattr(record, key) for key in GOODS_LISTED}
    view["cover_img"] = urls.media_url(record.cover_img)
    return view


def room_json(room: Room, urls: Urls, audience: Audience) -> View:
    """A room as the REST API shows it: every field (media_ids as given, their URLs beside them), and
    who watches it."""
    data = {field.rest_name: getattr(room, field.name) for field in ROOM_FIELDS}
    data.update((f"{field.name}_url", _value(room, field, urls)) for field in ROOM_MEDIA)
    data["viewers"] = audience["total"]
    data["viewers_by_protocol"] = audience["by_protocol"]
    return data


def live_replay(replay: Replay, urls: Urls) -> View:
    """A replay as getliveinfo's get_replay lists it."""
    return {
        "create_time": iso_time(replay.created_at, urls.settings.zone),
        "expire_time": iso_time(replay.expire_at, urls.settings.zone),
        "media_url": f"{urls.http_base}/replays/{replay.path}/index.m3u8",
    }


def replay_json(replay: Replay, urls: Urls) -> View:
    """A replay as the REST API shows it."""
    return {
        "replay_id": replay.replay_id,
        "session": replay.session,
        "status": replay.status,
        "created_at": replay.created_at,
        "expire_at": replay.expire_at,
        "duration": replay.duration,
        "size": replay.size,
        "urls": urls.replay_urls(replay),
    }


def replay_ready(replay: Replay, urls: Urls) -> View:
    """The data of a ``replay_ready`` event: the REST view plus the get_replay fields."""
    data = replay_json(replay, urls)
    data["media_url"] = data["urls"].get("hls", "")
    zone = urls.settings.zone
    data["create_time"], data["expire_time"] = iso_time(replay.created_at, zone), iso_time(replay.expire_at, zone)
    return data
