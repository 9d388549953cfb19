"""Rooms: create, edit, delete and list them; their switches, goods, assistants and sub-anchor.

The WeChat-compatible routes and the REST routes both call this; neither holds a rule of its own.
Status changes are not made here but by ``api.room_status``; edits never undo one (see ``_save``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from api import errors, validation
from api.errors import ApiError
from api.ladders import check_ladder
from api.models import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    ROOM_EDITABLE,
    ROOM_INPUTS,
    ROOM_MEDIA,
    App,
    Assistant,
    LiveStatus,
    Replay,
    Room,
    RoomField,
)
from api.roles import check_wechat_id
from api.store.base import RoomStore

log = logging.getLogger("minilive.rooms")

DAY = 86400
OFFICIAL_TIME_ZONE = "Asia/Shanghai"  # China Standard Time, in which the official service writes times
T = TypeVar("T")


@dataclass(slots=True)
class RoomSettings:
    times: validation.TimeRules = field(default_factory=validation.TimeRules)
    # 106 returns to 101 if the anchor comes back within this, else the live ends (103).
    interrupt_grace_seconds: float = 900.0
    max_live_seconds: float = 12 * 3600.0
    max_live_rooms: int = 50  # rooms live at once per app
    max_lives_per_day: int = 50  # live sessions started per app per day
    # None: a room may start any time before its endTime (anchors start early). A number: at most
    # this many minutes before startTime.
    publish_early_minutes: float | None = None
    # Push URLs stay valid for the planned live plus this margin, so reconnects still pass.
    push_url_margin_seconds: int = 6 * 3600
    list_limit: int = 100
    token_ttl_seconds: int = 7200
    media_ttl_seconds: int = 3 * DAY
    sweep_interval_seconds: float = 5.0
    # Daily call quotas per app and endpoint (45009 past them); "default" covers the others.
    quotas: dict[str, int] = field(default_factory=lambda: {"getliveinfo": 100000, "default": 10000})
    max_assistants: int = 10
    rtmp_app: str = "live"
    # Waits between webhook attempts (exponential backoff): one attempt more than waits.
    webhook_retry_seconds: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0, 16.0])
    webhook_timeout_seconds: float = 10.0
    # Webhooks (app, goods review, comment moderation) may point at loopback, link-local and private
    # addresses: off by default, since they reach what trusts this server's own address (issue 16).
    webhook_private_addresses: bool = False
    # goods (issue 14): goods a room may hold (no official number found); goods submitted for review
    # per app per day (300012, official); how long a push shows, during which another waits (300047).
    max_room_goods: int = 200
    goods_reviews_per_day: int = 500
    goods_push_seconds: float = 3.0
    # The zone of the times the API writes out (get_replay's ISO strings, the share poster) and of the
    # day that daily quotas count: the official service's (China Standard Time), whatever the host's.
    time_zone: str = OFFICIAL_TIME_ZONE
    # getcallbackip's ip_list; empty: the addresses this server's HTTP listener is reached at.
    callback_ips: list[str] = field(default_factory=list)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)  # cached by zoneinfo

    # createRoom/editRoom refuse an anchorWechat that does not hold the anchor role (300030), as WeChat does.
    require_anchor_role: bool = False


class Rooms:
    def __init__(self, store: RoomStore, settings: RoomSettings, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        # createRoom/editRoom's check of anchorWechat (``Roles.check_anchor``, set by the composition root).
        self.check_anchor: Callable[[App, str], Awaitable[None]] | None = None
        # What the room's features keep apart from the room (subscribers, goods pushes): dropped with it.
        self.on_delete: list[Callable[[int], Awaitable[None]]] = []

    async def find(self, roomid: int) -> Room | None:
        """Any app's room: for the URLs that viewers load without a token."""
        return await self.store.get_room(roomid)

    async def room(self, app: App, roomid: int) -> Room:
        room = await self.store.get_room(roomid)
        if room is None or room.appid != app.appid:
            raise ApiError(errors.ROOM_NOT_FOUND, f"room {roomid} does not exist for this app")
        return room

    async def unended(self, app: App, roomid: int) -> Room:
        """The app's room, if it is not over (300023 otherwise)."""
        room = await self.room(app, roomid)
        if room.live_status in FINAL_STATUSES:
            raise ApiError(errors.ROOM_STATUS_FORBIDS, f"room {roomid} has ended ({room.live_status})")
        return room

    async def create_room(self, app: App, body: dict[str, Any]) -> Room:
        """createRoom: a new room of ``app`` from the official (camelCase) fields."""
        values = self._read(body, ROOM_INPUTS)
        if self.check_anchor is not None:
            await self.check_anchor(app, values["anchor_wechat"])
        for image in ROOM_MEDIA:
            values[image.name] = await self._adopt_media(app, values[image.name], image.wire.errcode)
        room = await self.store.create_room(Room(roomid=0, appid=app.appid, **values))
        log.info("room %d created for app %s: %r", room.roomid, app.appid, room.name)
        return room

    async def edit_room(self, app: App, body: dict[str, Any]) -> Room:
        """editRoom: every editable field (official names) of a room that has not started, with the
        rules of createRoom: the same required fields, the same defaults for the optional switches
        (isFeedsPublic 1, closeReplay 1, closeShare 0, closeKf 1), startTime 10 minutes ahead. Once the
        room has gone live, only the switch endpoints (updatereplay...) change it."""
        room = await self.room(app, validation.Fields(body).room_id("id", "roomId"))
        status = room.live_status
        if status != LiveStatus.NOT_STARTED:
            state = "has ended" if status in FINAL_STATUSES else "has gone live"
            raise ApiError(
                errors.ROOM_STATUS_FORBIDS,
                f"room {room.roomid} {state} ({status}): editroom changes only rooms that have not started (102);"
                " switch replay, comments, customer service or feeds with updatereplay, updatecomment,"
                " updatekf or updatefeedpublic",
            )
        values = self._read(body, ROOM_EDITABLE)
        if self.check_anchor is not None and values["anchor_wechat"] != room.anchor_wechat:
            await self.check_anchor(app, values["anchor_wechat"])
        for image in ROOM_MEDIA:
            current = getattr(room, image.name)
            values[image.name] = await self._adopt_media(app, values[image.name], image.wire.errcode, current)
        for name, value in values.items():
            setattr(room, name, value)
        return await self._save(room, list(values))

    def _read(self, body: dict[str, Any], fields: tuple[RoomField, ...]) -> dict[str, Any]:
        """The fields of a createRoom/editRoom body, checked as createRoom checks them."""
        values = validation.read_room(body, fields)
        validation.check_times(values["start_time"], values["end_time"], self.clock(), self.settings.times)
        if not values["anchor_wechat"]:
            raise ApiError(errors.INVALID_ARGS, "anchorWechat is required")
        return values

    async def set_renditions(self, app: App, roomid: int, entries: Any) -> Room:
        """The room's own ladder (None: its app's, else the server's), checked as the config's is."""
        room = await self.room(app, roomid)
        if room.live_status in FINAL_STATUSES:
            raise ApiError(errors.ROOM_STATUS_FORBIDS, f"room {roomid} has ended ({room.live_status})")
        room.renditions = check_ladder(entries, f"room {roomid}'s")
        return await self._save(room, ["renditions"])

    async def _save(self, room: Room, fields: list[str]) -> Room:
        """Write the edited ``fields`` of ``room`` only if its status is still the one it was read with,
        so that an edit never undoes a status change made meanwhile (atomic in the store)."""
        changes = {name: getattr(room, name) for name in fields}
        changes["updated_at"] = self.clock()
        saved = await self.store.transition(room.roomid, {room.live_status}, room.live_status, changes)
        if saved is None:
            raise ApiError(errors.ROOM_STATUS_FORBIDS, f"room {room.roomid} changed status during the edit: retry")
        return saved

    async def delete_room(self, app: App, roomid: int) -> None:
        room = await self.room(app, roomid)
        if room.live_status in ACTIVE_STATUSES:
            raise ApiError(errors.ROOM_STATUS_FORBIDS, f"room {roomid} is live ({room.live_status}): end it first")
        await self.store.delete_room(roomid)
        await self.store.release_live_slot(app.appid, roomid)
        for forget in self.on_delete:
            await forget(roomid)

    async def list_rooms(self, app: App, start: int, limit: int) -> tuple[list[Room], int]:
        if start < 0 or limit <= 0:
            raise ApiError(errors.INVALID_ARGS, "start must be >= 0 and limit > 0")
        limit = min(limit, self.settings.list_limit)
        return await self.store.list_rooms(app.appid, start, limit)

    async def list_replays(self, app: App, roomid: int, start: int, limit: int) -> tuple[list[Replay], int]:
        """One page of a room's ready replay segments, oldest first (get_replay), and their number;
        none while the room's replay is closed (they are kept, and listed again once it is opened)."""
        if start < 0 or limit <= 0:
            raise ApiError(errors.INVALID_ARGS, "start must be >= 0 and limit > 0")
        room = await self.room(app, roomid)
        if room.close_replay:
            return [], 0
        ready = [r for r in await self.store.list_replays(roomid) if r.status == "ready"]
        return ready[start : start + min(limit, self.settings.list_limit)], len(ready)

    async def replays(self, app: App, roomid: int) -> list[Replay]:
        """Every replay of a room, oldest first, whatever its status."""
        await self.room(app, roomid)
        return await self.store.list_replays(roomid)

    async def set_flag(self, app: App, roomid: int, key: str, value: int) -> Room:
        """updatereplay / updatekf / updatefeedpublic / updatecomment: switches allowed at any time
        before the room is over (replay and customer service may be opened during the live). The
        replay switch also after the live ended (103), to hide or show its replays."""
        if value not in (0, 1):
            raise ApiError(errors.INVALID_ARGS, "the switch must be 0 or 1")
        room = await self.room(app, roomid)
        replay_after_end = key == "close_replay" and room.live_status == LiveStatus.ENDED
        if room.live_status in FINAL_STATUSES and not replay_after_end:
            raise ApiError(errors.ROOM_STATUS_FORBIDS, f"room {roomid} has ended ({room.live_status})")
        setattr(room, key, value)
        return await self._save(room, [key])

    async def edit_goods(self, app: App, roomid: int, edit: Callable[[Room], T]) -> T:
        """Change the goods of a room that is not over with ``edit`` (which may refuse with an ApiError)
        and save them; a status change made meanwhile is kept, and the edit made again on the new room."""
        for _ in range(3):
            room = await self.unended(app, roomid)
            result = edit(room)
            changes = {"goods": room.goods, "updated_at": self.clock()}
            if await self.store.transition(roomid, {room.live_status}, room.live_status, changes) is not None:
                return result
        raise ApiError(errors.ROOM_STATUS_FORBIDS, f"room {roomid} keeps changing status: retry")

    # Assistants and the sub-anchor: WeChat's real-name checks (500002) do not apply here.

    async def add_assistants(self, app: App, roomid: int, users: list[dict[str, Any]]) -> Room:
        """addassistant: all of ``users`` or none; those already assistants keep their nickname."""
        room = await self.room(app, roomid)
        names = {a["username"] for a in room.assistants}
        for user in users:
            username, nickname = _assistant(user.get("username"), user.get("nickname"))
            if username in names:
                continue
            if len(room.assistants) >= self.settings.max_assistants:
                raise ApiError(
                    errors.INVALID_ARGS,
                    f"a room has at most {self.settings.max_assistants} assistants: remove one with removeassistant",
                )
            room.assistants.append(Assistant(username, nickname, int(self.clock()), alias=username).to_dict())
            names.add(username)
        return await self._save(room, ["assistants"])

    async def modify_assistant(self, app: App, roomid: int, username: str, nickname: str) -> Room:
        username, nickname = _assistant(username, nickname)
        room = await self.room(app, roomid)
        for assistant in room.assistants:
            if assistant["username"] == username:
                assistant["nickname"] = nickname
                assistant["timestamp"] = int(self.clock())
                return await self._save(room, ["assistants"])
        raise ApiError(errors.INVALID_ARGS, f"{username} is not an assistant of room {roomid}: add it first")

    async def remove_assistant(self, app: App, roomid: int, username: str) -> Room:
        room = await self.room(app, roomid)
        kept = [a for a in room.assistants if a["username"] != username]
        if len(kept) == len(room.assistants):
            raise ApiError(errors.INVALID_ARGS, f"{username} is not an assistant of room {roomid}")
        room.assistants = kept
        return await self._save(room, ["assistants"])

    async def set_sub_anchor(self, app: App, roomid: int, username: str, replace: bool) -> Room:
        """addsubanchor (``replace`` False: the room has none yet) or modifysubanchor (it has one)."""
        check_wechat_id(username, errors.SUB_ANCHOR_INVALID)
        room = await self.room(app, roomid)
        if username == room.anchor_wechat:
            raise ApiError(errors.SUB_ANCHOR_IS_ANCHOR, f"{username} is room {roomid}'s anchor")
        current = room.sub_anchor_wechat
        if current and not replace:
            raise ApiError(
                errors.SUB_ANCHOR_DUPLICATE, f"room {roomid} has sub-anchor {current}: change it with modifysubanchor"
            )
        if not current and replace:
            raise ApiError(errors.INVALID_ARGS, f"room {roomid} has no sub-anchor: add one with addsubanchor")
        room.sub_anchor_wechat = username
        return await self._save(room, ["sub_anchor_wechat"])

    async def delete_sub_anchor(self, app: App, roomid: int) -> Room:
        room = await self.room(app, roomid)
        if not room.sub_anchor_wechat:
            raise ApiError(errors.INVALID_ARGS, f"room {roomid} has no sub-anchor")
        room.sub_anchor_wechat = ""
        return await self._save(room, ["sub_anchor_wechat"])

    async def _adopt_media(self, app: App, media_id: str, errcode: int, current: str = "") -> str:
        """Check a media_id for create/edit and keep its file for the room; an unchanged one passes."""
        if media_id and media_id == current:
            return media_id
        media = await self.store.get_media(media_id) if media_id else None
        if media is None or media.appid != app.appid:
            raise ApiError(errcode, f"{media_id!r} is not a media_id of this app: upload with /cgi-bin/media/upload")
        if media.expires_at <= self.clock():
            raise ApiError(errcode, f"media_id {media_id} expired (valid 3 days): upload the image again")
        if not media.pinned:
            media.pinned = True
            await self.store.put_media(media)
        return media_id


MAX_ASSISTANT_NICKNAME = 32  # not documented; WeChat nicknames are short


def _assistant(username: Any, nickname: Any) -> tuple[str, str]:
    """An assistant's WeChat id and nickname (both required, as the official API has them), checked."""
    check_wechat_id(username, errors.INVALID_ARGS)
    if not isinstance(nickname, str) or not 1 <= len(nickname) <= MAX_ASSISTANT_NICKNAME:
        raise ApiError(errors.INVALID_ARGS, f"{username}'s nickname is required, 1-{MAX_ASSISTANT_NICKNAME} characters")
    return username, nickname
