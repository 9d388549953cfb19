"""The room channel: ``GET /api/v1/rooms/{id}/ws?token=VIEWER_TOKEN``, a WebSocket per viewer.

Members receive the room's status and audience (``api.status.RoomFeed``) and every room bus message
(comments, likes totals, goods pushed, on-sale changes, moderation), and send comments, likes,
subscriptions and (admins) moderation; see docs/asyncapi.yaml. A refused action is answered
``{"type": "error", "code", "message"}`` to its sender alone.

Fan-out is cheap and bounded: the room's members on this node are ONE listener of the feed
(``ChannelRoom``); each message is encoded once, as JSON and as one WebSocket frame, and what arrives
within a window (``merge_ms``, longer for big rooms) is written to each member's transport in one
write. A member whose unsent bytes pass ``member_buffer_bytes`` is disconnected (it reconnects, and
can read what it missed from the replay's comments): healthy members never wait for it and never
lose a message because of it. Members are read one message at a time, so a flooding client waits
for its own answers; frames above ``max_frame_bytes`` close its socket before they are buffered, and
the heartbeat ends abandoned ones.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from api import errors, json_body, keys, viewer_tokens, webhook_targets
from api.comments import (
    BAD_JSON,
    BAD_REQUEST,
    READ_ONLY,
    TOO_BIG,
    UNAVAILABLE,
    UNKNOWN_TYPE,
    ChannelSettings,
    Comments,
    Refused,
)
from api.errors import ApiError, json_error
from api.models import App, Room
from api.status import STATUS, VIEWERS, RoomFeed, news, status_message
from api.store.base import RoomStore
from api.viewer_tokens import ViewerIdentity
from relay.http.raw import check_websocket_handshake

if TYPE_CHECKING:
    from api.subscribers import Subscribers

log = logging.getLogger("minilive.channel")

Message = dict[str, Any]
# Messages held for a member until its first message is sent; past this it is too far behind.
MAX_EARLY = 256
REFUSALS_WINDOW_SECONDS = 10.0
ROOM_CACHE_SECONDS = 1.0
WRITE_SLICE = 256  # members written per turn of the event loop  # likes read the room's closeLike at most this stale


def encode(message: Message) -> bytes:
    """One unmasked WebSocket text frame (RFC 6455 §5.2) holding ``message`` as compact JSON."""
    payload = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


class Member:
    """One WebSocket client of a room on this node. Frames are written straight to its transport: the
    response is not compressed, so aiohttp writes its own frames (pongs, close) whole, in one call."""

    __slots__ = ("_last", "buffer_limit", "early", "refusals", "transport", "viewer")

    def __init__(self, transport: asyncio.Transport, viewer: ViewerIdentity | None, buffer_limit: int) -> None:
        self.transport = transport
        self.viewer = viewer
        self.buffer_limit = buffer_limit
        self._last: dict[str, Any] = {}
        self.early: list[tuple[Message | None, bytes]] | None = []  # None once the first message is out
        self.refusals: list[float] = []

    def send(self, frame: bytes, message: Message | None = None) -> None:
        """Write ``frame``; ``message`` is given for status and viewer counts, sent only if news."""
        if self.early is not None:
            if len(self.early) >= MAX_EARLY:
                self.drop()
            self.early.append((message, frame))
            return
        if message is not None and not news(self._last, message):
            return
        transport = self.transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size() > self.buffer_limit:
            self.drop()
            return
        transport.write(frame)

    def start(self, first: Message) -> None:
        """Send the first message (the status as it is now), then what arrived meanwhile."""
        early, self.early = self.early or [], None
        self.send(encode(first), first)
        for message, frame in early:
            self.send(frame, message)

    def drop(self) -> None:
        log.info("room channel member %s dropped: too slow to follow the room", self.openid)
        self.transport.abort()

    @property
    def openid(self) -> str:
        return self.viewer.openid if self.viewer else "(anonymous)"


class ChannelRoom:
    """A room's channel members on this node: one listener of the feed."""

    def __init__(self, roomid: int, settings: ChannelSettings) -> None:
        self.roomid = roomid
        self.settings = settings
        self.members: set[Member] = set()
        self._batch: list[bytes] = []
        self._flush: asyncio.TimerHandle | None = None
        self.room: tuple[float, Room] | None = None  # (read at, room): for likes

    @property
    def size(self) -> int:
        return len(self.members)

    def alive(self) -> bool:
        return True  # each member's own reader notices its departure

    def put(self, message: Message | None) -> None:
        if message is None:
            self.close()
        elif message.get("type") in (STATUS, VIEWERS):
            frame = encode(message)
            for member in list(self.members):
                member.send(frame, message)
        else:
            self._batch.append(encode(message))
            if self._flush is None:
                self._flush = asyncio.get_running_loop().call_later(self.merge_seconds(), self.flush)

    def merge_seconds(self) -> float:
        s = self.settings
        return min(s.max_merge_ms, s.merge_ms + s.merge_ms_per_1000_members * len(self.members) / 1000) / 1000

    def flush(self) -> None:
        self._flush = None
        data = b"".join(self._batch)
        self._batch.clear()
        # Member.send inlined: this loop runs for every member of a big room many times a second. A
        # write is a system call (15 us on loopback, measured): 5000 members take about 80 ms, so big
        # rooms merge longer windows (merge_seconds) and need more nodes (bench/RESULTS.md, issue 14).
        for member in list(self.members):
            transport = member.transport
            if member.early is not None or transport.is_closing():
                member.send(data)
            elif transport.get_write_buffer_size() > member.buffer_limit:
                member.drop()
            else:
                transport.write(data)

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
            data = b"".join(self._batch)
            for member in list(self.members):
                member.send(data)
        for member in list(self.members):
            member.transport.close()


