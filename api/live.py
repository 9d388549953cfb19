"""A room's live stream as its operator sees it: the publisher, codecs, rates, keyframe interval and
audience (``GET /api/v1/rooms/{id}/stream``), and disconnecting the publisher (``.../kick``).

Both act where the anchor is connected. In a cluster the request may land on any node: the stream's
origin is asked through its cluster listener (``/_live/{name}``, with a node credential), so every
node answers with the origin's numbers.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web

from api import errors
from api.audience import AudienceOf
from api.errors import ApiError
from api.models import Room
from relay.cluster import credential
from relay.cluster.node import Cluster
from relay.cluster.registry import RegistryUnavailable
from relay.hub import Hub

NODE_PATH = "/_live/"


class LiveStreams:
    def __init__(self, hub: Hub, rtmp_app: str, audience: AudienceOf) -> None:
        self.hub = hub
        self.rtmp_app = rtmp_app
        self.audience = audience
        self.cluster: Cluster | None = None  # set by the composition root when this node is one of several
        self._client: aiohttp.ClientSession | None = None

    def _here(self, name: str) -> dict[str, Any] | None:
        """The stream's details on this node if its anchor is connected here (a pull is not the anchor)."""
        stats = self.hub.stats(self.rtmp_app, name)
        if stats is None or not stats["live"] or stats["relayed"]:
            return None
        publisher = stats["publisher"]
        return {
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
            # Not measured for an anchor's own stream: the publisher's clock is not ours to read.
            "latency_ms": None,
        }

    async def details(self, room: Room) -> dict[str, Any]:
        found = self._here(room.stream_name)
        if found is None:
            found = await self._at_origin(room, "GET")
        return {
            "roomid": room.roomid,
            "stream": room.stream_name,
            "live_status": room.live_status,
            **found,
            "audience": self.audience(room.stream_name),
        }

    async def kick(self, room: Room) -> None:
        """Disconnect the anchor. The room is not changed by it: it goes to 106 as when an anchor drops,
        and back to 101 when the anchor (or OBS reconnecting) pushes again."""
        if self._here(room.stream_name) is None:
            await self._at_origin(room, "POST")
            return
        self.hub.kick(self.rtmp_app, room.stream_name, "kicked by the operator")

    async def _at_origin(self, room: Room, method: str) -> dict[str, Any]:
        """Ask the node that originates the room's stream (GET: its details; POST: kick)."""
        missing = ApiError(
            errors.STREAM_NOT_HERE, f"room {room.roomid} has no anchor pushing {room.stream_name} to this server"
        )
        cluster = self.cluster
        if cluster is None:
            raise missing
        try:
            holder = await cluster.registry.lookup(f"{self.rtmp_app}/{room.stream_name}")
        except RegistryUnavailable as exc:
            raise ApiError(errors.SYSTEM_ERROR, f"the stream registry cannot be read: {exc}") from None
        if holder is None or holder.node == cluster.node:
            raise missing
        path = NODE_PATH + room.stream_name
        headers = {credential.HEADER: credential.sign(cluster.secret, cluster.node, path)}
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        try:
            async with self._client.request(method, holder.url + path, headers=headers) as answer:
                if answer.status == 404:
                    raise missing
                answer.raise_for_status()
                return await answer.json() if method == "GET" else {}
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(
                errors.SYSTEM_ERROR, f"node {holder.node}, the stream's origin, did not answer: {exc}"
            ) from None

    def node_routes(self) -> list[web.RouteDef]:
        """What other nodes ask this one (on its cluster listener, which checks their credential)."""
        return [web.get(NODE_PATH + "{name}", self._node_details), web.post(NODE_PATH + "{name}", self._node_kick)]

    async def _node_details(self, request: web.Request) -> web.Response:
        found = self._here(request.match_info["name"])
        return web.json_response(found) if found is not None else web.Response(status=404)

    async def _node_kick(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if self._here(name) is None:
            return web.Response(status=404)
        self.hub.kick(self.rtmp_app, name, "kicked by the operator")
        return web.Response(status=204)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
