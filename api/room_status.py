"""A room's live status over time: the events of ``api.transitions`` applied to stored rooms.

Events come from the hub (the anchor's stream starts or stops), from admins (pause, resume, ban,
end), from timers (endTime, the maximum live duration, the interruption grace) and from a restart.
Each change is made with the store's atomic ``transition`` and published as a RoomEvent, so every
node (and every SSE/WebSocket client) sees it; the node holding a room's stream then kicks or ends it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from api import errors
from api.aio import cancel_and_wait
from api.errors import ApiError
from api.models import FINAL_STATUSES, App, LiveStatus, Room, RoomEvent, parse_stream
from api.rooms import Rooms, RoomSettings
from api.store.base import RoomStore
from api.transitions import Event, legal_from, next_status, sources
from relay.hub import StreamEvent

log = logging.getLogger("minilive.rooms")

# The admin actions and the events they report; and all actions, "start" included (see admin_action).
ADMIN_ACTIONS = {"pause": Event.PAUSE, "resume": Event.RESUME, "ban": Event.BAN, "end": Event.END}
ACTIONS = ("start", *ADMIN_ACTIONS)


class MediaControl(Protocol):
    """What status changes may do to a room's stream on this node (injected by the composition root)."""

    def kick(self, stream: str, reason: str) -> bool: ...

    def end(self, stream: str, reason: str) -> bool: ...

    def hold(self, stream: str) -> bool:
        """A paused room's stream: the anchor goes on pushing, viewers get nothing until release."""
        ...

    def release(self, stream: str) -> bool: ...

    def publishing(self, stream: str) -> bool: ...


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


class RoomStatus:
    def __init__(
        self,
        store: RoomStore,
        settings: RoomSettings,
        rooms: Rooms,
        media: MediaControl | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.rooms = rooms
        self.media = media
        self.clock = clock
        # Called with each status change this node made (webhooks are sent once, by that node).
        self.on_change: list[Callable[[RoomEvent], Awaitable[None]]] = []
        # In a cluster: whether a live node originates a stream (None: cannot say now). A live room whose
        # stream no node holds lost its node (killed, or cut off): it waits for its anchor (106).
        self.held: Callable[[str], Awaitable[bool | None]] | None = None
        self._stream_events: asyncio.Queue[StreamEvent] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if not self.store.shared and self.held is None:
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
        await cancel_and_wait(self._tasks)

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
        change = RoomEvent("status", room.appid, room.roomid, to, room.live_status, reason)
        await self.store.publish_event(change)
        for callback in self.on_change:
            try:
                await callback(change)
            except Exception:
                log.exception("status change callback failed")
        return updated

    # ------------------------------------------------------------ admins

    async def admin_action(self, app: App, roomid: int, action: str) -> Room:
        """``pause``, ``resume``, ``ban`` or ``end`` a room; or ``start`` it: a paused room resumes, a live
        one stays live, and any other goes live only when its anchor pushes (refused here)."""
        if action not in ACTIONS:
            raise ApiError(errors.INVALID_ARGS, f"unknown action {action!r}: {', '.join(ACTIONS)}")
        room = await self.rooms.room(app, roomid)
        if action == "start":
            if room.live_status == LiveStatus.LIVE:
                return room
            if room.live_status != LiveStatus.PAUSED:
                raise ApiError(
                    errors.ROOM_STATUS_FORBIDS,
                    f"room {roomid} is {room.live_status}: a room goes live when its anchor pushes to "
                    f"its push URL (GET /api/v1/rooms/{roomid}/push_url)",
                )
            action = "resume"
        event = ADMIN_ACTIONS[action]
        if event is Event.RESUME and await self._pushing(room):
            event = Event.RESUME_PUSHING
        updated = await self.apply(room, event)
        if updated is None:
            raise ApiError(
                errors.ROOM_STATUS_FORBIDS, f"room {roomid} is {room.live_status}: {action} is not allowed then"
            )
        return updated

    # ------------------------------------------------------------ the anchor's stream

    def hold(self, room: Room) -> None:
        """Hold a paused room's stream on this node (its anchor may push to a paused room)."""
        if self.media is not None:
            self.media.hold(room.stream_name)

    async def _pushing(self, room: Room) -> bool:
        """Whether the room's anchor is pushing now, to this node or (in a cluster) to any live node."""
        if self.media is not None and self.media.publishing(room.stream_name):
            return True
        return self.held is not None and await self.held(room.stream_name) is True

    def stream_event(self, event: StreamEvent) -> None:
        """Hub listener: queue the event so that a room's events are handled in order. A stream pulled
        from its origin node (``relayed``) is the origin's to report."""
        if event.app == self.settings.rtmp_app and parse_stream(event.name) and not event.info.get("relayed"):
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
            elif room.live_status == LiveStatus.PAUSED:
                self.hold(room)  # the anchor of a paused room may push; nobody sees it until resumed
            elif room.live_status != LiveStatus.LIVE and self.media is not None:
                # Raced with a ban or end: the stream must not go on.
                self.media.kick(room.stream_name, f"room is {room.live_status}")
        elif event.type == "unpublish":
            await self.apply(room, Event.PUBLISHER_GONE, event.info.get("reason", ""))

    def _on_room_event(self, event: RoomEvent) -> None:
        """On every node: a room that may not be live loses its publisher here."""
        if self.media is None or event.type != "status":
            return
        stream = f"{event.appid}-{event.roomid}"
        if event.live_status == LiveStatus.PAUSED:
            self.media.hold(stream)
        elif event.previous_status == LiveStatus.PAUSED:
            self.media.release(stream)
        if event.live_status in FINAL_STATUSES:
            self.media.end(stream, f"the room is over ({event.live_status}: {event.reason})")

    # ------------------------------------------------------------ timers

    async def sweep(self) -> None:
        """Time-driven changes: expiry (107), the end of the 106 grace and of the max duration (103), and
        in a cluster a live room whose stream no live node originates (106)."""
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
        if self.held is not None:
            for room in await self.store.rooms_in_status([LiveStatus.LIVE]):
                if await self.held(room.stream_name) is False:
                    await self.apply(room, Event.PUBLISHER_GONE, "its node stopped")

    async def _sweeper(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("room sweep failed")
            await asyncio.sleep(self.settings.sweep_interval_seconds)