class Channel:
    """The room channel on this node: its members by room, and the WebSocket they join with."""

    def __init__(
        self,
        store: RoomStore,
        feed: RoomFeed,
        comments: Comments,
        settings: ChannelSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.feed = feed
        self.comments = comments
        self.settings = settings
        self.clock = clock
        self.rooms: dict[int, ChannelRoom] = {}

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/v1/rooms/{id:[0-9]+}/ws", self.websocket)]

    @property
    def members(self) -> int:
        return sum(room.size for room in self.rooms.values())

    async def _viewer(self, request: web.Request, room: Room) -> tuple[App, ViewerIdentity | None]:
        app = await self.store.get_app(room.appid)
        if app is None:
            raise ApiError(errors.ROOM_NOT_FOUND, f"room {room.roomid} has no app")
        token = request.query.get("token", "")
        if token:
            try:
                return app, viewer_tokens.verify(app.secret, token, room.roomid, self.clock())
            except viewer_tokens.TokenRefused as exc:
                raise ApiError(errors.INVALID_CREDENTIAL, str(exc)) from None
        if not app.channel_anonymous:
            raise ApiError(
                errors.INVALID_CREDENTIAL,
                "this app's room channel needs a viewer token: ?token= from POST /api/v1/rooms/{id}/viewer_tokens",
            )
        return app, None

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        roomid = int(request.match_info["id"])
        room = await self.store.get_room(roomid)
        try:
            if room is None:
                raise ApiError(errors.ROOM_NOT_FOUND, f"room {roomid} does not exist")
            app, viewer = await self._viewer(request, room)
        except ApiError as exc:
            return json_error(exc)
        check_websocket_handshake(request)
        ws = web.WebSocketResponse(
            heartbeat=self.settings.heartbeat_seconds, max_msg_size=self.settings.max_frame_bytes, compress=False
        )
        await ws.prepare(request)
        transport = request.transport
        if transport is None:
            return ws
        member = Member(transport, viewer, self.settings.member_buffer_bytes)
        subscribers = request.app.get(keys.SUBSCRIBERS)
        channel_room = self._join(room, member)
        try:
            # Read the room again now that its messages reach the member: no change falls in between.
            room = await self.store.get_room(roomid) or room
            member.start(status_message(room, self.feed.viewers(room.stream_name)))
            total = await self.comments.likes_total(roomid)
            if total:
                member.send(encode({"type": "likes", "roomid": roomid, "total": total}))
            async for frame in ws:
                if frame.type is WSMsgType.TEXT:
                    reply = await self._handle(channel_room, member, app, subscribers, frame.data)
                elif frame.type is WSMsgType.BINARY:
                    reply = Refused(BAD_JSON, "send JSON text frames").reply()
                else:
                    continue
                if reply is not None:
                    member.send(encode(reply))
                    if reply["type"] == "error" and self._flooding(member):
                        await ws.close(code=1008, message=b"too many refused messages")
        except (ConnectionResetError, ApiError):
            pass
        finally:
            self._leave(channel_room, member)
            await ws.close()
        return ws

    def _join(self, room: Room, member: Member) -> ChannelRoom:
        channel_room = self.rooms.get(room.roomid)
        if channel_room is None:
            channel_room = self.rooms[room.roomid] = ChannelRoom(room.roomid, self.settings)
            self.feed.add(room, channel_room)
        channel_room.members.add(member)
        return channel_room

    def _leave(self, channel_room: ChannelRoom, member: Member) -> None:
        channel_room.members.discard(member)
        if not channel_room.members and self.rooms.get(channel_room.roomid) is channel_room:
            del self.rooms[channel_room.roomid]
            self.feed.remove(channel_room.roomid, channel_room)
            self.comments.totals.pop(channel_room.roomid, None)  # read again by the next member

    def _flooding(self, member: Member) -> bool:
        now = time.monotonic()
        member.refusals = [t for t in member.refusals if t > now - REFUSALS_WINDOW_SECONDS]
        member.refusals.append(now)
        return len(member.refusals) > self.settings.max_refusals

    async def _handle(
        self, channel_room: ChannelRoom, member: Member, app: App, subscribers: Subscribers | None, data: str
    ) -> Message | None:
        """One client message; the reply to its sender, if any."""
        try:
            if len(data.encode()) > self.settings.max_message_bytes:
                raise Refused(TOO_BIG, f"messages may have at most {self.settings.max_message_bytes} bytes")
            try:
                message = json_body.loads(data, self.settings.max_message_bytes)
            except json_body.JsonRefused:
                raise Refused(BAD_JSON, 'not JSON: send an object such as {"type": "comment", "text": "hi"}') from None
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                raise Refused(BAD_JSON, 'a message is a JSON object with a "type"')
            return await self._act(channel_room, member, app, subscribers, message)
        except Refused as refused:
            return refused.reply()
        except ApiError as exc:
            return Refused(BAD_REQUEST if exc.errcode != errors.SYSTEM_ERROR else UNAVAILABLE, exc.errmsg).reply()
        except Exception:
            log.exception("room %d: a member's message failed", channel_room.roomid)
            return Refused(UNAVAILABLE, "the server could not do this now: try again").reply()

    async def _act(
        self, channel_room: ChannelRoom, member: Member, app: App, subscribers: Subscribers | None, message: Message
    ) -> Message | None:
        kind = message["type"]
        if kind not in ACTIONS:
            raise Refused(UNKNOWN_TYPE, f"unknown type {kind[:40]!r}: one of {', '.join(ACTIONS)}")
        viewer = member.viewer
        if viewer is None:
            raise Refused(READ_ONLY, "joined without a viewer token: this connection may only receive")
        roomid = channel_room.roomid
        if kind == "like":
            room = await self._cached_room(channel_room)
            self.comments.like(room, viewer, message.get("count", 1))
            return None
        # Read together: each read waits for a turn of a loop that may be busy writing to members.
        room, fresh_app = await asyncio.gather(self.store.get_room(roomid), self.store.get_app(app.appid))
        if room is None:
            raise Refused(UNAVAILABLE, f"room {roomid} no longer exists")
        if kind == "comment":
            await self.comments.post(room, fresh_app or app, viewer, message.get("text"))
            return None
        if kind == "delete_comment":
            await self.comments.delete(room, message.get("id"), viewer)
            return None
        if kind == "mute":
            await self.comments.mute(room, message.get("openid"), message.get("muted", True), viewer)
            return None
        if subscribers is None:
            raise Refused(UNAVAILABLE, "subscriptions are not available on this server")
        if kind == "subscribe":
            changed = await subscribers.subscribe(room, viewer.openid, viewer.nickname)
        else:
            changed = await subscribers.unsubscribe(room, viewer.openid)
        return {"type": "subscription", "roomid": roomid, "subscribed": kind == "subscribe", "changed": changed}

    async def _cached_room(self, channel_room: ChannelRoom) -> Room:
        now = time.monotonic()
        if channel_room.room is None or channel_room.room[0] < now - ROOM_CACHE_SECONDS:
            room = await self.store.get_room(channel_room.roomid)
            if room is None:
                raise Refused(UNAVAILABLE, f"room {channel_room.roomid} no longer exists")
            channel_room.room = (now, room)
        return channel_room.room[1]


ACTIONS = ("comment", "like", "subscribe", "unsubscribe", "delete_comment", "mute")


MAX_OPENID_CHARS = 128
MAX_NICKNAME_CHARS = 64
MAX_WORDS = 1000


async def viewer_token(
    store: RoomStore, settings: ChannelSettings, app: App, roomid: int, body: dict[str, Any], now: float
) -> str:
    """A viewer token of ``app``'s room for the viewer ``body`` names (openid, nickname, role)."""
    room = await store.get_room(roomid)
    if room is None or room.appid != app.appid:
        raise ApiError(errors.ROOM_NOT_FOUND, f"room {roomid} does not exist for this app")
    openid, nickname, role = body.get("openid"), body.get("nickname", ""), body.get("role", viewer_tokens.VIEWER)
    if not isinstance(openid, str) or not 0 < len(openid) <= MAX_OPENID_CHARS:
        raise ApiError(errors.INVALID_ARGS, f"openid must be a string of 1-{MAX_OPENID_CHARS} characters")
    if not isinstance(nickname, str) or len(nickname) > MAX_NICKNAME_CHARS:
        raise ApiError(errors.INVALID_ARGS, f"nickname must be a string of at most {MAX_NICKNAME_CHARS} characters")
    if role not in viewer_tokens.ROLES:
        raise ApiError(errors.INVALID_ARGS, f"role must be one of {', '.join(viewer_tokens.ROLES)}")
    unknown = body.keys() - {"openid", "nickname", "role"}
    if unknown:
        raise ApiError(errors.INVALID_ARGS, f"unknown field(s) {', '.join(sorted(unknown))}: openid, nickname, role")
    identity = ViewerIdentity(roomid, openid, nickname, role, int(now) + settings.token_ttl_seconds)
    return viewer_tokens.issue(app.secret, identity)


async def update_settings(store: RoomStore, app: App, changes: dict[str, Any], allow_private: bool) -> App:
    """Set the app's ``channel_anonymous``, ``comment_words`` or ``comment_webhook`` (on a private
    address only with ``allow_private``)."""
    unknown = changes.keys() - {"channel_anonymous", "comment_words", "comment_webhook"}
    if unknown:
        raise ApiError(
            errors.INVALID_ARGS,
            f"{', '.join(sorted(unknown))}: not a channel setting (channel_anonymous, comment_words, comment_webhook)",
        )
    current = await store.get_app(app.appid) or app
    if "channel_anonymous" in changes:
        if not isinstance(changes["channel_anonymous"], bool):
            raise ApiError(errors.INVALID_ARGS, "channel_anonymous must be true or false")
        current.channel_anonymous = changes["channel_anonymous"]
    if "comment_words" in changes:
        words = changes["comment_words"]
        if not isinstance(words, list) or len(words) > MAX_WORDS or not all(isinstance(w, str) and w for w in words):
            raise ApiError(errors.INVALID_ARGS, f"comment_words must be a list of up to {MAX_WORDS} non-empty strings")
        current.comment_words = words
    if "comment_webhook" in changes:
        url = changes["comment_webhook"]
        if not isinstance(url, str):
            raise ApiError(errors.INVALID_ARGS, 'comment_webhook must be an http(s) URL, or "" for none')
        webhook_targets.check_url("comment_webhook", url, allow_private)
        current.comment_webhook = url
    await store.put_app(current)
    return current
