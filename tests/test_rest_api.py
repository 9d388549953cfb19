"""The REST API under /api/v1 over real HTTP: tokens, the app, rooms and their actions, URLs, replays, OpenAPI."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from api.models import App, LiveStatus, Replay
from relay.hub import StreamEvent
from tests.conftest import add_images, make_room, wait_live
from tests.hevc import PacketPublisher, enhanced
from tests.test_compat_rendition import assert_plays_h264_and_aac


def room_body(appid: str, **fields) -> dict:
    now = int(time.time())
    return {
        "name": "测试直播间",
        "cover_img": f"cover-{appid}",
        "share_img": f"share-{appid}",
        "feeds_img": f"feeds-{appid}",
        "start_time": now + 900,
        "end_time": now + 900 + 3600,
        "anchor_name": "主播",
        "anchor_wechat": "anchor_wx",
        "type": 1,
        **fields,
    }


async def go_live(server, room) -> None:
    """What the hub reports when the anchor starts pushing."""
    await server.room_status._handle_stream_event(StreamEvent("publish", "live", room.stream_name))


@dataclass
class Client:
    session: aiohttp.ClientSession
    app: App

    async def call(self, method: str, path: str, status: int, **kwargs):
        """Make a request, check its status and return its JSON body (None if it has none)."""
        async with self.session.request(method, path, **kwargs) as response:
            body = await response.json() if response.content_type == "application/json" else None
            assert response.status == status, body
            return body


@pytest.fixture
async def api(server):
    """A client of the server's HTTP port, authenticated as a fresh app whose images are uploaded."""
    app = await server.apps.create_app("shop")
    await add_images(server, app.appid)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as session:
        async with session.post("/api/v1/token", json={"appid": app.appid, "secret": app.secret}) as response:
            assert response.status == 200
            token = (await response.json())["access_token"]
        session.headers["Authorization"] = f"Bearer {token}"
        yield Client(session, app)


async def test_tokens_and_errors(server, api):
    app = api.app
    bad = await api.call("POST", "/api/v1/token", 401, json={"appid": app.appid, "secret": "nope"})
    assert bad["error"]["code"] == 40125
    missing = await api.call("POST", "/api/v1/token", 400, data=b"not json")
    assert missing["error"]["code"] == 47001
    no_token = await api.call("GET", "/api/v1/app", 401, headers={"Authorization": ""})
    assert no_token["error"]["code"] == 41001
    wrong = await api.call("GET", "/api/v1/rooms", 401, headers={"Authorization": "Bearer forged"})
    assert wrong["error"] == {"code": 40001, "message": "invalid credential, access_token is invalid or not latest"}


async def test_app_settings(server, api):
    app = await api.call("GET", "/api/v1/app", 200)
    assert app["appid"] == api.app.appid and app["push_key"] and "secret" not in app
    changed = await api.call(
        "PATCH",
        "/api/v1/app",
        200,
        json={"webhook_url": "http://127.0.0.1:9/hook", "play_key": "k3y", "replay_retention_days": 7},
    )
    assert (changed["webhook_url"], changed["play_key"], changed["replay_retention_days"]) == (
        "http://127.0.0.1:9/hook",
        "k3y",
        7,
    )
    stored = await server.store.get_app(api.app.appid)
    assert stored.secret == api.app.secret and stored.play_key == "k3y"
    for body in ({"webhook_url": "ftp://x"}, {"secret": "mine"}, {"replay_retention_days": 0}):
        error = await api.call("PATCH", "/api/v1/app", 400, json=body)
        assert error["error"]["code"] == 200002
    await api.call("PATCH", "/api/v1/app", 200, json={"play_key": ""})
    assert (await server.store.get_app(api.app.appid)).play_key == ""
    assert (await api.call("GET", "/api/v1/app/webhook_deliveries", 200)) == {"deliveries": []}


