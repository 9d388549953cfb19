"""Which renditions a room's stream gets: the room's own ladder, else its app's, else the server's
``[transcode] renditions``. Rooms and apps set theirs over REST (``PATCH /api/v1/rooms/{id}``,
``PATCH /api/v1/app``).

The transcoder asks while a viewer waits (a synchronous call from the hub), so the answer comes from
memory: a stream's ladder is looked up in the store when the stream is published, and again whenever
its room or app changes its ladder.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from api import errors
from api.errors import ApiError
from api.models import parse_stream
from api.store.base import RoomStore
from relay.hub import StreamEvent
from relay.transcode.ladder import Rung
from relay.transcode.settings import SettingsError, parse_ladder

log = logging.getLogger("minilive.api")


def check_ladder(value: Any, owner: str) -> list[Any] | None:
    """A ladder as a room or an app may set it: None, or entries that parse (else 200002 with why)."""
    if value is None:
        return None
    try:
        parse_ladder(value, f"{owner} renditions")
    except SettingsError as exc:
        raise ApiError(errors.INVALID_ARGS, str(exc)) from None
    return list(value)


class Ladders:
    def __init__(self, store: RoomStore, rtmp_app: str) -> None:
        self.store = store
        self.rtmp_app = rtmp_app
        self._by_stream: dict[str, list[Rung] | None] = {}  # room streams live here: their ladder
        self._tasks: set[asyncio.Task[None]] = set()

    def lookup(self, app: str, source: str) -> list[Rung] | None:
        """The ladder of stream ``app/source`` if its room or app has one (None: the server's)."""
        return self._by_stream.get(source) if app == self.rtmp_app else None

    async def load(self, stream: str) -> None:
        """Look ``stream``'s ladder up again (it was published, or its room or app changed it)."""
        parsed = parse_stream(stream)
        if parsed is None:
            return
        room = await self.store.get_room(parsed[1])
        app = await self.store.get_app(parsed[0])
        if room is None or app is None or room.appid != app.appid:
            return
        entries = room.renditions if room.renditions is not None else app.renditions
        try:
            self._by_stream[stream] = parse_ladder(entries) if entries is not None else None
        except SettingsError as exc:  # checked when set: only a hand-edited store gets here
            log.warning("room %s: its renditions cannot be used (%s): the server's apply", parsed[1], exc)
            self._by_stream[stream] = None

    async def app_changed(self, appid: str) -> None:
        for stream in [s for s in self._by_stream if s.startswith(f"{appid}-")]:
            await self.load(stream)

    def stream_event(self, event: StreamEvent) -> None:
        if event.app != self.rtmp_app or parse_stream(event.name) is None:
            return
        if event.type == "publish" and not event.info.get("relayed"):  # a pulled stream is not transcoded here
            task = asyncio.get_running_loop().create_task(self.load(event.name))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif event.type == "end":
            self._by_stream.pop(event.name, None)
