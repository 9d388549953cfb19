"""A room's live stream as its operator sees it: the publisher, codecs, rates, keyframe interval and
audience (``GET /api/v1/rooms/{id}/stream``), and disconnecting the publisher (``.../kick``).

Both act on the stream on this node: the node that holds the anchor's connection.
"""

from __future__ import annotations

from typing import Any

from api import errors
from api.audience import AudienceOf
from api.errors import ApiError
from api.models import Room
from relay.hub import Hub


class LiveStreams:
    def __init__(self, hub: Hub, rtmp_app: str, audience: AudienceOf) -> None:
        self.hub = hub
        self.rtmp_app = rtmp_app
        self.audience = audience

    def _stats(self, room: Room) -> dict[str, Any]:
        stats = self.hub.stats(self.rtmp_app, room.stream_name)
        if stats is None or not stats["live"] or stats["relayed"]:
            raise ApiError(
                errors.STREAM_NOT_HERE,
                f"room {room.roomid} has no anchor pushing {room.stream_name} to this server",
            )
        return stats

    def details(self, room: Room) -> dict[str, Any]:
        stats = self._stats(room)
        publisher = stats["publisher"]
        return {
            "roomid": room.roomid,
            "stream": room.stream_name,
            "live_status": room.live_status,
            "held": stats["held"],
            "publisher": {
                "address": publisher["remote"],
                "protocol": publisher["protocol"],
                "since": publisher["since"],
                "uptime": publisher["uptime"],
            },
            "video": stats["video"],
            "audio": stats["audio"],
            "bitrate_in": stats["bitrate_in"],
            "audience": self.audience(room.stream_name),
            # Not measured for an anchor's own stream: the publisher's clock is not ours to read.
            "latency_ms": None,
        }

    def kick(self, room: Room) -> None:
        """Disconnect the anchor. The room is not changed by it: it goes to 106 as when an anchor drops,
        and back to 101 when the anchor (or OBS reconnecting) pushes again."""
        self._stats(room)
        self.hub.kick(self.rtmp_app, room.stream_name, "kicked by the operator")