async def test_room_crud(server, api):
    appid = api.app.appid
    async with api.session.post("/api/v1/rooms", json=room_body(appid, close_like=1)) as response:
        assert response.status == 201
        room = await response.json()
        assert response.headers["Location"] == f"/api/v1/rooms/{room['roomid']}"
    assert room["live_status"] == 102 and room["type"] == 1 and room["close_like"] == 1
    assert room["close_goods"] == 0 and room["close_replay"] == 1  # REST and official defaults
    assert room["cover_img"] == f"cover-{appid}" and room["cover_img_url"].endswith(f"/media/cover-{appid}")
    assert room["viewers"] == 0 and "push_url" not in room
    roomid = room["roomid"]

    second = await api.call("POST", "/api/v1/rooms", 201, json=room_body(appid, name="第二个直播间"))
    listing = await api.call("GET", "/api/v1/rooms?start=0&limit=1", 200)
    assert listing["total"] == 2 and len(listing["rooms"]) == 1
    assert (await api.call("GET", "/api/v1/rooms?start=1", 200))["rooms"][0]["roomid"] in (roomid, second["roomid"])

    edited = await api.call("PATCH", f"/api/v1/rooms/{roomid}", 200, json={"name": "改过的直播间名字"})
    assert edited["name"] == "改过的直播间名字" and edited["close_like"] == 1 and edited["anchor_name"] == "主播"
    assert (await api.call("GET", f"/api/v1/rooms/{roomid}", 200))["name"] == "改过的直播间名字"
    # PATCH is partial (fields left out keep their values) but otherwise editRoom: only before the live.
    await api.call("PATCH", f"/api/v1/rooms/{roomid}", 200, json={"close_kf": 0})
    edited = await api.call("PATCH", f"/api/v1/rooms/{roomid}", 200, json={"name": "又改过的直播间"})
    assert edited["close_kf"] == 0, "unlike editRoom, a PATCH keeps what it leaves out"
    assert await server.store.transition(roomid, {102}, 101, {}) is not None
    live = await api.call("PATCH", f"/api/v1/rooms/{roomid}", 409, json={"name": "直播中改名字"})
    assert live["error"]["code"] == 300023 and "(101)" in live["error"]["message"]
    assert await server.store.transition(roomid, {101}, 102, {}) is not None

    # Service rules and snake_case fields
    assert (await api.call("PATCH", f"/api/v1/rooms/{roomid}", 400, json={"name": "短"}))["error"]["code"] == 300002
    unknown = await api.call("POST", "/api/v1/rooms", 400, json={**room_body(appid), "coverImg": "x"})
    assert "coverImg" in unknown["error"]["message"]
    assert (await api.call("PATCH", f"/api/v1/rooms/{roomid}", 400, json={"type": 0}))["error"]["code"] == 200002
    cover = await api.call("POST", "/api/v1/rooms", 400, json=room_body(appid, cover_img="nope"))
    assert cover["error"]["code"] == 300031
    assert (await api.call("GET", "/api/v1/rooms?limit=x", 400))["error"]["code"] == 200002

    await api.call("DELETE", f"/api/v1/rooms/{roomid}", 204)
    gone = await api.call("GET", f"/api/v1/rooms/{roomid}", 404)
    assert gone["error"]["code"] == 300022

    # Another app's rooms do not exist for this one.
    _, foreign = await make_room(server, "other")
    await api.call("GET", f"/api/v1/rooms/{foreign.roomid}", 404)
    await api.call("POST", f"/api/v1/rooms/{foreign.roomid}/end", 404)


async def test_actions(server, api):
    room = await api.call("POST", "/api/v1/rooms", 201, json=room_body(api.app.appid))
    path = f"/api/v1/rooms/{room['roomid']}"
    refused = await api.call("POST", f"{path}/start", 409)
    assert refused["error"]["code"] == 300023 and "push URL" in refused["error"]["message"]
    await api.call("POST", f"{path}/resume", 409)

    await go_live(server, await server.store.get_room(room["roomid"]))
    assert (await api.call("POST", f"{path}/start", 200))["live_status"] == LiveStatus.LIVE
    paused = await api.call("POST", f"{path}/pause", 200)
    assert paused["live_status"] == LiveStatus.PAUSED and paused["status_reason"] == "paused by an admin"
    assert (await api.call("POST", f"{path}/start", 200))["live_status"] == LiveStatus.INTERRUPTED
    await api.call("DELETE", path, 409)
    assert (await api.call("POST", f"{path}/end", 200))["live_status"] == LiveStatus.ENDED
    assert (await api.call("POST", f"{path}/ban", 409))["error"]["code"] == 300023
    await api.call("POST", f"{path}/explode", 404)  # no such route: aiohttp's plain 404
    await api.call("DELETE", path, 204)

    other = await api.call("POST", "/api/v1/rooms", 201, json=room_body(api.app.appid))
    assert (await api.call("POST", f"/api/v1/rooms/{other['roomid']}/ban", 200))["live_status"] == 104


