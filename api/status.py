"""Viewer-facing room status, the plugin's ``getLiveStatus``: polled cheaply or pushed as it changes.

``GET /api/v1/rooms/{id}/status`` needs no token and counts against no quota: one read, a strong
ETag and a two-second ``max-age``. ``/events`` (Server-Sent Events) and the room channel's ``/ws``
(``api.channel``) push the room's messages: the current status first, then every status change of
the room (from the store's events, so a change made on any node arrives), the viewer count whenever
it changes, and every room bus message (comments, likes, goods...: ``api.bus``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from api import errors
from api.audience import AudienceOf
from api.bus import RoomBus
from api.errors import ApiError, json_error
from api.models import Room, RoomEvent
from api.store.base import RoomStore
from relay.http.cors import CORS

Message = dict[str, Any]

MAX_AGE_SECONDS = 2
# What /events and /ws send each client: the room's current status, then its changes.
STATUS, VIEWERS = "status", "viewers"


def _status(roomid: int, live_status: int, previous: int | None, reason: str, at: float, viewers: int) -> Message:
    return {
        "type": STATUS,
        "roomid": roomid,
        "live_status": live_status,
        "previous_status": previous,
        "reason": reason,
        "time": at,
        "viewers": viewers,
    }


def status_message(room: Room, viewers: int) -> Message:
    """The first message a client gets: the status as it is (``previous_status`` null: not a change)."""
    return _status(room.roomid, room.live_status, None, room.status_reason, room.updated_at, viewers)


def change_message(event: RoomEvent, viewers: int) -> Message:
    """A status change as it happened."""
    return _status(event.roomid, event.live_status, event.previous_status, event.reason, event.time, viewers)


class FeedListener(Protocol):
    """What the feed hands a room's messages to: an SSE client's queue, or the room channel's members."""

    def put(self, message: Message | None) -> None:
        """A message; None ends the feed (the server stops)."""

    def alive(self) -> bool: ...

    @property
    def size(self) -> int:
        """How many clients it stands for."""
        ...


@dataclass(slots=True, eq=False)
class Listener:
    """One client's bounded queue of messages."""

    queue: asyncio.Queue[Message | None]
    still_there: Callable[[], bool]
    closed: bool = False
    _last: dict[str, Any] = field(default_factory=dict)
    size = 1

    def alive(self) -> bool:
        return self.still_there()

    def put(self, message: Message | None) -> None:
        """Queue a message; a slow client whose queue is full loses its oldest message. None is the
        end-of-feed marker: nothing is queued after it."""
        if self.closed:
            return
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(message)
        self.closed = message is None

    def close(self) -> None:
        """Wake the client's handler with the end-of-feed marker."""
        self.put(None)

    def fresh(self, message: Message) -> bool:
        return news(self._last, message)


def news(told: dict[str, Any], message: Message) -> bool:
    """True if the message tells a client something new (remembering in ``told`` what it was told): a
    status change that raced with the first message, or a count already sent, is not news. Other
    messages (comments, likes...) always are."""
    if message["type"] not in (STATUS, VIEWERS):
        return True
    key = "live_status" if message["type"] == STATUS else "viewers"
    if told.get(key) == message[key]:
        return False
    told.update((k, message[k]) for k in ("live_status", "viewers") if k in message)
    return True


@dataclass(slots=True, eq=False)
class _Watched:
    stream: str
    viewers: int
    listeners: set[FeedListener] = field(default_factory=set)


