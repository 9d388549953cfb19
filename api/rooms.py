"""The room service: every business rule of apps, tokens, rooms and their live status.

The WeChat-compatible routes and the REST routes both call this; neither holds a rule of its own.
Status changes follow the table of ``api.transitions``; they are made with the store's atomic
``transition`` and published as RoomEvents, so every node (and every SSE/WebSocket client) sees them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from api import errors, validation
from api.errors import ApiError
from api.models import ACTIVE_STATUSES, FINAL_STATUSES, App, LiveStatus, Media, Replay, Room, RoomEvent, Token
from api.signing import sign_query, verify_query
from api.store.base import RoomStore
from api.transitions import Event, legal_from, next_status, sources
from relay.access import AccessRequest, Decision
from relay.hub import StreamEvent

log = logging.getLogger("minilive.rooms")

STREAM_NAME = re.compile(r"^(?P<appid>[A-Za-z0-9_]+)-(?P<roomid>[0-9]{1,12})$")
PLUGIN_APPID = "wx2b03c6e691cd7370"
CUSTOM_PARAMS_MAX = 600
DAY = 86400


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


# What editroom may change (the status machine's fields only change through transitions).
EDITABLE_FIELDS = [
    "name",
    "anchor_name",
    "anchor_wechat",
    "start_time",
    "end_time",
    "cover_img",
    "share_img",
    "feeds_img",
    "close_like",
    "close_goods",
    "close_comment",
    "close_share",
    "close_replay",
    "close_kf",
    "is_feeds_public",
]


@dataclass(slots=True)
class Urls:
    rtmp_base: str  # rtmp://host[:port]
    http_base: str  # http(s)://host[:port], no trailing slash


class MediaControl(Protocol):
    """What the service may do to a room's stream on this node (injected by the composition root)."""

    def kick(self, stream: str, reason: str) -> bool: ...

    def end(self, stream: str, reason: str) -> bool: ...


# The admin actions of the REST API and the events they report.
ADMIN_ACTIONS = {"pause": Event.PAUSE, "resume": Event.RESUME, "ban": Event.BAN, "end": Event.END}


def _records(room: Room, to: int, now: float) -> dict[str, Any]:
    """What a room records about entering status ``to``, besides the status and its reason."""
    if to == LiveStatus.LIVE:
        if room.live_status == LiveStatus.NOT_STARTED:  # a new live session
            return {
                "live_started_at": room.live_started_at or now,
                "session_started_at": now,
                "live_sessions": room.live_sessions + 1,
                "interrupted_at": 0.0,
            }
        return {"interrupted_at": 0.0}
    if to == LiveStatus.INTERRUPTED:
        return {"interrupted_at": now}
    if to in FINAL_STATUSES:
        return {"ended_at": now}
    return {}


def parse_stream(name: str) -> tuple[str, int] | None:
    match = STREAM_NAME.match(name)
    if match is None:
        return None
    return match["appid"], int(match["roomid"])


