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
    from api.ladders import Ladders
    from api.media import MediaLibrary
    from api.room_status import RoomStatus
    from api.rooms import Rooms
    from api.urls import Urls

APPS: web.AppKey[Apps] = web.AppKey("apps")
ROOMS: web.AppKey[Rooms] = web.AppKey("rooms")
ROOM_STATUS: web.AppKey[RoomStatus] = web.AppKey("room_status")
URLS: web.AppKey[Urls] = web.AppKey("urls")
MEDIA: web.AppKey[MediaLibrary] = web.AppKey("media")
AUDIENCE: web.AppKey[AudienceOf] = web.AppKey("audience")
LADDERS: web.AppKey[Ladders] = web.AppKey("ladders")
BUS: web.AppKey[RoomBus] = web.AppKey("bus")
