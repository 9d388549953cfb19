"""A room's comments and likes: who may say what, moderation, storage for replays, likes counted once.

The room channel (``api.channel``) calls this for what its members send; results reach the members of
every node through the room bus (``api.bus``), never directly, so that everyone sees one order.

- **Comments** pass the room's switches (``close_comment``; ``ban_comment`` silences all but admins),
  the muted list, a per-user rate limit, a length limit, the app's word list and its moderation
  webhook; then they are appended to the store log ``comments:{roomid}`` scored by wall-clock time
  (with the stream time in ms when this node holds the anchor), and the log's sequence number is the
  comment's id.
- **Likes** are counted per room on each node and added to a shared counter (``next_id`` with a step)
  at every wall-clock second; then one node per room and second (a store counter with limit 1 is the
  lease) reads the total and publishes ``{"type": "likes"}`` on the bus: one message a second at most,
  the same total on every node.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from api import webhook_targets, webhooks
from api.aio import cancel_and_wait
from api.bus import RoomBus
from api.errors import ApiError
from api.models import App, Replay, Room
from api.store.base import RoomStore
from api.viewer_tokens import ViewerIdentity

log = logging.getLogger("minilive.comments")

Message = dict[str, Any]

# The error codes of ``{"type": "error"}`` answers (stable: clients switch on them; docs/asyncapi.yaml).
BAD_JSON = "bad_json"
TOO_BIG = "too_big"
UNKNOWN_TYPE = "unknown_type"
BAD_REQUEST = "bad_request"
READ_ONLY = "read_only"
COMMENTS_CLOSED = "comments_closed"
COMMENTS_BANNED = "comments_banned"
LIKES_CLOSED = "likes_closed"
MUTED = "muted"
RATE_LIMITED = "rate_limited"
FILTERED = "filtered"
MODERATION_UNAVAILABLE = "moderation_unavailable"
NOT_ADMIN = "not_admin"
UNAVAILABLE = "unavailable"


class Refused(Exception):
    """An action the channel answers with ``{"type": "error", "code", "message"}`` to its sender."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def reply(self) -> Message:
        return {"type": "error", "code": self.code, "message": self.message}


@dataclass(slots=True)
class ChannelSettings:
    """``[channel]``: the room channel's limits."""

    token_ttl_seconds: int = 900  # viewer tokens: checked only when a member joins
    max_message_bytes: int = 4096  # a bigger client message is answered "too_big"
    # A frame bigger than this closes the socket (1009) before it is buffered: memory stays bounded.
    max_frame_bytes: int = 128 * 1024
    max_comment_chars: int = 300
    comments_per_second: float = 1.0  # per user and room, with a burst of comment_burst
    comment_burst: int = 5
    like_messages_per_second: float = 10.0  # per user and room; each may carry up to max_likes_per_message
    like_burst: int = 20
    max_likes_per_message: int = 100
    # Refused messages a member may send per 10 s before it is disconnected (a flood).
    max_refusals: int = 50
    # A member whose unsent bytes pass this is too slow to follow the room and is disconnected.
    member_buffer_bytes: int = 512 * 1024
    # Room messages arriving within a window reach each member in one write. The window grows with
    # the room's members here (a write per member per window is the fan-out's cost), from merge_ms
    # by merge_ms_per_1000_members, up to max_merge_ms.
    merge_ms: float = 5.0
    merge_ms_per_1000_members: float = 10.0
    max_merge_ms: float = 100.0
    filter_timeout_seconds: float = 1.0  # the moderation webhook's answer; no answer: refused
    likes_tick_seconds: float = 1.0
    heartbeat_seconds: float = 15.0  # WebSocket pings: a member that does not answer is gone