async def test_play_urls_of_a_hevc_live_point_live_player_at_its_h264_rendition(server, api, hevc_media):
    """An anchor pushes Enhanced RTMP HEVC: the room's play URLs are those of STREAM_h264, signed like
    the stream's (the rendition plays with that signature, and only with it), the stream's own URLs
    under ``source``."""
    room = await api.call("POST", "/api/v1/rooms", 201, json=room_body(api.app.appid))
    urls = f"/api/v1/rooms/{room['roomid']}/play_urls"
    await api.call("PATCH", "/api/v1/app", 200, json={"play_key": "pl4y-k3y"})
    stream = f"{api.app.appid}-{room['roomid']}"
    push = await api.call("GET", f"/api/v1/rooms/{room['roomid']}/push_url", 200)
    publisher = await PacketPublisher.start(push["push_url"])
    publisher.send_in_background(enhanced(hevc_media[0]))
    try:
        await wait_live(server, stream)
        play = await api.call("GET", urls, 200)
        query = urlsplit(play["source"]["flv"]).query
        assert "txSecret=" in query and play["rendition"] == "h264"
        base = f"http://127.0.0.1:{server.http_port}/live/{stream}"
        assert play["source"]["flv"] == f"{base}.flv?{query}" and play["flv"] == f"{base}_h264.flv?{query}"
        assert play["rtmp"] == f"rtmp://127.0.0.1:{server.rtmp_port}/live/{stream}_h264?{query}"
        assert play["hls"] == f"{base}_h264/index.m3u8?{query}"
        for unsigned in (f"{base}_h264.flv", f"{base}_h264.flv?txSecret=0&txTime=ffffffff"):
            async with aiohttp.ClientSession() as session, session.get(unsigned) as response:
                assert response.status == 403
        await assert_plays_h264_and_aac(play["flv"], (320, 240), frames=25)
    finally:
        await publisher.stop()


async def test_urls_and_replays(server, api):
    room = await api.call("POST", "/api/v1/rooms", 201, json=room_body(api.app.appid))
    roomid = room["roomid"]
    push = await api.call("GET", f"/api/v1/rooms/{roomid}/push_url", 200)
    stream = f"{api.app.appid}-{roomid}"
    assert push["push_url"].startswith(f"rtmp://127.0.0.1:{server.rtmp_port}/live/{stream}?")
    tx_time = parse_qs(urlsplit(push["push_url"]).query)["txTime"][0]
    assert push["expires_at"] == int(tx_time, 16) > room["end_time"]

    play = await api.call("GET", f"/api/v1/rooms/{roomid}/play_urls", 200)
    assert play["flv"] == f"http://127.0.0.1:{server.http_port}/live/{stream}.flv"
    assert play["rendition"] is None and play["source"] == {key: play[key] for key in ("rtmp", "flv", "hls")}
    await api.call("PATCH", "/api/v1/app", 200, json={"play_key": "secret-play-key"})
    assert "txSecret=" in (await api.call("GET", f"/api/v1/rooms/{roomid}/play_urls", 200))["hls"]

    assert await api.call("GET", f"/api/v1/rooms/{roomid}/replays", 200) == {"replays": []}
    now = time.time()
    for session, status in ((1, "ready"), (2, "recording")):
        await server.store.put_replay(
            Replay(f"r{session}", roomid, api.app.appid, session, status, now + session, now + 86400, f"x/{session}")
        )
    replays = (await api.call("GET", f"/api/v1/rooms/{roomid}/replays", 200))["replays"]
    assert [(r["replay_id"], r["status"]) for r in replays] == [("r1", "ready"), ("r2", "recording")]
    assert replays[0]["urls"]["hls"].endswith("/index.m3u8") and replays[1]["urls"] == {}


async def test_openapi_describes_every_route(server):
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{server.http_port}/api/v1/openapi.json") as response,
    ):
        assert response.status == 200
        document = await response.json()
    assert document["openapi"].startswith("3.1")
    registered = set()
    for route in server.app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if path.startswith("/api/v1") and route.method not in ("HEAD", "OPTIONS"):
            registered.add((re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", path), route.method.lower()))
    assert len(registered) > 20
    described = {(path, method) for path, item in document["paths"].items() for method in item}
    assert registered - described == set(), "routes missing from openapi.json"
    assert described - registered == set(), "openapi.json describes routes that do not exist"
    schemas = document["components"]["schemas"]
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', str(document).replace("'", '"')))
    assert refs <= schemas.keys()


async def test_unknown_api_paths_answer_json_and_preflight_allows_writes(server):
    base = f"http://127.0.0.1:{server.http_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/api/v1/nothing-here") as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == 404
        async with session.options(f"{base}/api/v1/rooms/1") as response:
            assert response.status == 204
            assert "PATCH" in response.headers["Access-Control-Allow-Methods"]
            assert "DELETE" in response.headers["Access-Control-Allow-Methods"]
