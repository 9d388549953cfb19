"""Where HTTP handlers find the control plane's services: ``request.app[ROOMS]`` and the like.

The composition root stores the services under these keys; each handler takes only what it uses, so
a handler can be exercised alone with an application holding fakes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from api.apps import Apps
    from api.audience import AudienceOf
    from api.bus import RoomBus
    from api.channel import Channel
    from api.console.sessions import Sessions
    from api.goods import GoodsLibrary
    from api.ladders import Ladders
    from api.live import LiveStreams
    from api.media import MediaLibrary
    from api.replays import ReplayService
    from api.roles import Roles
    from api.room_status import RoomStatus
    from api.rooms import Rooms
    from api.subscribers import Subscribers
    from api.urls import Urls
    from api.webhooks import Webhooks

APPS: web.AppKey[Apps] = web.AppKey("apps")
ROOMS: web.AppKey[Rooms] = web.AppKey("rooms")
ROOM_STATUS: web.AppKey[RoomStatus] = web.AppKey("room_status")
URLS: web.AppKey[Urls] = web.AppKey("urls")
MEDIA: web.AppKey[MediaLibrary] = web.AppKey("media")
AUDIENCE: web.AppKey[AudienceOf] = web.AppKey("audience")
LADDERS: web.AppKey[Ladders] = web.AppKey("ladders")
BUS: web.AppKey[RoomBus] = web.AppKey("bus")
REPLAYS: web.AppKey[ReplayService] = web.AppKey("replays")
# Set once api/subscribers.py exists (issue 14); the room channel looks it up with app.get().
SUBSCRIBERS: web.AppKey[Subscribers] = web.AppKey("subscribers")
GOODS: web.AppKey[GoodsLibrary] = web.AppKey("goods")
# Roles of an app's members (issue 14, roles-subscribers).
ROLES: web.AppKey[Roles] = web.AppKey("roles")
# The console (issue 15): its sessions, the live streams' details and controls, and the webhooks.
CONSOLE: web.AppKey[Sessions] = web.AppKey("console")
LIVE: web.AppKey[LiveStreams] = web.AppKey("live")
WEBHOOKS: web.AppKey[Webhooks] = web.AppKey("webhooks")
# The room channel (issue 14): its WebSocket members, comments and likes.
CHANNEL: web.AppKey[Channel] = web.AppKey("channel")