class Bucket:
    """A token bucket: ``rate`` actions a second, ``burst`` at once."""

    __slots__ = ("burst", "level", "rate", "stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst, self.level, self.stamp = rate, burst, float(burst), now

    def take(self, now: float, amount: float = 1.0) -> bool:
        self.level = min(self.burst, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.level < amount:
            return False
        self.level -= amount
        return True


class RateLimits:
    """Per user and room on this node, whatever connection they use; idle buckets are forgotten."""

    MAX_KEPT = 100_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[tuple[str, int, str], Bucket] = {}

    def allow(self, kind: str, roomid: int, openid: str, rate: float, burst: int) -> bool:
        now = self.clock()
        key = (kind, roomid, openid)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.MAX_KEPT:
                self._forget_idle(now)
            bucket = self._buckets[key] = Bucket(rate, burst, now)
        return bucket.take(now)

    def _forget_idle(self, now: float) -> None:
        # A bucket that has refilled holds nothing a new one would not.
        for key, bucket in list(self._buckets.items()):
            if bucket.level + (now - bucket.stamp) * bucket.rate >= bucket.burst:
                del self._buckets[key]


def log_name(roomid: int) -> str:
    return f"comments:{roomid}"


def _muted(roomid: int) -> str:
    return f"muted:{roomid}"


def _deleted(roomid: int) -> str:
    return f"comments_deleted:{roomid}"


def _likes(roomid: int) -> str:
    return f"likes:{roomid}"


@dataclass(slots=True)
class _LikeRoom:
    pending: int = 0
    active_until: float = 0.0  # wall time until which this node takes part in publishing totals


class Comments:
    def __init__(
        self,
        store: RoomStore,
        bus: RoomBus,
        settings: ChannelSettings,
        stream_time_ms: Callable[[Room], int | None],
        allow_private_webhooks: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.allow_private_webhooks = allow_private_webhooks
        self.bus = bus
        self.settings = settings
        self.stream_time_ms = stream_time_ms  # the room's stream time here, if this node holds its anchor
        self.clock = clock
        self.limits = RateLimits()
        self._likes: dict[int, _LikeRoom] = {}
        self.totals: dict[int, int] = {}  # the last likes total published per room (heard on the bus)
        self._reading: dict[int, asyncio.Future[int]] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.bus.subscribe(self._on_bus)
        self._ticker = asyncio.create_task(self._tick_likes(), name="minilive-likes")

    async def stop(self) -> None:
        await cancel_and_wait([self._ticker] if self._ticker else [])
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------ comments

    async def post(self, room: Room, app: App, viewer: ViewerIdentity, text: Any) -> Message:
        """Check, store and publish a comment; the comment message as members receive it."""
        s = self.settings
        if not isinstance(text, str) or not text.strip():
            raise Refused(BAD_REQUEST, 'a comment needs "text": a non-empty string')
        text = text.strip()
        if len(text) > s.max_comment_chars:
            raise Refused(TOO_BIG, f"a comment may have at most {s.max_comment_chars} characters")
        if room.close_comment:
            raise Refused(COMMENTS_CLOSED, "comments are closed in this room (closeComment)")
        if room.ban_comment and not viewer.admin:
            raise Refused(COMMENTS_BANNED, "the room's comments are banned (updatecomment): only admins may comment")
        if not self.limits.allow("comment", room.roomid, viewer.openid, s.comments_per_second, s.comment_burst):
            raise Refused(RATE_LIMITED, f"at most {s.comments_per_second:g} comments a second: wait a moment")
        if not viewer.admin and await self.store.get_doc(_muted(room.roomid), viewer.openid) is not None:
            raise Refused(MUTED, "you are muted in this room")
        await self._moderate(app, room, viewer, text)
        now = self.clock()
        entry = {
            "openid": viewer.openid,
            "nickname": viewer.nickname,
            "text": text,
            "time": now,
            "stream_ms": self.stream_time_ms(room),
        }
        seq = await self.store.append_log(log_name(room.roomid), now, entry)
        message = comment_message(room.roomid, {**entry, "seq": seq})
        await self.bus.publish(room.roomid, message)
        return message

    async def _moderate(self, app: App, room: Room, viewer: ViewerIdentity, text: str) -> None:
        """The app's word list, then its moderation webhook (which must answer {"allow": bool} in time)."""
        folded = text.casefold()
        if any(word.casefold() in folded for word in app.comment_words if word):
            raise Refused(FILTERED, "the comment contains a word this room does not allow")
        if not app.comment_webhook:
            return
        t = int(self.clock()) + webhooks.SIGN_TTL_SECONDS
        body = {
            "appid": app.appid,
            "roomid": room.roomid,
            "openid": viewer.openid,
            "nickname": viewer.nickname,
            "text": text,
            "t": t,
            "sign": webhooks.sign(app.push_key, t),
        }
        if self._session is None:
            self._session = webhook_targets.session(self.allow_private_webhooks)
        try:
            webhook_targets.check_url("comment_webhook", app.comment_webhook, self.allow_private_webhooks)
            async with asyncio.timeout(self.settings.filter_timeout_seconds):
                async with self._session.post(app.comment_webhook, json=body, allow_redirects=False) as response:
                    answer = await response.json(content_type=None) if response.status == 200 else None
        except (TimeoutError, aiohttp.ClientError, ValueError, OSError, ApiError) as exc:
            log.warning("moderation webhook of app %s did not answer: %s", app.appid, exc or type(exc).__name__)
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("allow"), bool):
            # Closed by default: an app that asked for moderation gets no unmoderated comment.
            raise Refused(MODERATION_UNAVAILABLE, "comment moderation did not answer in time: try again")
        if not answer["allow"]:
            raise Refused(FILTERED, str(answer.get("reason") or "the room's moderation refused the comment"))

    async def delete(self, room: Room, comment_id: Any, by: ViewerIdentity) -> None:
        if not by.admin:
            raise Refused(NOT_ADMIN, "only a room admin may delete comments (a viewer token with role admin)")
        if not isinstance(comment_id, int) or isinstance(comment_id, bool) or comment_id < 1:
            raise Refused(BAD_REQUEST, 'delete_comment needs "id": a comment id')
        # Marked, not looked up: deleting is idempotent, and an id never given hides nothing.
        await self.store.put_doc(_deleted(room.roomid), str(comment_id), {"by": by.openid, "time": self.clock()})
        await self.bus.publish(room.roomid, {"type": "comment_deleted", "roomid": room.roomid, "id": comment_id})

    async def mute(self, room: Room, openid: Any, muted: Any, by: ViewerIdentity) -> None:
        if not by.admin:
            raise Refused(NOT_ADMIN, "only a room admin may mute users (a viewer token with role admin)")
        if not isinstance(openid, str) or not openid or not isinstance(muted, bool):
            raise Refused(BAD_REQUEST, 'mute needs "openid" (a string) and "muted" (true or false)')
        if muted:
            await self.store.put_doc(_muted(room.roomid), openid, {"by": by.openid, "time": self.clock()})
        else:
            await self.store.delete_doc(_muted(room.roomid), openid)
        await self.bus.publish(room.roomid, {"type": "mute", "roomid": room.roomid, "openid": openid, "muted": muted})

    async def for_replay(self, replay: Replay, start: float, end: float | None, limit: int) -> list[Message]:
        """The comments made during ``start``..``end`` seconds of the replay (deleted ones left out),
        in order, each with its ``offset`` in seconds from the replay's start."""
        span = replay.duration or max(0.0, self.clock() - replay.created_at)  # still recording: so far
        end = span if end is None else min(end, span)
        if end < start:
            return []
        entries = await self.store.read_log(
            log_name(replay.roomid), replay.created_at + start, replay.created_at + end, limit
        )
        deleted = await self.store.list_docs(_deleted(replay.roomid)) if entries else {}
        return [
            {**comment_message(replay.roomid, entry), "offset": round(entry["time"] - replay.created_at, 3)}
            for entry in entries
            if str(entry["seq"]) not in deleted
        ]

    # ------------------------------------------------------------ likes

    def like(self, room: Room, viewer: ViewerIdentity, count: Any) -> None:
        s = self.settings
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= s.max_likes_per_message:
            raise Refused(BAD_REQUEST, f'a like needs "count": 1-{s.max_likes_per_message}')
        if room.close_like:
            raise Refused(LIKES_CLOSED, "likes are closed in this room (closeLike)")
        if not self.limits.allow("like", room.roomid, viewer.openid, s.like_messages_per_second, s.like_burst):
            raise Refused(RATE_LIMITED, f"at most {s.like_messages_per_second:g} like messages a second: add them up")
        counted = self._likes.setdefault(room.roomid, _LikeRoom())
        counted.pending += count

    async def likes_total(self, roomid: int) -> int:
        """The room's likes as last published (read once per room and node: a crowd joining at once
        waits for one read)."""
        if roomid in self.totals:
            return self.totals[roomid]
        reading = self._reading.get(roomid)
        if reading is None:
            reading = self._reading[roomid] = asyncio.ensure_future(self.store.next_id(_likes(roomid), 0))
            reading.add_done_callback(lambda _: self._reading.pop(roomid, None))
        total = await asyncio.shield(reading)
        return self.totals.setdefault(roomid, total)

    def _on_bus(self, roomid: int, message: Message) -> None:
        if message.get("type") == "likes" and isinstance(message.get("total"), int):
            self.totals[roomid] = max(self.totals.get(roomid, 0), message["total"])

    async def _tick_likes(self) -> None:
        period = self.settings.likes_tick_seconds
        while True:
            now = self.clock()
            await asyncio.sleep(period - now % period)  # on the wall clock's seconds, as other nodes
            try:
                await self.publish_likes(int(self.clock() // period))
            except Exception as exc:  # the store is down: the likes wait for a later tick
                log.warning("likes not published: %s", exc)

    async def publish_likes(self, second: int) -> None:
        """Add this node's likes to the rooms' totals; one node per room and ``second`` publishes it."""
        now = self.clock()
        for roomid, counted in list(self._likes.items()):
            if counted.pending:
                pending, counted.pending = counted.pending, 0
                counted.active_until = now + 3 * self.settings.likes_tick_seconds
                try:
                    await self.store.next_id(_likes(roomid), pending)
                except Exception:
                    counted.pending += pending  # the store is down: counted at a later tick
                    raise
            elif counted.active_until < now:
                del self._likes[roomid]
        # Other nodes add theirs at the same second: read after they had time to.
        await asyncio.sleep(0.05 * self.settings.likes_tick_seconds)
        for roomid in list(self._likes):
            if not await self.store.incr_counter(f"likes_tick:{roomid}:{second}", 1, 10):
                continue  # another node publishes this second's total
            total = await self.store.next_id(_likes(roomid), 0)
            if total != self.totals.get(roomid):
                await self.bus.publish(roomid, {"type": "likes", "roomid": roomid, "total": total})


def comment_message(roomid: int, entry: Message) -> Message:
    return {
        "type": "comment",
        "roomid": roomid,
        "id": entry["seq"],
        "openid": entry["openid"],
        "nickname": entry["nickname"],
        "text": entry["text"],
        "time": entry["time"],
        "stream_ms": entry.get("stream_ms"),
    }
