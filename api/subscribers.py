"""A room's subscribers: viewers who asked to be told when the room goes live (the start reminder).

A subscriber is a document of ``subscribers:{roomid}`` by openid. The app's followers, across its
rooms, are also an append-only log ``followers:{appid}`` whose score is a number from the shared
sequence: get_wxa_followers pages through it with that number as ``page_break``, and skips the entries
of subscriptions since cancelled (their document is gone, or carries a newer number).

Each subscribe and unsubscribe is published on the room bus (the room channel's members see the count)
and sent to the app's webhook as WeChat's ``wxalive_follow_notify``. minilive cannot send WeChat
subscription messages: when a room goes live (102 -> 101) it sends the app's webhook the subscribers
to remind (``subscribers_notify``, at most ``NOTIFY_BATCH`` openids per event), and push_message
sends the app the openids it names (``push_message``); the team's back end sends the messages.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from api import errors
from api.bus import RoomBus
from api.errors import ApiError
from api.models import FINAL_STATUSES, App, LiveStatus, Room, RoomEvent
from api.store.base import RoomStore
from api.webhooks import Webhooks

log = logging.getLogger("minilive.subscribers")

# openids are 28 characters of [A-Za-z0-9_-]; other ids a back end vouches for are allowed up to 64.
OPENID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_NICKNAME = 64
FOLLOWERS_DEFAULT, FOLLOWERS_MAX = 200, 2000  # get_wxa_followers' limit
PUSH_MAX = 2000  # push_message: openids per call (群发订阅用户个数限制：2000/次)
NOTIFY_BATCH = 1000  # openids per subscribers_notify webhook event
LIST_MAX = 100  # REST page size

FOLLOW_EVENT = "wxalive_follow_notify"
NOTIFY_EVENT = "subscribers_notify"
PUSH_EVENT = "push_message"


def follow_status(status: int) -> int:
    """The status wxalive_follow_notify reports, which knows only 101, 102 and 103: a live session
    under way (paused or interrupted too) is 101, a room that is over is 103."""
    if status == LiveStatus.NOT_STARTED:
        return LiveStatus.NOT_STARTED
    return LiveStatus.ENDED if status in FINAL_STATUSES else LiveStatus.LIVE


@dataclass(slots=True)
class Subscriber:
    openid: str
    nickname: str
    subscribe_time: int
    room_status: int  # the room's status when they subscribed (101, 102 or 103)
    id: int  # its number in the app's followers log

    def to_json(self) -> dict[str, Any]:
        return {
            "openid": self.openid,
            "nickname": self.nickname,
            "subscribe_time": self.subscribe_time,
            "room_status": self.room_status,
        }


class Subscribers:
    def __init__(
        self,
        store: RoomStore,
        bus: RoomBus,
        webhooks: Webhooks,
        zone: ZoneInfo,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.bus = bus
        self.webhooks = webhooks
        self.zone = zone  # the day push_message counts in: [rooms] time_zone, China Standard Time by default
        self.clock = clock

    # ------------------------------------------------------------ one viewer

    async def subscribe(self, room: Room, openid: str, nickname: str = "") -> bool:
        """Remind ``openid`` when ``room`` goes live; True if new. A room that is over takes no more (300023)."""
        _check_openid(openid)
        if not isinstance(nickname, str) or len(nickname) > MAX_NICKNAME:
            raise ApiError(errors.INVALID_ARGS, f"nickname must be a string of at most {MAX_NICKNAME} characters")
        if room.live_status in FINAL_STATUSES:
            raise ApiError(errors.ROOM_STATUS_FORBIDS, f"room {room.roomid} is over ({room.live_status})")
        if await self.store.get_doc(_collection(room.roomid), openid) is not None:
            return False  # before numbering: a viewer subscribing again and again adds nothing to the log
        now = int(self.clock())
        number = await self.store.next_id(_log(room.appid))
        # The log entry first: one whose document never got written is skipped when listed.
        await self.store.append_log(_log(room.appid), number, {"id": number, "roomid": room.roomid, "openid": openid})
        subscriber = Subscriber(openid, nickname, now, follow_status(room.live_status), number)
        if not await self.store.add_doc(_collection(room.roomid), openid, _doc(subscriber)):
            return False
        await self._announce(room, openid, "subscribe", "add_follow")
        return True

    async def unsubscribe(self, room: Room, openid: str) -> bool:
        """Stop reminding ``openid``; True if it was subscribed."""
        _check_openid(openid)
        if not await self.store.delete_doc(_collection(room.roomid), openid):
            return False
        await self._announce(room, openid, "unsubscribe", "del_follow")
        return True

    async def _announce(self, room: Room, openid: str, kind: str, action: str) -> None:
        """The room channel's members hear the new count; the app's webhook gets wxalive_follow_notify."""
        count = await self.count(room)
        await self.bus.publish(room.roomid, {"type": kind, "openid": openid, "subscribers": count})
        now = self.clock()
        official = {
            "room_id": room.roomid,
            "user_openid": openid,
            "time": int(now),
            "live_status": follow_status(room.live_status),
            "action": action,
        }
        event = RoomEvent(FOLLOW_EVENT, room.appid, room.roomid, room.live_status, time=now, data=official)
        await self.webhooks.send(event)

    # ------------------------------------------------------------ lists

    async def forget_room(self, roomid: int) -> None:
        """A deleted room's subscribers go with it (get_wxa_followers already skips deleted rooms)."""
        await self.store.drop_docs(_collection(roomid))

    async def count(self, room: Room) -> int:
        return await self.store.count_docs(_collection(room.roomid))

    async def of_room(self, roomid: int) -> list[Subscriber]:
        """Every subscriber of the room, in the order they subscribed."""
        docs = await self.store.list_docs(_collection(roomid))
        return sorted((Subscriber(**doc) for doc in docs.values()), key=lambda s: s.id)

    async def page(self, room: Room, start: int, limit: int) -> tuple[list[Subscriber], int]:
        """The REST list: one page of the room's subscribers, in the order they subscribed, and their number."""
        if start < 0 or not 1 <= limit <= LIST_MAX:
            raise ApiError(errors.INVALID_ARGS, f"start must be >= 0 and limit 1-{LIST_MAX}")
        everyone = await self.of_room(room.roomid)
        return everyone[start : start + limit], len(everyone)

    # ------------------------------------------------------------ reminders

    async def room_changed(self, event: RoomEvent) -> None:
        """A ``RoomStatus.on_change`` callback: when a room goes live for the first time (102 -> 101; not
        a return from 106), send its subscribers to the app's webhook, ``NOTIFY_BATCH`` at a time."""
        if event.type != "status" or (event.previous_status, event.live_status) != (
            LiveStatus.NOT_STARTED,
            LiveStatus.LIVE,
        ):
            return
        openids = [s.openid for s in await self.of_room(event.roomid)]
        batches = [openids[i : i + NOTIFY_BATCH] for i in range(0, len(openids), NOTIFY_BATCH)]
        for number, batch in enumerate(batches, 1):
            data = {
                "room_id": event.roomid,
                "user_openid": batch,
                "batch": number,
                "batches": len(batches),
                "total": len(openids),
            }
            await self.webhooks.send(RoomEvent(NOTIFY_EVENT, event.appid, event.roomid, event.live_status, data=data))
        if openids:
            log.info("room %d is live: %d subscribers sent to app %s", event.roomid, len(openids), event.appid)

    async def push(self, app: App, room: Room, openids: list[str]) -> str:
        """push_message: send the app's webhook the openids to tell that ``room`` is live (the team's back
        end sends the WeChat messages); one room of an app per day (9410005), live rooms only (9410006).
        Returns the message_id."""
        if not 1 <= len(openids) <= PUSH_MAX:
            raise ApiError(errors.INVALID_ARGS, f"user_openid must list 1-{PUSH_MAX} openids")
        for openid in openids:
            _check_openid(openid)
        if room.live_status != LiveStatus.LIVE:
            raise ApiError(errors.PUSH_NOT_LIVE, f"room {room.roomid} is {room.live_status}, not live (101)")
        now = self.clock()
        day = datetime.fromtimestamp(now, self.zone).strftime("%Y-%m-%d")
        if not await self.store.add_doc(f"pushed:{app.appid}", day, {"roomid": room.roomid}):
            first = await self.store.get_doc(f"pushed:{app.appid}", day)
            if first is not None and first["roomid"] != room.roomid:
                raise ApiError(
                    errors.PUSHED_TODAY, f"room {first['roomid']} was pushed on {day} ({self.zone.key}); try tomorrow"
                )
        message_id = f"{room.roomid}-{await self.store.next_id(f'push_message:{app.appid}')}"
        data = {"message_id": message_id, "room_id": room.roomid, "user_openid": openids}
        await self.store.put_doc(f"push_message:{app.appid}", message_id, {**data, "time": int(now)})
        await self.webhooks.send(RoomEvent(PUSH_EVENT, app.appid, room.roomid, room.live_status, time=now, data=data))
        return message_id

    async def followers(self, app: App, limit: int, page_break: int) -> tuple[list[tuple[int, Subscriber]], int]:
        """get_wxa_followers: the app's subscribers (with their room) after ``page_break`` (0: from the
        first), in the order they subscribed, and the ``page_break`` of the next page. A page shorter than ``limit``
        is the last for now; its ``page_break`` finds the subscribers that come later."""
        if not 1 <= limit <= FOLLOWERS_MAX:
            raise ApiError(errors.INVALID_ARGS, f"limit must be 1-{FOLLOWERS_MAX}")
        if page_break < 0:
            raise ApiError(errors.INVALID_ARGS, "page_break must be one a previous page returned, or 0")
        found: list[tuple[int, Subscriber]] = []  # (room id, subscriber)
        rooms: dict[int, bool] = {}  # room id -> it still exists for this app
        position = page_break
        while len(found) < limit:
            entries = await self.store.read_log(_log(app.appid), position + 0.5, limit=limit)
            for entry in entries:
                position = entry["id"]
                roomid, openid = entry["roomid"], entry["openid"]
                if roomid not in rooms:
                    room = await self.store.get_room(roomid)
                    rooms[roomid] = room is not None and room.appid == app.appid
                doc = await self.store.get_doc(_collection(roomid), openid) if rooms[roomid] else None
                if doc is not None and doc["id"] == position:
                    found.append((roomid, Subscriber(**doc)))
                    if len(found) == limit:
                        break
            if len(entries) < limit:
                break
        return found, position


def _check_openid(openid: str) -> None:
    if not isinstance(openid, str) or OPENID.fullmatch(openid) is None:
        raise ApiError(errors.INVALID_ARGS, "openid must be 1-64 letters, digits, '_' or '-' (a WeChat openid)")


def _collection(roomid: int) -> str:
    return f"subscribers:{roomid}"


def _log(appid: str) -> str:
    return f"followers:{appid}"


def _doc(subscriber: Subscriber) -> dict[str, Any]:
    return {**subscriber.to_json(), "id": subscriber.id}