def iso_time(ts: float) -> str:
    """Zone-less ISO-8601 as the official get_replay returns it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts))


class RoomService:
    def __init__(
        self,
        store: RoomStore,
        settings: RoomSettings,
        urls: Urls,
        media: MediaControl | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.urls = urls
        self.media = media
        self.clock = clock
        # Called with each status change this node made (webhooks are sent once, by that node).
        self.on_change: list[Callable[[RoomEvent], Awaitable[None]]] = []
        self._stream_events: asyncio.Queue[StreamEvent] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if not self.store.shared:
            # After a crash, rooms that were live have no publisher: they wait for the anchor (106)
            # like any other interruption, and the usual grace applies.
            for room in await self.store.rooms_in_status(legal_from(Event.SERVER_RESTARTED)):
                await self.apply(room, Event.SERVER_RESTARTED)
        self.store.subscribe(self._on_room_event)
        self._tasks = [
            asyncio.create_task(self._consume_stream_events()),
            asyncio.create_task(self._sweeper()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------ apps and tokens

    async def create_app(self, name: str) -> App:
        app = App(
            appid="wx" + secrets.token_hex(8),
            secret=secrets.token_hex(16),
            name=name,
            push_key=secrets.token_hex(16),
        )
        await self.store.put_app(app)
        return app

    async def rotate_secret(self, appid: str) -> App:
        app = await self.store.get_app(appid)
        if app is None:
            raise ApiError(errors.INVALID_APPID, f"no app {appid}")
        app.secret = secrets.token_hex(16)
        await self.store.put_app(app)
        return app

    async def update_app(self, app: App, changes: dict[str, Any]) -> App:
        """Set an app's ``webhook_url`` ("" turns webhooks off), ``play_key`` ("" turns play URL
        signing off) or ``replay_retention_days``."""
        unknown = changes.keys() - {"webhook_url", "play_key", "replay_retention_days"}
        if unknown:
            raise ApiError(errors.INVALID_ARGS, f"{', '.join(sorted(unknown))}: not a setting an app may change")
        f = validation.Fields(changes)
        current = await self.store.get_app(app.appid) or app
        if f.has("webhook_url"):
            url = f.string("webhook_url")
            parts = urlsplit(url)
            if url and (parts.scheme not in ("http", "https") or not parts.netloc):
                raise ApiError(errors.INVALID_ARGS, f"webhook_url {url!r} is not an http(s) URL")
            current.webhook_url = url
        if f.has("play_key"):
            current.play_key = f.string("play_key")
        if f.has("replay_retention_days"):
            days = f.integer("replay_retention_days")
            if days < 1:
                raise ApiError(errors.INVALID_ARGS, "replay_retention_days must be at least 1")
            current.replay_retention_days = days
        await self.store.put_app(current)
        return current

    async def issue_token(self, appid: str, secret: str) -> Token:
        if not appid:
            raise ApiError(errors.APPID_MISSING)
        if not secret:
            raise ApiError(errors.SECRET_MISSING)
        app = await self.store.get_app(appid)
        if app is None:
            raise ApiError(errors.INVALID_APPID, f"no app {appid}")
        if not secrets.compare_digest(app.secret, secret):
            raise ApiError(errors.INVALID_SECRET)
        token = Token(secrets.token_urlsafe(48), appid, self.clock() + self.settings.token_ttl_seconds)
        await self.store.put_token(token)
        return token

    async def app_for_token(self, token: str) -> App:
        if not token:
            raise ApiError(errors.ACCESS_TOKEN_MISSING)
        record = await self.store.get_token(token)
        if record is None or record.expires_at <= self.clock():
            raise ApiError(errors.INVALID_CREDENTIAL)
        app = await self.store.get_app(record.appid)
        if app is None:
            raise ApiError(errors.INVALID_CREDENTIAL)
        return app

    async def quota(self, app: App, api: str) -> None:
        """Count one call of ``api`` against the app's daily quota (45009 when it is used up)."""
        quotas = self.settings.quotas
        limit = quotas.get(api, quotas.get("default", 10000))
        day = time.strftime("%Y%m%d", time.localtime(self.clock()))
        if not await self.store.incr_counter(f"quota:{app.appid}:{api}:{day}", limit, 2 * DAY):
            raise ApiError(errors.QUOTA_EXCEEDED, f"{api} may be called {limit} times a day")

    # ------------------------------------------------------------ media

    async def add_media(self, app: App, media: Media) -> None:
        await self.store.put_media(media)

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

    def media_url(self, media_id: str) -> str:
        return f"{self.urls.http_base}/media/{media_id}" if media_id else ""

    # ------------------------------------------------------------ rooms

    async def room(self, app: App, roomid: int) -> Room:
        room = await self.store.get_room(roomid)
        if room is None or room.appid != app.appid:
            raise ApiError(errors.ROOM_NOT_FOUND, f"room {roomid} does not exist for this app")
        return room

    async def create_room(self, app: App, body: dict[str, Any]) -> Room:
        f = validation.Fields(body)
        name = f.string("name")
        validation.check_name(name)
        anchor_name = f.string("anchorName")
        validation.check_anchor_name(anchor_name)
        start, end = f.integer("startTime"), f.integer("endTime")
        validation.check_times(start, end, self.clock(), self.settings.times)
        live_type = f.integer("type")
        if live_type not in (0, 1):
            raise ApiError(errors.INVALID_ARGS, "type must be 1 (push) or 0 (phone)")
        room = Room(
            roomid=0,
            appid=app.appid,
            name=name,
            cover_img=await self._adopt_media(app, f.string("coverImg"), errors.COVER_INVALID),
            share_img=await self._adopt_media(app, f.string("shareImg"), errors.SHARE_IMG_INVALID),
            feeds_img=await self._adopt_media(app, f.string("feedsImg"), errors.FEEDS_IMG_INVALID),
            start_time=start,
            end_time=end,
            anchor_name=anchor_name,
            anchor_wechat=f.string("anchorWechat"),
            live_type=live_type,
            sub_anchor_wechat=f.string("subAnchorWechat", required=False),
            creater_wechat=f.string("createrWechat", required=False),
            is_feeds_public=f.flag("isFeedsPublic", required=False, default=1),
            close_like=f.flag("closeLike"),
            close_goods=f.flag("closeGoods"),
            close_comment=f.flag("closeComment"),
            close_replay=f.flag("closeReplay", required=False, default=1),
            close_share=f.flag("closeShare", required=False, default=0),
            close_kf=f.flag("closeKf", required=False, default=1),
        )
        if not room.anchor_wechat:
            raise ApiError(errors.INVALID_ARGS, "anchorWechat is required")
        room = await self.store.create_room(room)
        log.info("room %d created for app %s: %r", room.roomid, app.appid, room.name)
        return room

    async def edit_room(self, app: App, body: dict[str, Any]) -> Room:
        f = validation.Fields(body)
        room = await self.room(app, f.room_id("id", "roomId"))
        status = room.live_status
        if status in FINAL_STATUSES:
            raise ApiError(errors.ROOM_STATUS_FORBIDS, f"room {room.roomid} has ended ({status}); it cannot be edited")
        live = status in ACTIVE_STATUSES
        name = f.string("name")
        validation.check_name(name)
        anchor_name = f.string("anchorName")
        validation.check_anchor_name(anchor_name)
        start, end = f.integer("startTime"), f.integer("endTime")
        if live and start != room.start_time:
            raise ApiError(errors.ROOM_STATUS_FORBIDS, "startTime cannot change once the room has gone live")
        validation.check_times(start, end, self.clock(), self.settings.times, check_lead=start != room.start_time)
        flags = {
            "close_like": f.flag("closeLike"),
            "close_goods": f.flag("closeGoods"),
            "close_comment": f.flag("closeComment"),
            "close_share": f.flag("closeShare", required=False, default=room.close_share),
            "close_replay": f.flag("closeReplay", required=False, default=room.close_replay),
            "close_kf": f.flag("closeKf", required=False, default=room.close_kf),
            "is_feeds_public": f.flag("isFeedsPublic", required=False, default=room.is_feeds_public),
        }
        if live:
            # Official rule: likes, goods and comments closed at creation cannot be opened once live,
            # and sharing cannot change at all.
            for key in ("close_like", "close_goods", "close_comment"):
                if getattr(room, key) == 1 and flags[key] == 0:
                    raise ApiError(errors.ROOM_STATUS_FORBIDS, f"{key} cannot be re-enabled once the room is live")
            if flags["close_share"] != room.close_share:
                raise ApiError(errors.ROOM_STATUS_FORBIDS, "closeShare cannot change once the room is live")
        room.name = name
        room.anchor_name = anchor_name
        room.anchor_wechat = f.string("anchorWechat")
        room.start_time, room.end_time = start, end
        room.cover_img = await self._adopt_media(app, f.string("coverImg"), errors.COVER_INVALID, room.cover_img)
        room.share_img = await self._adopt_media(app, f.string("shareImg"), errors.SHARE_IMG_INVALID, room.share_img)
        room.feeds_img = await self._adopt_media(app, f.string("feedsImg"), errors.FEEDS_IMG_INVALID, room.feeds_img)
        for key, value in flags.items():
            setattr(room, key, value)
        return await self._save(room, EDITABLE_FIELDS)

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

    async def list_rooms(self, app: App, start: int, limit: int) -> tuple[list[Room], int]:
        if start < 0 or limit <= 0:
            raise ApiError(errors.INVALID_ARGS, "start must be >= 0 and limit > 0")
        limit = min(limit, self.settings.list_limit)
        return await self.store.list_rooms(app.appid, start, limit)

    async def list_replays(self, app: App, roomid: int, start: int, limit: int) -> tuple[list[Replay], int]:
        """One page of a room's ready replays, oldest first (get_replay), and their number."""
        if start < 0 or limit <= 0:
            raise ApiError(errors.INVALID_ARGS, "start must be >= 0 and limit > 0")
        await self.room(app, roomid)
        ready = [r for r in await self.store.list_replays(roomid) if r.status == "ready"]
        return ready[start : start + min(limit, self.settings.list_limit)], len(ready)

    async def set_flag(self, app: App, roomid: int, key: str, value: int) -> Room:
        """updatereplay / updatekf / updatefeedpublic / updatecomment: switches allowed at any time
        before the room is over (replay and customer service may be opened during the live)."""
        if value not in (0, 1):
            raise ApiError(errors.INVALID_ARGS, "the switch must be 0 or 1")
        room = await self.room(app, roomid)
        if room.live_status in FINAL_STATUSES:
            raise ApiError(errors.ROOM_STATUS_FORBIDS, f"room {roomid} has ended ({room.live_status})")
        setattr(room, key, value)
        return await self._save(room, [key])

    async def add_goods(self, app: App, roomid: int, goods_ids: list[int]) -> Room:
        room = await self.room(app, roomid)
        if room.live_status in FINAL_STATUSES:
            raise ApiError(errors.ROOM_STATUS_FORBIDS, f"room {roomid} has ended ({room.live_status})")
        known = {g["goods_id"] for g in room.goods}
        for goods_id in goods_ids:
            if goods_id not in known:
                room.goods.append(
                    {
                        "goods_id": goods_id,
                        "name": "",
                        "cover_img": "",
                        "url": "",
                        "price": 0,
                        "price2": 0,
                        "price_type": 1,
                        "third_party_appid": "",
                    }
                )
                known.add(goods_id)
        return await self._save(room, ["goods"])

    # assistants and the sub-anchor are stored and listed; WeChat's real-name checks do not apply

    async def add_assistants(self, app: App, roomid: int, users: list[dict[str, Any]]) -> Room:
        room = await self.room(app, roomid)
        names = {a["username"] for a in room.assistants}
        for user in users:
            username = str(user.get("username") or "")
            if not username:
                raise ApiError(errors.INVALID_ARGS, "every user needs a username")
            if username in names:
                continue
            if len(room.assistants) >= self.settings.max_assistants:
                raise ApiError(errors.INVALID_ARGS, f"a room has at most {self.settings.max_assistants} assistants")
            room.assistants.append(
                {
                    "username": username,
                    "nickname": str(user.get("nickname") or ""),
                    "timestamp": int(self.clock()),
                    "headimg": "",
                    "alias": username,
                    "openid": "",
                }
            )
            names.add(username)
        return await self._save(room, ["assistants"])

    async def modify_assistant(self, app: App, roomid: int, username: str, nickname: str) -> Room:
        room = await self.room(app, roomid)
        for assistant in room.assistants:
            if assistant["username"] == username:
                assistant["nickname"] = nickname
                return await self._save(room, ["assistants"])
        raise ApiError(errors.INVALID_ARGS, f"{username} is not an assistant of room {roomid}")

    async def remove_assistant(self, app: App, roomid: int, username: str) -> Room:
        room = await self.room(app, roomid)
        kept = [a for a in room.assistants if a["username"] != username]
        if len(kept) == len(room.assistants):
            raise ApiError(errors.INVALID_ARGS, f"{username} is not an assistant of room {roomid}")
        room.assistants = kept
        return await self._save(room, ["assistants"])

    async def set_sub_anchor(self, app: App, roomid: int, username: str) -> Room:
        room = await self.room(app, roomid)
        if username and username == room.anchor_wechat:
            raise ApiError(500005, "the sub-anchor cannot be the anchor")
        room.sub_anchor_wechat = username
        return await self._save(room, ["sub_anchor_wechat"])

    # ------------------------------------------------------------ URLs

    def push_url(self, app: App, room: Room) -> str:
        if room.live_status in FINAL_STATUSES:
            raise ApiError(
                errors.ROOM_STATUS_FORBIDS, f"room {room.roomid} is over ({room.live_status}): it cannot go live again"
            )
        expires = max(room.end_time, int(self.clock())) + self.settings.push_url_margin_seconds
        name = room.stream_name
        return f"{self.urls.rtmp_base}/{self.settings.rtmp_app}/{name}?{sign_query(app.push_key, name, expires)}"

    def play_urls(self, app: App, room: Room) -> dict[str, str]:
        name = room.stream_name
        query = ""
        if app.play_key:
            expires = max(room.end_time, int(self.clock())) + self.settings.push_url_margin_seconds
            query = "?" + sign_query(app.play_key, name, expires)
        base = f"{self.urls.http_base}/{self.settings.rtmp_app}/{name}"
        return {
            "rtmp": f"{self.urls.rtmp_base}/{self.settings.rtmp_app}/{name}{query}",
            "flv": f"{base}.flv{query}",
            "hls": f"{base}/index.m3u8{query}",
        }

    def replay_urls(self, replay: Replay) -> dict[str, str]:
        """Where a ready replay's files are served (``/replays/`` + its ``path``)."""
        if replay.status != "ready" or not replay.path:
            return {}
        base = f"{self.urls.http_base}/replays/{replay.path.strip('/')}"
        return {"hls": f"{base}/index.m3u8", "mp4": f"{base}/replay.mp4", "cover": f"{base}/cover.jpg"}

    @staticmethod
    def page_path(roomid: int, custom_params: str = "") -> str:
        """The plugin page of a room; ``custom_params`` as given (JSON text), URL-encoded here."""
        path = f"plugin-private://{PLUGIN_APPID}/pages/live-player-plugin?room_id={roomid}"
        if custom_params:
            # The plugin keeps at most 600 characters of custom_params and drops the rest.
            path += f"&custom_params={quote(custom_params[:CUSTOM_PARAMS_MAX], safe='')}"
        return path

    # ------------------------------------------------------------ access decisions

    async def authorize_publish(self, request: AccessRequest) -> Decision:
        if request.app != self.settings.rtmp_app:
            return Decision.deny(f"rooms publish under app '{self.settings.rtmp_app}'")
        parsed = parse_stream(request.name)
        if parsed is None:
            return Decision.deny(
                f"stream name {request.name!r} is not APPID-ROOMID: push to the URL that getpushurl returns"
            )
        appid, roomid = parsed
        app = await self.store.get_app(appid)
        room = await self.store.get_room(roomid)
        if app is None or room is None or room.appid != appid:
            return Decision.deny(f"room {roomid} of app {appid} does not exist")
        problem = verify_query(app.push_key, request.name, request.query, self.clock())
        if problem:
            return Decision.deny(problem)
        now = self.clock()
        status = room.live_status
        expiry = next_status(status, Event.END_TIME_PASSED)
        if expiry is not None and now >= room.end_time:
            await self.apply(room, Event.END_TIME_PASSED)
            status = expiry.to
        refusal = {
            LiveStatus.ENDED: f"room {roomid} has ended (103): create a new room to go live again",
            LiveStatus.BANNED: f"room {roomid} is banned (104)",
            LiveStatus.PAUSED: f"room {roomid} is paused (105): resume it before pushing",
            LiveStatus.EXPIRED: f"room {roomid} expired (107): its endTime passed before it went live",
        }.get(status)
        if refusal:
            return Decision.deny(refusal)
        early = self.settings.publish_early_minutes
        if status == LiveStatus.NOT_STARTED and early is not None and now < room.start_time - early * 60:
            return Decision.deny(f"room {roomid} may go live from {early:g} minutes before its startTime")
        if not await self.store.claim_live_slot(appid, roomid, self.settings.max_live_rooms):
            return Decision.deny(f"app {appid} already has {self.settings.max_live_rooms} rooms live")
        if status == LiveStatus.NOT_STARTED:
            day = time.strftime("%Y%m%d", time.localtime(now))
            if not await self.store.incr_counter(f"lives:{appid}:{day}", self.settings.max_lives_per_day, 2 * DAY):
                await self.store.release_live_slot(appid, roomid)
                return Decision.deny(f"app {appid} started {self.settings.max_lives_per_day} lives today")
        return Decision.allow()

    def authorize_play(self, app: App, request: AccessRequest) -> Decision:
        """Playing a stream of ``app``: open, or a signed URL when the app has a play key."""
        if not app.play_key:
            return Decision.allow()
        problem = verify_query(app.play_key, request.name, request.query, self.clock())
        return Decision.deny(problem) if problem else Decision.allow()

    # ------------------------------------------------------------ status machine

    def stream_event(self, event: StreamEvent) -> None:
        """Hub listener: queue the event so that a room's events are handled in order."""
        if event.app == self.settings.rtmp_app and parse_stream(event.name):
            self._stream_events.put_nowait(event)

    async def _consume_stream_events(self) -> None:
        while True:
            event = await self._stream_events.get()
            try:
                await self._handle_stream_event(event)
            except Exception:
                log.exception("room status update failed for stream event %s", event)

    async def _handle_stream_event(self, event: StreamEvent) -> None:
        parsed = parse_stream(event.name)
        assert parsed is not None
        room = await self.store.get_room(parsed[1])
        if room is None or room.appid != parsed[0]:
            return
        if event.type == "publish":
            if next_status(room.live_status, Event.PUBLISHED) is not None:
                await self.apply(room, Event.PUBLISHED)
            elif room.live_status != LiveStatus.LIVE and self.media is not None:
                # Raced with a pause, ban or end: the stream must not go on.
                self.media.kick(room.stream_name, f"room is {room.live_status}")
        elif event.type == "unpublish":
            await self.apply(room, Event.PUBLISHER_GONE, event.info.get("reason", ""))

    async def apply(self, room: Room, event: Event, detail: str = "") -> Room | None:
        """Make ``event`` happen to ``room`` as the transition table says, atomically in the store, and
        announce the change; None if the table refuses the event in the room's (current) status."""
        transition = next_status(room.live_status, event)
        if transition is None:
            return None
        to, reason, now = transition.to, transition.because(detail), self.clock()
        changes = {**_records(room, to, now), "updated_at": now, "status_reason": reason}
        updated = await self.store.transition(room.roomid, sources(event, transition), to, changes)
        if updated is None:
            return None
        if to in FINAL_STATUSES:
            await self.store.release_live_slot(room.appid, room.roomid)
        log.info("room %d (%s): %d -> %d, %s", room.roomid, room.appid, room.live_status, to, reason)
        event = RoomEvent("status", room.appid, room.roomid, to, room.live_status, reason)
        await self.store.publish_event(event)
        for callback in self.on_change:
            try:
                await callback(event)
            except Exception:
                log.exception("status change callback failed")
        return updated

    def _on_room_event(self, event: RoomEvent) -> None:
        """On every node: a room that may not be live loses its publisher here."""
        if self.media is None or event.type != "status":
            return
        stream = f"{event.appid}-{event.roomid}"
        if event.live_status == LiveStatus.PAUSED:
            self.media.kick(stream, "the room was paused")
        elif event.live_status in FINAL_STATUSES:
            self.media.end(stream, f"the room is over ({event.live_status}: {event.reason})")

    async def admin_action(self, app: App, roomid: int, action: str) -> Room:
        event = ADMIN_ACTIONS.get(action)
        if event is None:
            raise ApiError(errors.INVALID_ARGS, f"unknown action {action!r}: {', '.join(ADMIN_ACTIONS)}")
        room = await self.room(app, roomid)
        updated = await self.apply(room, event)
        if updated is None:
            raise ApiError(errors.ROOM_STATUS_FORBIDS, f"room {roomid} is {room.live_status}; it cannot be {action}d")
        return updated

    async def sweep(self) -> None:
        """Time-driven transitions: expiry (107), the end of the 106 grace and of the max duration (103)."""
        now = self.clock()
        s = self.settings
        for room in await self.store.rooms_in_status(legal_from(Event.END_TIME_PASSED)):
            if now >= room.end_time:
                await self.apply(room, Event.END_TIME_PASSED)
        for room in await self.store.rooms_in_status(legal_from(Event.MAX_DURATION_REACHED)):
            if room.session_started_at and now - room.session_started_at >= s.max_live_seconds:
                await self.apply(room, Event.MAX_DURATION_REACHED, f"{s.max_live_seconds / 3600:g} h")
            elif (
                next_status(room.live_status, Event.INTERRUPTION_TIMED_OUT) is not None
                and now - room.interrupted_at >= s.interrupt_grace_seconds
            ):
                await self.apply(room, Event.INTERRUPTION_TIMED_OUT, f"{s.interrupt_grace_seconds / 60:g} min")

    async def _sweeper(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("room sweep failed")
            await asyncio.sleep(self.settings.sweep_interval_seconds)