class RoomFeed:
    """ONE store subscription (the store has no unsubscribe) and one bus subscription fanned out to
    the rooms' listeners, and one timer that checks the watched rooms' viewer counts and drops
    clients that went away."""

    def __init__(
        self,
        store: RoomStore,
        audience: AudienceOf,
        bus: RoomBus | None = None,
        viewer_interval: float = 2.0,
        queue_size: int = 256,  # an SSE client's backlog: comments come in bursts
    ) -> None:
        self.store = store
        self.bus = bus
        self.audience = audience
        self.viewer_interval = viewer_interval
        self.queue_size = queue_size
        self._rooms: dict[int, _Watched] = {}
        self._subscribed = False
        self._ticker: asyncio.Task[None] | None = None

    @property
    def subscribers(self) -> int:
        return sum(listener.size for watched in self._rooms.values() for listener in watched.listeners)

    def viewers(self, stream: str) -> int:
        return self.audience(stream)["total"]

    @contextlib.contextmanager
    def listen(self, room: Room, alive: Callable[[], bool]) -> Iterator[Listener]:
        """Receive the room's messages in a queue for as long as the ``with`` block runs."""
        listener = Listener(asyncio.Queue(self.queue_size), alive)
        self.add(room, listener)
        try:
            yield listener
        finally:
            self.remove(room.roomid, listener)

    def add(self, room: Room, listener: FeedListener) -> None:
        """Hand the room's messages to ``listener`` from now on, until ``remove``."""
        if not self._subscribed:
            self.store.subscribe(self._on_event)
            if self.bus is not None:
                self.bus.subscribe(self._on_message)
            self._subscribed = True
        watched = self._rooms.get(room.roomid)
        if watched is None:
            watched = self._rooms[room.roomid] = _Watched(room.stream_name, self.viewers(room.stream_name))
        watched.listeners.add(listener)
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick())

    def remove(self, roomid: int, listener: FeedListener) -> None:
        watched = self._rooms.get(roomid)
        if watched is None:
            return
        watched.listeners.discard(listener)
        if not watched.listeners:
            del self._rooms[roomid]

    def _on_message(self, roomid: int, message: Message) -> None:
        """A room bus message: to the room's listeners unchanged."""
        watched = self._rooms.get(roomid)
        if watched is None:
            return
        for listener in list(watched.listeners):
            listener.put(message)

    def _on_event(self, event: RoomEvent) -> None:
        watched = self._rooms.get(event.roomid)
        if watched is None or event.type != STATUS:
            return
        watched.viewers = self.viewers(watched.stream)
        message = change_message(event, watched.viewers)
        for listener in watched.listeners:
            listener.put(message)

    async def _tick(self) -> None:
        while self._rooms:
            await asyncio.sleep(self.viewer_interval)
            for roomid, watched in list(self._rooms.items()):
                count = self.viewers(watched.stream)
                if count != watched.viewers:
                    watched.viewers = count
                    message = {"type": VIEWERS, "roomid": roomid, "viewers": count}
                    for listener in watched.listeners:
                        listener.put(message)
                # An idle SSE client that left is otherwise noticed only at the next heartbeat.
                for listener in watched.listeners:
                    if not listener.alive():
                        listener.put(None)

    async def close(self) -> None:
        """End every client's feed (server shutdown)."""
        for watched in list(self._rooms.values()):
            for listener in list(watched.listeners):
                listener.put(None)
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)


class StatusRoutes:
    """``/api/v1/rooms/{id}/status`` and ``/events``."""

    def __init__(
        self, store: RoomStore, audience: AudienceOf, bus: RoomBus | None = None, heartbeat_seconds: float = 15.0
    ) -> None:
        self.store = store
        self.feed = RoomFeed(store, audience, bus)
        self.heartbeat_seconds = heartbeat_seconds

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v1/rooms/{id:[0-9]+}/status", self.status),
            web.get("/api/v1/rooms/{id:[0-9]+}/events", self.events),
        ]

    async def close(self) -> None:
        await self.feed.close()

    async def _room(self, request: web.Request) -> Room:
        roomid = int(request.match_info["id"])
        room = await self.store.get_room(roomid)
        if room is None:
            raise ApiError(errors.ROOM_NOT_FOUND, f"room {roomid} does not exist")
        return room

    async def status(self, request: web.Request) -> web.Response:
        try:
            room = await self._room(request)
        except ApiError as exc:
            return json_error(exc)
        payload = {
            "roomid": room.roomid,
            "live_status": room.live_status,
            "viewers": self.feed.viewers(room.stream_name),
        }
        body = json.dumps(payload, separators=(",", ":")).encode()
        etag = hashlib.blake2b(body, digest_size=8).hexdigest()
        headers = {"Cache-Control": f"public, max-age={MAX_AGE_SECONDS}", **CORS}
        if any(tag.value in (etag, "*") for tag in request.if_none_match or ()):
            response = web.Response(status=304, headers=headers)
        else:
            response = web.Response(body=body, content_type="application/json", headers=headers)
        response.etag = etag
        return response

    async def events(self, request: web.Request) -> web.StreamResponse:
        try:
            room = await self._room(request)
        except ApiError as exc:
            return json_error(exc)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx must not buffer the stream
                **CORS,
            }
        )

        def alive() -> bool:
            return request.transport is not None and not request.transport.is_closing()

        with self.feed.listen(room, alive) as listener:
            await response.prepare(request)
            with contextlib.suppress(ConnectionResetError):
                # Read again now that changes are queued for us: none can fall in between.
                room = await self.store.get_room(room.roomid) or room
                message: Message | None = status_message(room, self.feed.viewers(room.stream_name))
                listener.fresh(message)
                await response.write(b"retry: 3000\n" + _sse(message))
                while True:
                    try:
                        message = await asyncio.wait_for(listener.queue.get(), self.heartbeat_seconds)
                    except TimeoutError:
                        await response.write(b": heartbeat\n\n")
                        continue
                    if message is None:
                        break
                    if listener.fresh(message):
                        await response.write(_sse(message))
        return response


def _sse(message: Message) -> bytes:
    return f"event: {message['type']}\ndata: {json.dumps(message, separators=(',', ':'))}\n\n".encode()
