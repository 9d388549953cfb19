"""Who may publish and play: the policy that ``api`` injects into every ingest and output.

A stream named like a room (``APPID-ROOMID`` of an existing app, under the rooms' RTMP app) is
decided by its room: the signature, the room's status, the app's limits. A play of one of its
renditions (``APPID-ROOMID_h264``, ``APPID-ROOMID_480p``) is decided by the room too, with the same
signature as the room's stream. Any other stream may publish only in development mode
(``--allow-anonymous-publish``), under app ``live``, as nginx-rtmp and node-media-server allow, and
may always be played.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from api.apps import count_daily
from api.models import App, LiveStatus, parse_stream
from api.room_status import RoomStatus
from api.rooms import RoomSettings
from api.signing import verify_query
from api.store.base import RoomStore
from api.transitions import Event, next_status
from relay.hub import AccessRequest, Decision

ANONYMOUS_APP = "live"


# Play requests come several times a second per HLS viewer (playlists, segments, parts): the app
# (its play key) is looked up in the store at most this often per app. A changed play key applies
# to new requests within this time.
PLAY_APP_CACHE_SECONDS = 5.0
PLAY_APP_CACHE_SIZE = 10_000

# Why a room in these statuses may not be pushed to.
REFUSED = {
    LiveStatus.ENDED: "has ended (103): create a new room to go live again",
    LiveStatus.BANNED: "is banned (104)",
    LiveStatus.EXPIRED: "expired (107): its endTime passed before it went live",
}


class AccessPolicy:
    def __init__(
        self,
        allow_anonymous_publish: bool,
        store: RoomStore,
        settings: RoomSettings,
        status: RoomStatus,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.allow_anonymous_publish = allow_anonymous_publish
        self.store = store
        self.settings = settings
        self.status = status
        self.clock = clock
        self._play_apps: dict[str, tuple[float, App | None]] = {}  # appid -> (until, app)

    async def _room_app(self, rtmp_app: str, name: str, cached: bool = False) -> App | None:
        """The app whose room stream ``rtmp_app/name`` names (``APPID-ROOMID`` under the rooms' RTMP app),
        if any; with ``cached``, as looked up in the last ``PLAY_APP_CACHE_SECONDS``."""
        if rtmp_app != self.settings.rtmp_app:
            return None
        parsed = parse_stream(name)
        if parsed is None:
            return None
        if not cached:
            return await self.store.get_app(parsed[0])
        now = time.monotonic()
        hit = self._play_apps.get(parsed[0])
        if hit is None or hit[0] < now:
            if len(self._play_apps) >= PLAY_APP_CACHE_SIZE:
                self._play_apps.clear()
            hit = self._play_apps[parsed[0]] = (now + PLAY_APP_CACHE_SECONDS, await self.store.get_app(parsed[0]))
        return hit[1]

    async def publish(self, request: AccessRequest) -> Decision:
        app = await self._room_app(request.app, request.name)
        if app is not None:
            return await self._publish_room(app, request)
        if self.allow_anonymous_publish:
            if request.app == ANONYMOUS_APP:
                return Decision.allow()
            return Decision.deny(
                f"anonymous publishing is only allowed under app '{ANONYMOUS_APP}', "
                f"not '{request.app}': push to rtmp://HOST/{ANONYMOUS_APP}/STREAM"
            )
        return Decision.deny(
            "publishing needs a room's signed push URL (rtmp://HOST/live/APPID-ROOMID?txSecret=..&txTime=.., "
            "from getpushurl) and no room matches this stream; for development, start the server with "
            "--allow-anonymous-publish"
        )

    async def _publish_room(self, app: App, request: AccessRequest) -> Decision:
        parsed = parse_stream(request.name)
        assert parsed is not None
        roomid = parsed[1]
        room = await self.store.get_room(roomid)
        if room is None or room.appid != app.appid:
            return Decision.deny(f"room {roomid} of app {app.appid} does not exist")
        problem = verify_query(app.push_key, request.name, request.query, self.clock())
        if problem:
            return Decision.deny(problem)
        now = self.clock()
        status = room.live_status
        expiry = next_status(status, Event.END_TIME_PASSED)
        if expiry is not None and now >= room.end_time:
            await self.status.apply(room, Event.END_TIME_PASSED)
            status = expiry.to
        if status in REFUSED:
            return Decision.deny(f"room {roomid} {REFUSED[status]}")
        if status == LiveStatus.PAUSED:
            # As the official service: the anchor of a paused room may (re)connect and push on;
            # viewers see nothing until an admin resumes the room (then it is live at once).
            self.status.hold(room)
        early = self.settings.publish_early_minutes
        if status == LiveStatus.NOT_STARTED and early is not None and now < room.start_time - early * 60:
            return Decision.deny(f"room {roomid} may go live from {early:g} minutes before its startTime")
        limit = self.settings.max_live_rooms
        if not await self.store.claim_live_slot(app.appid, roomid, limit):
            return Decision.deny(f"app {app.appid} already has {limit} rooms live")
        if status == LiveStatus.NOT_STARTED:
            per_day = self.settings.max_lives_per_day
            if not await count_daily(self.store, f"lives:{app.appid}", per_day, now, self.settings.zone):
                await self.store.release_live_slot(app.appid, roomid)
                return Decision.deny(f"app {app.appid} started {per_day} lives today")
        return Decision.allow()

    async def play(self, request: AccessRequest) -> Decision:
        """A room's stream and its renditions play openly, or with the stream's signed URL when its app
        has a play key."""
        name = request.name
        if parse_stream(name) is None:
            source = name.rpartition("_")[0]  # a rendition's stream is SOURCE_RENDITION
            name = source if parse_stream(source) is not None else name
        app = await self._room_app(request.app, name, cached=True)
        if app is None or not app.play_key:
            return Decision.allow()
        problem = verify_query(app.play_key, name, request.query, self.clock())
        return Decision.deny(problem) if problem else Decision.allow()
