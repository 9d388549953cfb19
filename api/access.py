"""Who may publish and play: the policy that ``api`` injects into every ingest and output.

A stream named like a room (``APPID-ROOMID`` of an existing app) is decided by the room service:
signature, room status, limits. Any other stream may publish only in development mode
(``--allow-anonymous-publish``), under app ``live``, as nginx-rtmp and node-media-server allow.
"""

from __future__ import annotations

from api.rooms import RoomService, parse_stream
from relay.access import AccessRequest, Decision

ANONYMOUS_APP = "live"


class AccessPolicy:
    def __init__(self, allow_anonymous_publish: bool, rooms: RoomService | None = None) -> None:
        self.allow_anonymous_publish = allow_anonymous_publish
        self.rooms = rooms

    async def _is_room_stream(self, request: AccessRequest) -> bool:
        if self.rooms is None or request.app != self.rooms.settings.rtmp_app:
            return False
        parsed = parse_stream(request.name)
        return parsed is not None and await self.rooms.store.get_app(parsed[0]) is not None

    async def publish(self, request: AccessRequest) -> Decision:
        if await self._is_room_stream(request):
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
        if await self._is_room_stream(request):
            assert self.rooms is not None
            return await self.rooms.authorize_play(request)
        return Decision.allow()
