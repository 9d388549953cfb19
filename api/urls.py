"""Where a room is pushed, played and replayed: signed push and play URLs, replay and media URLs, and
the live plugin's page path of a room."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from api import errors
from api.errors import ApiError
from api.models import FINAL_STATUSES, App, Replay, Room
from api.rooms import RoomSettings
from api.signing import sign_query

PLUGIN_APPID = "wx2b03c6e691cd7370"
CUSTOM_PARAMS_MAX = 600


def page_path(roomid: int, custom_params: str = "") -> str:
    """The plugin page of a room; ``custom_params`` as given (JSON text), URL-encoded here."""
    path = f"plugin-private://{PLUGIN_APPID}/pages/live-player-plugin?room_id={roomid}"
    if custom_params:
        # The plugin keeps at most 600 characters of custom_params and drops the rest.
        path += f"&custom_params={quote(custom_params[:CUSTOM_PARAMS_MAX], safe='')}"
    return path


# (app, stream) -> the rendition players should get instead of the stream as it is now, or None.
PlayerRendition = Callable[[str, str], str | None]


class Urls:
    """The public bases are known once the listeners are bound: the composition root sets them."""

    def __init__(
        self,
        settings: RoomSettings,
        rtmp_base: str = "",
        http_base: str = "",
        clock: Callable[[], float] = time.time,
        player_rendition: PlayerRendition | None = None,
    ) -> None:
        self.settings = settings
        self.rtmp_base = rtmp_base  # rtmp://host[:port]
        self.http_base = http_base  # http(s)://host[:port], no trailing slash
        self.clock = clock
        self.player_rendition = player_rendition

    def _expires_at(self, room: Room) -> int:
        # Valid for the planned live plus a margin, so that reconnects still pass.
        return max(room.end_time, int(self.clock())) + self.settings.push_url_margin_seconds

    def push_url(self, app: App, room: Room) -> str:
        if room.live_status in FINAL_STATUSES:
            raise ApiError(
                errors.ROOM_STATUS_FORBIDS, f"room {room.roomid} is over ({room.live_status}): it cannot go live again"
            )
        name = room.stream_name
        query = sign_query(app.push_key, name, self._expires_at(room))
        return f"{self.rtmp_base}/{self.settings.rtmp_app}/{name}?{query}"

    def play_urls(self, app: App, room: Room) -> dict[str, Any]:
        """What players should play: the room's stream, or while it is live in a codec that live-player
        cannot play (HEVC, AV1, VP8, VP9), its H.264 rendition (``rendition`` says which); ``source``
        is always the stream as published. One signature, the stream's, serves both."""
        name = room.stream_name
        query = "?" + sign_query(app.play_key, name, self._expires_at(room)) if app.play_key else ""
        source = self._stream_urls(name, query)
        rtmp_app = self.settings.rtmp_app
        rendition = self.player_rendition(rtmp_app, name) if self.player_rendition is not None else None
        player = self._stream_urls(f"{name}_{rendition}", query) if rendition else source
        return {**player, "rendition": rendition, "source": source}

    def _stream_urls(self, name: str, query: str) -> dict[str, str]:
        base = f"{self.http_base}/{self.settings.rtmp_app}/{name}"
        return {
            "rtmp": f"{self.rtmp_base}/{self.settings.rtmp_app}/{name}{query}",
            "flv": f"{base}.flv{query}",
            "hls": f"{base}/index.m3u8{query}",
        }

    def replay_urls(self, replay: Replay) -> dict[str, str]:
        """Where a ready replay's files are served (``/replays/`` + its ``path``)."""
        if replay.status != "ready" or not replay.path:
            return {}
        base = f"{self.http_base}/replays/{replay.path.strip('/')}"
        urls = {"hls": f"{base}/index.m3u8", "mp4": f"{base}/replay.mp4", "cover": f"{base}/cover.jpg"}
        if replay.renditions:  # the source and its renditions, for players that switch levels
            urls["master"] = f"{base}/master.m3u8"
        return urls

    def media_url(self, media_id: str) -> str:
        return f"{self.http_base}/media/{media_id}" if media_id else ""
