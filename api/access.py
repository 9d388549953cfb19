"""Who may publish and play: the policy that ``api`` injects into every ingest and output.

A stream named like a room (``APPID-ROOMID`` of an existing app) is decided by the room service:
signature, room status, limits. Any other stream may publish only in development mode
(``--allow-anonymous-publish``), under app ``live``, as nginx-rtmp and node-media-server allow.
"""

from __future__ import annotations

import time

from api.models import App
from api.rooms import RoomService, parse_stream
from relay.hub import AccessRequest, Decision

ANONYMOUS_APP = "live"


# Play requests come several times a second per HLS viewer (playlists, segments, parts): the app
# (its play key) is looked up in the store at most this often per app. A changed play key applies
# to new requests within this time.
PLAY_APP_CACHE_SECONDS = 5.0
PLAY_APP_CACHE_SIZE = 10_000


class AccessPolicy:
    def __init__(self, allow_anonymous_publish: bool, rooms: RoomService | None = None) -> None:
        self.allow_anonymous_publish = allow_anonymous_publish
        self.rooms = rooms
        self._play_apps: dict[str, tuple[float, App | None]] = {}  # appid -> (until, app)

    async def _room_app(self, request: AccessRequest, cached: bool = False) -> App | None:
        """The app whose room ``request`` names (``APPID-ROOMID`` under the rooms' RTMP app), if any;
        with ``cached``, as looked up in the last ``PLAY_APP_CACHE_SECONDS``."""
        if self.rooms is None or request.app != self.rooms.settings.rtmp_app:
            return None
        parsed = parse_stream(request.name)
        if parsed is None:
            return None
        if not cached:
            return await self.rooms.store.get_app(parsed[0])
        now = time.monotonic()
        hit = self._play_apps.get(parsed[0])
        if hit is None or hit[0] < now:
            if len(self._play_apps) >= PLAY_APP_CACHE_SIZE:
                self._play_apps.clear()
            hit = self._play_apps[parsed[0]] = (now + PLAY_APP_CACHE_SECONDS, await self.rooms.store.get_app(parsed[0]))
        return hit[1]

    async def publish(self, request: AccessRequest) -> Decision:
        if await self._room_app(request) is not None:
            assert self.rooms is not None
            return await self.rooms.authorize_publish(request)
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

    async def play(self, request: AccessRequest) -> Decision:
        app = await self._room_app(request, cached=True)
        if app is None:
            return Decision.allow()
        assert self.rooms is not None
        return self.rooms.authorize_play(app, request)
