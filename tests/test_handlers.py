"""Handlers alone: each one on an application that holds fakes of the services it asks for."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api import keys, rest, wechat
from api.errors import ApiError
from api.models import App, LiveStatus, Room

APP = App("wxapp", "secret", "shop", "push-key")
ROOM = Room(7, "wxapp", "直播间名字", "c", "s", "f", 1_700_000_000, 1_700_003_600, "主播", "anchor_wx")


class FakeApps:
    def __init__(self) -> None:
        self.counted: list[str] = []

    async def app_for_token(self, token: str) -> App:
        if token != "good":
            raise ApiError(40001)
        return APP

    async def quota(self, app: App, api: str) -> None:
        self.counted.append(api)


class FakeRooms:
    async def room(self, app: App, roomid: int) -> Room:
        if roomid != ROOM.roomid:
            raise ApiError(300022)
        return ROOM


class FakeUrls:
    http_base = "http://example.test"

    def push_url(self, app: App, room: Room) -> str:
        return f"rtmp://example.test/live/{room.stream_name}?txSecret=x&txTime=65000000"

    def media_url(self, media_id: str) -> str:
        return f"{self.http_base}/media/{media_id}"


class FakeStatus:
    def __init__(self) -> None:
        self.actions: list[tuple[int, str]] = []

    async def admin_action(self, app: App, roomid: int, action: str) -> Room:
        self.actions.append((roomid, action))
        return Room.from_dict({**ROOM.to_dict(), "live_status": LiveStatus.PAUSED})


def application(**services: Any) -> web.Application:
    app = web.Application()
    for name, service in services.items():
        app[getattr(keys, name.upper())] = service
    return app


async def test_an_official_endpoint_alone(aiohttp_client):
    apps = FakeApps()
    app = application(apps=apps, rooms=FakeRooms(), urls=FakeUrls())
    app.router.add_route("*", wechat.ROOM_API + "getpushurl", wechat.push_url)
    client = await aiohttp_client(app)

    async def get(**query: str) -> dict[str, Any]:
        async with client.get(wechat.ROOM_API + "getpushurl", params=query) as response:
            assert response.status == 200
            return await response.json()

    reply = await get(access_token="good", roomId="7")
    assert reply == {
        "errcode": 0,
        "errmsg": "ok",
        "pushAddr": "rtmp://example.test/live/wxapp-7?txSecret=x&txTime=65000000",
    }
    assert apps.counted == ["getpushurl"], "the call counts against the endpoint's own quota"
    assert (await get(access_token="good", roomId="8"))["errcode"] == 300022
    assert (await get(access_token="bad", roomId="7"))["errcode"] == 40001
    assert (await get(access_token="good"))["errcode"] == 200002
    async with client.post(wechat.ROOM_API + "getpushurl", params={"access_token": "good"}) as response:
        assert (await response.json())["errcode"] == 43001


async def test_a_rest_action_alone_counts_viewers_through_the_audience(aiohttp_client):
    status = FakeStatus()
    asked: list[str] = []

    def audience(stream: str) -> dict[str, Any]:
        asked.append(stream)
        return {"total": 5, "by_protocol": {"rtmp": 2, "http-flv": 3}}

    app = application(apps=FakeApps(), room_status=status, urls=FakeUrls(), audience=audience)
    app.router.add_routes(rest.routes())
    client = await aiohttp_client(app)
    async with client.post("/api/v1/rooms/7/pause", headers={"Authorization": "Bearer good"}) as response:
        assert response.status == 200
        room = await response.json()
    assert status.actions == [(7, "pause")]
    assert room["live_status"] == LiveStatus.PAUSED and room["type"] == 0
    assert room["viewers"] == 5 and room["viewers_by_protocol"] == {"rtmp": 2, "http-flv": 3}
    assert room["cover_img_url"] == "http://example.test/media/c"
    assert asked == ["wxapp-7"]
    async with client.post("/api/v1/rooms/7/end", headers={"Authorization": "Bearer bad"}) as response:
        assert response.status == 401 and (await response.json())["error"]["code"] == 40001
