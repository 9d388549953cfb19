"""The WeChat-compatible HTTP API over real HTTP: every endpoint, its reply shape and its error codes."""

from __future__ import annotations

import io
import re
import struct
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

import aiohttp
import pytest
import qrcode
from aiohttp import web
from PIL import Image

from api import poster as poster_module
from api import qr
from api.config import ConfigError, load
from api.media import ImageInfo, image_info
from api.models import App, LiveStatus, Replay, Token
from api.server import Server
from api.signing import verify_query
from api.urls import PLUGIN_APPID
from api.views import iso_time
from tests.conftest import FFMPEG, needs_ffmpeg, run

ROOM = "/wxaapi/broadcast/room/"
LIVE_INFO = "/wxa/business/getliveinfo"
ROOM_INFO_FIELDS = {
    "name",
    "roomid",
    "cover_img",
    "share_img",
    "live_status",
    "start_time",
    "end_time",
    "anchor_name",
    "goods",
    "live_type",
    "close_like",
    "close_goods",
    "close_comment",
    "close_kf",
    "close_replay",
    "is_feeds_public",
    "creater_openid",
    "feeds_img",
}
GOODS_FIELDS = {"name", "cover_img", "url", "price", "price2", "price_type", "goods_id", "third_party_appid"}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_png(width: int, height: int, pixels: bool = True) -> bytes:
    """An 8-bit grayscale PNG; ``pixels=False`` gives only the header (enough to claim a size)."""
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    if pixels:
        out += png_chunk(b"IDAT", zlib.compress((b"\x00" + b"\x80" * width) * height))
    return out + png_chunk(b"IEND", b"")


def read_png(data: bytes) -> tuple[int, int, int, int, bytes]:
    """Width, height, bit depth, colour type and the decompressed scanlines of a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    assert next(iter(chunks)) == b"IHDR" and b"IEND" in chunks
    width, height, depth, colour = struct.unpack_from(">IIBB", chunks[b"IHDR"])
    return width, height, depth, colour, zlib.decompress(chunks[b"IDAT"])


def qr_text(png: bytes) -> str:
    """What a QR decoder (ZBar) reads in an image; the test is skipped where libzbar0 is missing."""
    try:
        from pyzbar import pyzbar
    except ImportError:
        pytest.skip("pyzbar/libzbar0 missing: run scripts/dev test, which installs them")
    found = pyzbar.decode(Image.open(io.BytesIO(png)).convert("L"), symbols=[pyzbar.ZBarSymbol.QRCODE])
    assert len(found) == 1, f"{len(found)} QR codes in the image"
    return found[0].data.decode()


@dataclass
class Wx:
    """One app talking to the server the way a WeChat back end does."""

    server: Server
    session: aiohttp.ClientSession
    app: App
    token: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    async def call(self, method: str, path: str, body: Any = None, **query: Any) -> dict[str, Any]:
        query.setdefault("access_token", self.token)
        kwargs: dict[str, Any] = {"params": {k: str(v) for k, v in query.items() if v is not None}}
        if isinstance(body, str | bytes | aiohttp.FormData):
            kwargs["data"] = body
        elif body is not None:
            kwargs["json"] = body
        async with self.session.request(method, self.base + path, **kwargs) as response:
            assert response.status == 200, await response.text()
            assert response.content_type == "application/json"
            return await response.json()

    async def get(self, path: str, **query: Any) -> dict[str, Any]:
        return await self.call("GET", path, **query)

    async def post(self, path: str, body: Any, **query: Any) -> dict[str, Any]:
        return await self.call("POST", path, body, **query)

    async def upload(self, data: bytes, filename: str = "cover.png", media_type: str = "image") -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("media", data, filename=filename, content_type="application/octet-stream")
        return await self.call("POST", "/cgi-bin/media/upload", form, type=media_type)

    async def media_id(self) -> str:
        reply = await self.upload(make_png(16, 12))
        assert reply["errcode"] == 0, reply
        return reply["media_id"]

    async def create(self, media_id: str, **fields: Any) -> dict[str, Any]:
        return await self.post(ROOM + "create", room_body(media_id, **fields))

    async def room(self, **fields: Any) -> tuple[int, dict[str, Any]]:
        """A new room: its id and the body it was created with."""
        body = room_body(await self.media_id(), **fields)
        reply = await self.post(ROOM + "create", body)
        assert reply["errcode"] == 0, reply
        return reply["roomId"], body

    async def live_info(self, **body: Any) -> dict[str, Any]:
        return await self.post(LIVE_INFO, body)

    async def goods(self) -> int:
        """Approved goods of the app's library (the default review approves at once): its id."""
        info = {"coverImgUrl": await self.media_id(), "name": "TIT茶杯", "priceType": 1, "price": 9.9, "url": "pages/a"}
        reply = await self.post("/wxaapi/broadcast/goods/add", {"goodsInfo": info})
        assert reply["errcode"] == 0, reply
        return reply["goodsId"]


def room_body(media_id: str, **fields: Any) -> dict[str, Any]:
    start = int(time.time()) + 3600
    return {
        "name": "测试直播间",
        "coverImg": media_id,
        "shareImg": media_id,
        "feedsImg": media_id,
        "startTime": start,
        "endTime": start + 7200,
        "anchorName": "主播小王",
        "anchorWechat": "anchor_wx",
        "type": 1,
        "closeLike": 0,
        "closeGoods": 0,
        "closeComment": 0,
        **fields,
    }


async def connect(server: Server, session: aiohttp.ClientSession, name: str = "shop") -> Wx:
    app = await server.apps.create_app(name)
    url = f"http://127.0.0.1:{server.http_port}/cgi-bin/token"
    query = {"grant_type": "client_credential", "appid": app.appid, "secret": app.secret}
    async with session.get(url, params=query) as response:
        reply = await response.json()
    return Wx(server, session, app, reply["access_token"])


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def wx(make_server, session) -> Wx:
    return await connect(await make_server(), session)


def errcode(reply: dict[str, Any]) -> int:
    return reply["errcode"]


# ---------------------------------------------------------------- credentials, methods, bodies


async def test_token(wx):
    url = wx.base + "/cgi-bin/token"
    good = {"grant_type": "client_credential", "appid": wx.app.appid, "secret": wx.app.secret}
    async with wx.session.get(url, params=good) as response:
        reply = await response.json()
    assert reply["expires_in"] == 7200 and len(reply["access_token"]) >= 32 and reply["errcode"] == 0
    cases = [
        ({**good, "grant_type": "password"}, 40002),
        ({"appid": wx.app.appid, "secret": wx.app.secret}, 40002),
        ({**good, "appid": ""}, 41002),
        ({"grant_type": "client_credential", "appid": wx.app.appid}, 41004),
        ({**good, "appid": "wx0000000000000000"}, 40013),
        ({**good, "secret": "0" * 32}, 40125),
    ]
    for query, code in cases:
        async with wx.session.get(url, params=query) as response:
            assert response.status == 200
            assert errcode(await response.json()) == code, query
    async with wx.session.post(url, params=good) as response:
        assert errcode(await response.json()) == 43001
    # the issued token works
    assert errcode(await wx.live_info(start=0, limit=10)) == 9410000


async def test_access_token_required(wx):
    assert await wx.post(LIVE_INFO, {"start": 0, "limit": 10}, access_token="") == {
        "errcode": 41001,
        "errmsg": "access_token missing",
    }
    assert errcode(await wx.get(ROOM + "getpushurl", roomId=1, access_token="nope")) == 40001
    async with wx.session.post(wx.base + LIVE_INFO, json={"start": 0, "limit": 1}) as response:
        assert errcode(await response.json()) == 41001


@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_expired_token_is_42001_unknown_stays_40001(make_server, session, request, store):
    settings = {"redis": request.getfixturevalue("redis_url")} if store == "redis" else {}
    server = await make_server(**settings)
    wx = await connect(server, session)
    other = await connect(server, session, "other shop")
    assert errcode(await wx.live_info(start=0, limit=10)) == 9410000
    appid, expiry, nonce, mac = wx.token.split(".")
    forged = [
        "nope",
        f"{appid}.{expiry}.{nonce}.{'A' * len(mac)}",  # not signed by the app's secret
        f"{other.app.appid}.{expiry}.{nonce}.{mac}",  # another app's name on this token
        f"{appid}.{expiry}.another.{mac}",
    ]
    for token in forged:
        assert errcode(await wx.post(LIVE_INFO, {"start": 0, "limit": 10}, access_token=token)) == 40001, token
    server.apps.clock = lambda: time.time() + 7201  # two hours on: the token has expired
    reply = await wx.live_info(start=0, limit=10)
    assert errcode(reply) == 42001 and "/cgi-bin/token" in reply["errmsg"], reply
    assert errcode(await wx.post(LIVE_INFO, {"start": 0, "limit": 10}, access_token=forged[1])) == 40001
    # Once the store has dropped it (both stores purge or filter expired tokens), it is still 42001.
    await server.store.put_token(Token(wx.token, appid, time.time() - 1))
    assert await server.store.get_token(wx.token) is None
    assert errcode(await wx.live_info(start=0, limit=10)) == 42001
    fresh = await connect(server, session)
    assert errcode(await fresh.live_info(start=0, limit=10)) == 9410000


async def stable(wx: Wx, **body: Any) -> dict[str, Any]:
    request = {"grant_type": "client_credential", "appid": wx.app.appid, "secret": wx.app.secret, **body}
    async with wx.session.post(wx.base + "/cgi-bin/stable_token", json=request) as response:
        assert response.status == 200
        return await response.json()


async def test_stable_token(wx):
    """The stable token: the same while valid, its successor in its last 5 minutes (both valid then),
    force_refresh replaces it (the old one stops working) at most every 30 s and 20 times a day."""
    apps, now = wx.server.apps, time.time()
    apps.clock = lambda: now
    first = await stable(wx)
    assert first["errcode"] == 0 and first["expires_in"] == 7200
    assert (await stable(wx))["access_token"] == first["access_token"]
    assert errcode(await wx.live_info(start=0, limit=1, access_token=first["access_token"])) == 9410000
    assert (await stable(wx, force_refresh=False))["access_token"] == first["access_token"]
    # A forced refresh sooner than 30 s after the token was issued gives it back unchanged.
    assert (await stable(wx, force_refresh=True))["access_token"] == first["access_token"]

    apps.clock = lambda: now + 31
    second = await stable(wx, force_refresh=True)
    assert second["access_token"] != first["access_token"] and second["expires_in"] == 7200
    reply = await wx.post(LIVE_INFO, {"start": 0, "limit": 1}, access_token=first["access_token"])
    assert errcode(reply) == 40001, "a token replaced by a forced refresh is no longer valid"
    assert errcode(await wx.post(LIVE_INFO, {"start": 0, "limit": 1}, access_token=second["access_token"])) == 9410000
    assert errcode(await wx.live_info(start=0, limit=1)) == 9410000, "/cgi-bin/token's tokens are apart"

    apps.clock = lambda: now + 31 + 7200 - 200  # the last 5 minutes of the second token
    third = await stable(wx)
    assert third["access_token"] != second["access_token"] and third["expires_in"] == 7200
    assert errcode(await wx.post(LIVE_INFO, {"start": 0, "limit": 1}, access_token=second["access_token"])) == 9410000
    assert (await stable(wx))["access_token"] == third["access_token"]

    refreshes = 1
    while refreshes < 20:
        apps.clock = lambda n=refreshes: now + 7100 + 31 * n
        assert errcode(await stable(wx, force_refresh=True)) == 0
        refreshes += 1
    apps.clock = lambda: now + 7100 + 31 * 21
    reply = await stable(wx, force_refresh=True)
    assert errcode(reply) == 45009 and "20 times a day" in reply["errmsg"], reply
    assert errcode(await stable(wx)) == 0, "the plain mode still answers"


async def test_stable_token_refusals(wx):
    url = wx.base + "/cgi-bin/stable_token"
    assert errcode(await stable(wx, grant_type="password")) == 40002
    assert errcode(await stable(wx, force_refresh="yes")) == 47001
    assert errcode(await stable(wx, secret="0" * 32)) == 40125
    assert errcode(await stable(wx, appid="")) == 41002
    async with wx.session.get(url) as response:
        assert errcode(await response.json()) == 43002
    async with wx.session.post(url, data=b"not json") as response:
        assert errcode(await response.json()) == 47001


async def test_getcallbackip(make_server, session):
    wx = await connect(await make_server(), session)
    assert await wx.get("/cgi-bin/getcallbackip") == {"errcode": 0, "errmsg": "ok", "ip_list": ["127.0.0.1"]}
    assert errcode(await wx.get("/cgi-bin/getcallbackip", access_token="nope")) == 40001
    configured = await connect(await make_server(callback_ips=["203.0.113.7", "198.51.100.0/24"]), session)
    assert (await configured.get("/cgi-bin/getcallbackip"))["ip_list"] == ["203.0.113.7", "198.51.100.0/24"]


async def test_unknown_official_paths_answer_json(wx):
    """SDKs parse every reply of the official API for its errcode: an unknown path there is 48001 in
    JSON, never aiohttp's plain-text 404; other paths keep their own answers."""
    for method, path in [
        ("GET", "/wxaapi/broadcast/room/nosuchthing"),
        ("POST", "/wxa/business/nosuchthing"),
        ("GET", "/cgi-bin/nosuchthing"),
        ("DELETE", "/wxaapi/"),
    ]:
        reply = await wx.call(method, path)
        assert errcode(reply) == 48001 and reply["errmsg"].startswith("api unauthorized"), (method, path, reply)
        assert path in reply["errmsg"]
    async with wx.session.get(wx.base + "/nosuchthing") as response:
        assert response.status == 404 and response.content_type == "text/plain"
    async with wx.session.get(wx.base + "/api/v1/nosuchthing") as response:
        assert response.status == 404 and (await response.json())["error"]["code"] == 404
    async with wx.session.get(wx.base + "/qrcode/9999.png") as response:
        assert response.status == 404 and await response.text() == "no such room", "a handler's own 404 stays"


async def test_wrong_method_on_an_official_path_answers_json(aiohttp_client):
    """A route under an official prefix that takes one method (endpoints added later may) answers
    another method with 43001/43002, as WeChat does."""
    from api.server import wechat_unknown_path

    async def ok(request):
        return web.json_response({"errcode": 0})

    app = web.Application(middlewares=[wechat_unknown_path])
    app.add_routes([web.get("/wxaapi/only-get", ok), web.post("/wxaapi/only-post", ok)])
    client = await aiohttp_client(app)
    async with client.post("/wxaapi/only-get") as response:
        assert response.status == 200 and errcode(await response.json()) == 43001
    async with client.get("/wxaapi/only-post") as response:
        assert errcode(await response.json()) == 43002


async def test_wrong_method_and_bad_bodies(wx):
    assert await wx.get(ROOM + "create") == {"errcode": 43002, "errmsg": "require POST method"}
    assert errcode(await wx.get(LIVE_INFO)) == 43002
    assert errcode(await wx.post(ROOM + "getpushurl", {"roomId": 1})) == 43001
    assert errcode(await wx.call("DELETE", ROOM + "getassistantlist")) == 43001
    assert errcode(await wx.get("/cgi-bin/media/upload", type="image")) == 43002
    for body in ("not json", b"\xff\xfe", "[1, 2]", '"text"', ""):
        assert errcode(await wx.post(ROOM + "create", body)) == 47001, body
    assert errcode(await wx.post(ROOM + "create", {})) == 200002
    assert errcode(await wx.post(ROOM + "create", {"name": 12})) == 200002
    assert errcode(await wx.live_info(start="zero", limit=10)) == 200002


async def test_unexpected_failure_is_a_system_error(wx, monkeypatch, caplog):
    async def broken(*args: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(wx.server.rooms, "list_rooms", broken)
    assert await wx.live_info(start=0, limit=10) == {"errcode": -1, "errmsg": "system error"}
    assert "disk on fire" in caplog.text


# ---------------------------------------------------------------- create: field rules


async def test_room_name_width_counts_cjk_double(wx):
    media_id = await wx.media_id()
    cases = {
        "直播": 300002,  # 4 wide
        "直播间": 0,  # 6: the minimum
        "直" * 17: 0,  # 34: the maximum
        "直" * 18: 300002,  # 36
        "abcde": 300002,
        "abcdef": 0,
        "ab直播": 0,  # 2 + 4
        "a直": 300002,  # 3
        "x" * 34: 0,
        "x" * 33 + "直": 300002,  # 35
        "ｆｕｌｌ": 0,  # fullwidth letters count 2 each: 8
    }
    for name, code in cases.items():
        assert errcode(await wx.create(media_id, name=name)) == code, name


async def test_anchor_name_width(wx):
    media_id = await wx.media_id()
    for name, code in {"王": 300034, "主播": 0, "abc": 300034, "abcd": 0, "主" * 15: 0, "主" * 16: 300034}.items():
        assert errcode(await wx.create(media_id, anchorName=name)) == code, name


async def test_start_and_end_times(wx):
    media_id = await wx.media_id()
    now = int(time.time())
    day = 86400
    cases = [
        (now + 300, now + 300 + 3600, 200002),  # starts in 5 minutes: less than 10
        (now + 200 * day, now + 200 * day + 3600, 200002),  # more than 6 months ahead
        (now + 3600, now + 3600 + 20 * 60, 200002),  # 20 minutes
        (now + 3600, now + 3600 + 13 * 3600, 200002),  # 13 hours: the live service allows 12
        (now + 3600, now + 3600 + 30 * 60, 0),
        (now + 3600, now + 3600 + 12 * 3600, 0),
        (now + 170 * day, now + 170 * day + 3600, 0),
    ]
    for start, end, code in cases:
        reply = await wx.create(media_id, startTime=start, endTime=end)
        assert errcode(reply) == code, (start - now, end - start, reply)
    reply = await wx.create(media_id, startTime=now + 300, endTime=now + 4000)
    assert "startTime" in reply["errmsg"]
    assert errcode(await wx.create(media_id, type=2)) == 200002
    assert errcode(await wx.create(media_id, closeLike=2)) == 200002
    assert errcode(await wx.create(media_id, anchorWechat="")) == 200002


async def test_create_needs_live_media_ids(wx):
    fresh = await wx.media_id()
    stale = await wx.media_id()
    media = await wx.server.store.get_media(stale)
    media.expires_at = time.time() - 1
    await wx.server.store.put_media(media)
    for key, code in {"coverImg": 300031, "shareImg": 300032, "feedsImg": 300037}.items():
        reply = await wx.create(fresh, **{key: stale})
        assert errcode(reply) == code and "expired" in reply["errmsg"], reply
        assert errcode(await wx.create(fresh, **{key: "never-uploaded-id"})) == code
    # another app's image is not ours to use
    other = await connect(wx.server, wx.session, "other")
    assert errcode(await other.create(await other.media_id(), coverImg=fresh)) == 300031
    reply = await wx.create(fresh)
    assert errcode(reply) == 0 and reply["roomId"] >= 1


# ---------------------------------------------------------------- getliveinfo


async def test_list_rooms_shape_and_order(wx):
    base = int(time.time()) + 3600
    ids = []
    for offset in (600, 1800, 1200):
        roomid, _ = await wx.room(startTime=base + offset, endTime=base + offset + 3600)
        ids.append(roomid)
    early, late, middle = ids
    goods = [await wx.goods() for _ in range(2)]
    assert errcode(await wx.post(ROOM + "addgoods", {"ids": goods, "roomId": late})) == 0

    reply = await wx.live_info(start=0, limit=10)
    assert reply["errcode"] == 0 and reply["errmsg"] == "ok"
    assert reply["total"] == 3 and reply["live_replay"] == []
    rows = reply["room_info"]
    assert [r["roomid"] for r in rows] == [late, middle, early], "sorted by start_time, latest first"
    for row in rows:
        assert set(row) == ROOM_INFO_FIELDS
    row = rows[0]
    stored = await wx.server.store.get_room(late)
    assert row["cover_img"] == f"{wx.base}/media/{stored.cover_img}"
    assert row["share_img"] == row["feeds_img"] == row["cover_img"]
    assert row["start_time"] == base + 1800 and row["end_time"] == base + 1800 + 3600
    assert (row["name"], row["anchor_name"], row["live_status"], row["live_type"]) == ("测试直播间", "主播小王", 102, 1)
    assert (row["close_like"], row["close_goods"], row["close_comment"]) == (0, 0, 0)
    assert (row["close_replay"], row["close_kf"], row["is_feeds_public"]) == (1, 1, 1), "official defaults"
    assert row["creater_openid"] == ""
    assert [g["goods_id"] for g in row["goods"]] == goods
    assert all(set(g) == GOODS_FIELDS and isinstance(g["price"], int) for g in row["goods"])
    async with wx.session.get(row["cover_img"]) as response:
        assert response.status == 200 and response.content_type == "image/png"


async def test_list_paging_limit_and_empty_pages(make_server, session):
    wx = await connect(await make_server(list_limit=2), session)
    empty = await wx.live_info(start=0, limit=10)
    assert empty == {"errcode": 9410000, "errmsg": "empty room list", "room_info": [], "live_replay": [], "total": 0}
    media_id = await wx.media_id()
    for _ in range(3):
        assert errcode(await wx.create(media_id)) == 0
    first = await wx.live_info(start=0, limit=100)
    assert len(first["room_info"]) == 2 and first["total"] == 3, "limit is capped by list_limit"
    rest = await wx.live_info(start=2, limit=100)
    assert len(rest["room_info"]) == 1 and rest["total"] == 3
    ids = [r["roomid"] for r in first["room_info"] + rest["room_info"]]
    assert sorted(ids, reverse=True) == ids, "same start_time: the newest room first"
    past = await wx.live_info(start=3, limit=10)
    assert past == {"errcode": 9410000, "errmsg": "empty room list", "room_info": [], "live_replay": [], "total": 3}
    assert errcode(await wx.live_info(start=-1, limit=10)) == 200002
    assert errcode(await wx.live_info(start=0, limit=0)) == 200002
    assert errcode(await wx.live_info(start=0)) == 200002


async def test_get_replay(wx):
    roomid, _ = await wx.room(closeReplay=0)  # a closed replay lists nothing (tests/test_replay_segments.py)
    store = wx.server.store
    created = time.time() - 600
    for n, status in enumerate(("ready", "recording", "ready"), 1):
        replay = Replay(f"r{n}", roomid, wx.app.appid, n, status, created + n, created + 30 * 86400, f"rep/{n}")
        await store.put_replay(replay)
    reply = await wx.live_info(action="get_replay", room_id=roomid, start=0, limit=10)
    assert reply["errcode"] == 0 and reply["room_info"] == [] and reply["total"] == 2
    assert reply["live_replay"] == [
        {
            "create_time": iso_time(created + n),
            "expire_time": iso_time(created + 30 * 86400),
            "media_url": f"{wx.base}/replays/rep/{n}/index.m3u8",
        }
        for n in (1, 3)
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", reply["live_replay"][0]["create_time"])
    page = await wx.live_info(action="get_replay", room_id=roomid, start=1, limit=10)
    assert [r["media_url"] for r in page["live_replay"]] == [f"{wx.base}/replays/rep/3/index.m3u8"]
    assert page["total"] == 2
    assert errcode(await wx.live_info(action="get_replay", start=0, limit=10)) == 200002
    assert errcode(await wx.live_info(action="replay", room_id=roomid, start=0, limit=10)) == 200002
    assert errcode(await wx.live_info(action="get_replay", room_id=9999, start=0, limit=10)) == 300022
    other = await connect(wx.server, wx.session, "other")
    assert errcode(await other.live_info(action="get_replay", room_id=roomid, start=0, limit=10)) == 300022


async def test_empty_action_lists_rooms(wx):
    roomid, _ = await wx.room()
    reply = await wx.live_info(action="", start=0, limit=10)
    assert errcode(reply) == 0 and [r["roomid"] for r in reply["room_info"]] == [roomid]
    assert reply == await wx.live_info(start=0, limit=10)


@pytest.mark.parametrize(
    ("zone", "created", "expires"),
    [(None, "2026-12-04T00:30:00", "2026-12-05T00:30:00"), ("UTC", "2026-12-03T16:30:00", "2026-12-04T16:30:00")],
)
async def test_replay_times_in_the_configured_zone(make_server, session, zone, created, expires):
    """get_replay's zone-less times are China Standard Time by default, whatever the host's zone."""
    server = await make_server(**({"time_zone": zone} if zone else {}))
    wx = await connect(server, session)
    roomid, _ = await wx.room(closeReplay=0)  # a closed replay lists nothing
    at = 1796315400  # 2026-12-03 16:30 UTC
    await server.store.put_replay(Replay("r1", roomid, wx.app.appid, 1, "ready", at, at + 86400, "rep/1"))
    reply = await wx.live_info(action="get_replay", room_id=roomid, start=0, limit=10)
    assert (reply["live_replay"][0]["create_time"], reply["live_replay"][0]["expire_time"]) == (created, expires)


@pytest.mark.parametrize(("zone", "next_day_allowed"), [(None, True), ("UTC", False)])
async def test_quota_day_in_the_configured_zone(make_server, session, zone, next_day_allowed):
    """The daily quota starts again at midnight in the configured zone (Beijing midnight is 16:00 UTC)."""
    server = await make_server(quotas={"default": 1}, **({"time_zone": zone} if zone else {}))
    wx = await connect(server, session)
    before, after = 1796313599, 1796313601  # 2026-12-03 15:59:59 and 16:00:01 UTC
    server.apps.clock = lambda: before
    assert errcode(await wx.get(ROOM + "getpushurl", roomId=1)) == 300022
    assert errcode(await wx.get(ROOM + "getpushurl", roomId=1)) == 45009
    server.apps.clock = lambda: after
    assert errcode(await wx.get(ROOM + "getpushurl", roomId=1)) == (300022 if next_day_allowed else 45009)


def test_time_zone_and_callback_ip_settings(tmp_path):
    config = tmp_path / "minilive.toml"
    config.write_text('[rooms]\ntime_zone = "UTC"\n')
    assert load(config, {}).rooms.zone == ZoneInfo("UTC")
    assert load(None, {}).rooms.time_zone == "Asia/Shanghai"
    config.write_text('[rooms]\ncallback_ips = ["203.0.113.7", "wechat.example.com"]\n')
    with pytest.raises(ConfigError, match=r"'wechat\.example\.com' is not an IP address"):
        load(config, {})
    config.write_text('[rooms]\ntime_zone = "Mars/Olympus_Mons"\n')
    with pytest.raises(ConfigError, match=r"\[rooms\] time_zone 'Mars/Olympus_Mons' is not a time zone.*Asia/Shanghai"):
        load(config, {})


async def test_daily_quota(make_server, session):
    wx = await connect(await make_server(quotas={"getliveinfo": 2, "default": 2}), session)
    assert errcode(await wx.live_info(start=0, limit=10)) == 9410000
    assert errcode(await wx.live_info(action="get_replay", room_id=1, start=0, limit=10)) == 300022
    reply = await wx.live_info(start=0, limit=10)
    assert errcode(reply) == 45009 and reply["errmsg"].startswith("reach max api daily quota limit")
    assert errcode(await wx.live_info(action="get_replay", room_id=1, start=0, limit=10)) == 45009
    for _ in range(2):
        assert errcode(await wx.get(ROOM + "getpushurl", roomId=1)) == 300022
    assert errcode(await wx.get(ROOM + "getpushurl", roomId=1)) == 45009
    assert errcode(await wx.get(ROOM + "getsharedcode", roomId=1)) == 300022, "each endpoint has its own quota"
    other = await connect(wx.server, wx.session, "other")
    assert errcode(await other.live_info(start=0, limit=10)) == 9410000, "quotas are per app"


# ---------------------------------------------------------------- room lookups and state


async def test_unknown_and_foreign_rooms(wx):
    roomid, body = await wx.room()
    other = await connect(wx.server, wx.session, "other")
    for client, room in ((wx, 9999), (other, roomid)):
        assert errcode(await client.get(ROOM + "getpushurl", roomId=room)) == 300022
        assert errcode(await client.get(ROOM + "getsharedcode", roomId=room)) == 300022
        assert errcode(await client.get(ROOM + "getassistantlist", roomId=room)) == 300022
        assert errcode(await client.get(ROOM + "getsubanchor", roomId=room)) == 300022
        assert errcode(await client.post(ROOM + "editroom", {**body, "id": room})) == 300022
        assert errcode(await client.post(ROOM + "deleteroom", {"id": room})) == 300022
        assert errcode(await client.post(ROOM + "updatereplay", {"roomId": room, "closeReplay": 0})) == 300022
        assert errcode(await client.post(ROOM + "addgoods", {"ids": [1], "roomId": room})) == 300022
    assert errcode(await wx.get(ROOM + "getpushurl")) == 200002
    assert errcode(await wx.get(ROOM + "getpushurl", roomId="abc")) == 200002
    assert errcode(await wx.get(ROOM + "getpushurl", roomId=roomid)) == 0


async def test_edit_room(wx):
    roomid, body = await wx.room(closeLike=1)
    new_media = await wx.media_id()
    later = body["startTime"] + 600
    edit = {**body, "id": roomid, "name": "新的直播间", "startTime": later, "endTime": later + 3600}
    assert errcode(await wx.post(ROOM + "editroom", {**edit, "coverImg": new_media, "closeKf": 0})) == 0
    stored = await wx.server.store.get_room(roomid)
    assert (stored.name, stored.start_time, stored.cover_img, stored.close_kf) == ("新的直播间", later, new_media, 0)
    assert errcode(await wx.post(ROOM + "editroom", {**edit, "name": "直播"})) == 300002
    assert errcode(await wx.post(ROOM + "editroom", {**edit, "startTime": int(time.time())})) == 200002
    assert errcode(await wx.post(ROOM + "editroom", {**edit, "id": None})) == 200002
    reply = await wx.post(ROOM + "editroom", {**edit, "anchorWechat": ""})
    assert errcode(reply) == 200002 and "anchorWechat" in reply["errmsg"], "refused on edit as on create"


async def test_edit_takes_the_documented_defaults(wx):
    """editRoom has createRoom's rules: a switch left out is its documented default (isFeedsPublic 1,
    closeReplay 1, closeShare 0, closeKf 1), not the value the room had."""
    switches = {"isFeedsPublic": 0, "closeReplay": 0, "closeShare": 1, "closeKf": 0}
    roomid, body = await wx.room(**switches)
    room = await wx.server.store.get_room(roomid)
    assert (room.is_feeds_public, room.close_replay, room.close_share, room.close_kf) == (0, 0, 1, 0)
    edit = {key: value for key, value in body.items() if key not in switches}
    assert errcode(await wx.post(ROOM + "editroom", {**edit, "id": roomid})) == 0
    room = await wx.server.store.get_room(roomid)
    assert (room.is_feeds_public, room.close_replay, room.close_share, room.close_kf) == (1, 1, 0, 1)


async def test_edit_keeps_the_ten_minute_rule(wx):
    """startTime must be 10 minutes ahead on every edit, unchanged or not: a room about to start is not
    edited without moving it."""
    roomid, body = await wx.room()
    wx.server.rooms.clock = lambda: body["startTime"] - 300  # five minutes before the start
    reply = await wx.post(ROOM + "editroom", {**body, "id": roomid, "name": "快开始了改名"})
    assert errcode(reply) == 200002 and "10 minutes" in reply["errmsg"], reply
    later = body["startTime"] + 3600
    assert errcode(await wx.post(ROOM + "editroom", {**body, "id": roomid, "startTime": later})) == 0


@pytest.mark.parametrize("status", [LiveStatus.LIVE, LiveStatus.PAUSED, LiveStatus.INTERRUPTED])
async def test_editing_a_room_that_went_live(wx, status):
    """Only a room that has not started is edited; once live its switches change through their own
    endpoints (updatereplay...), which stay allowed."""
    roomid, body = await wx.room(closeLike=1)
    store = wx.server.store
    assert await store.transition(roomid, {LiveStatus.NOT_STARTED}, status, {}) is not None
    reply = await wx.post(ROOM + "editroom", {**body, "id": roomid, "name": "直播中改名字"})
    assert errcode(reply) == 300023 and f"({status})" in reply["errmsg"] and "updatereplay" in reply["errmsg"]
    assert (await store.get_room(roomid)).name == body["name"]
    assert errcode(await wx.post(ROOM + "deleteroom", {"id": roomid})) == 300023
    assert errcode(await wx.post(ROOM + "updatereplay", {"roomId": roomid, "closeReplay": 0})) == 0
    assert errcode(await wx.post(ROOM + "updatekf", {"roomId": roomid, "closeKf": 0})) == 0


async def test_ended_room(wx):
    roomid, body = await wx.room()
    store = wx.server.store
    assert await store.transition(roomid, {LiveStatus.NOT_STARTED}, LiveStatus.ENDED, {}) is not None
    assert errcode(await wx.post(ROOM + "editroom", {**body, "id": roomid, "name": "结束后改名"})) == 300023
    assert errcode(await wx.post(ROOM + "updatekf", {"roomId": roomid, "closeKf": 0})) == 300023
    assert errcode(await wx.post(ROOM + "addgoods", {"ids": [1], "roomId": roomid})) == 300023
    # an ended room may be deleted (a live one may not, see test_editing_a_live_room)
    assert errcode(await wx.post(ROOM + "deleteroom", {"id": roomid})) == 0
    assert await store.get_room(roomid) is None
    assert errcode(await wx.get(ROOM + "getpushurl", roomId=roomid)) == 300022


async def test_delete_room(wx):
    roomid, _ = await wx.room()
    assert errcode(await wx.post(ROOM + "deleteroom", {})) == 200002
    assert await wx.post(ROOM + "deleteroom", {"id": roomid}) == {"errcode": 0, "errmsg": "ok"}
    assert errcode(await wx.post(ROOM + "deleteroom", {"id": roomid})) == 300022
    assert errcode(await wx.live_info(start=0, limit=10)) == 9410000


# ---------------------------------------------------------------- URLs and share codes


async def test_push_url(wx):
    roomid, _ = await wx.room()
    reply = await wx.get(ROOM + "getpushurl", roomId=roomid)
    stream = f"{wx.app.appid}-{roomid}"
    port = wx.server.rtmp_port
    pattern = rf"rtmp://127\.0\.0\.1:{port}/live/{stream}\?txSecret=[0-9a-f]{{32}}&txTime=([0-9a-f]+)"
    match = re.fullmatch(pattern, reply["pushAddr"])
    assert match, reply
    assert int(match[1], 16) > time.time() + 3600, "valid past the planned end, for reconnects"
    query = urlsplit(reply["pushAddr"]).query
    assert verify_query(wx.app.push_key, stream, query, time.time()) is None
    assert verify_query("another key", stream, query, time.time()) is not None


async def test_shared_code(wx):
    roomid, _ = await wx.room()
    params = '{"path":"pages/index/index","pid":1}'
    reply = await wx.get(ROOM + "getsharedcode", roomId=roomid, params=params)
    assert reply["errcode"] == 0
    plugin_page = f"plugin-private://{PLUGIN_APPID}/pages/live-player-plugin?room_id={roomid}"
    page = f"{plugin_page}&custom_params={quote(params, safe='')}"
    assert reply["pagePath"] == page
    assert reply["cdnUrl"].startswith(f"{wx.base}/qrcode/{roomid}.png?params=")
    bare = await wx.get(ROOM + "getsharedcode", roomId=roomid)
    assert bare["pagePath"] == plugin_page

    assert reply["posterUrl"] == f"{wx.base}/poster/{roomid}.png?params={quote(params, safe='')}"
    async with wx.session.get(reply["cdnUrl"]) as response:
        assert response.status == 200 and response.content_type == "image/png"
        data = await response.read()
    width, height, depth, colour, raw = read_png(data)
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=4)
    code.add_data(page)
    modules = code.get_matrix()
    scale = width // len(modules)
    assert width == height == len(modules) * scale and scale >= 4 and (depth, colour) == (1, 0)
    stride = 1 + (width + 7) // 8  # filter byte, then 8 pixels a byte
    assert len(raw) == stride * height
    centres = [n * scale + scale // 2 for n in range(len(modules))]
    dark = [[not (raw[y * stride + 1 + x // 8] >> (7 - x % 8)) & 1 for x in centres] for y in centres]
    assert dark == modules, "the PNG shows the module matrix of the page path"
    assert qr_text(data) == page, "a QR decoder reads the page path with the custom params"

    async with wx.session.get(f"{wx.base}/qrcode/9999.png") as response:
        assert response.status == 404
    async with wx.session.get(f"{wx.base}/qrcode/{roomid}.png") as response:
        assert response.status == 200 and response.headers["Cache-Control"] == "public, max-age=86400"


async def get_png(wx: Wx, url: str) -> Image.Image:
    async with wx.session.get(url) as response:
        assert response.status == 200 and response.content_type == "image/png", await response.text()
        return Image.open(io.BytesIO(await response.read()))


async def test_share_poster(wx):
    """posterUrl is a poster: the room's cover on top, the title and start time, and the room's QR code
    (the same code as cdnUrl's, drawn at a whole number of pixels per module)."""
    roomid, body = await wx.room()
    params = '{"pid":7}'
    reply = await wx.get(ROOM + "getsharedcode", roomId=roomid, params=params)
    poster = await get_png(wx, reply["posterUrl"])
    assert poster.size == (poster_module.WIDTH, poster_module.HEIGHT) and poster.mode == "RGB"
    assert poster.getpixel((300, 300)) == (0x80, 0x80, 0x80), "the cover (a grey test image) fills the top"
    png = io.BytesIO()
    poster.save(png, "PNG")
    assert qr_text(png.getvalue()) == reply["pagePath"]
    # The QR region is exactly the share code, scaled to fit.
    modules = len(qr.matrix(reply["pagePath"]))
    scale = poster_module.QR_SIDE // modules
    code = Image.open(io.BytesIO(qr.png(reply["pagePath"], scale))).convert("RGB")
    top = poster_module.HEIGHT - poster_module.MARGIN - code.height
    region = poster.crop((poster_module.MARGIN, top, poster_module.MARGIN + code.width, top + code.height))
    assert region.tobytes() == code.tobytes()
    title_band = poster.crop((0, poster_module.COVER_HEIGHT, poster_module.WIDTH, top)).convert("L")
    assert title_band.getextrema()[0] < 64, "the title and start time are drawn under the cover"

    async with wx.session.get(f"{wx.base}/poster/9999.png") as response:
        assert response.status == 404
    hits = poster_module.render.cache_info().hits
    async with wx.session.get(reply["posterUrl"]) as response:
        assert response.headers["Cache-Control"] == "public, max-age=300"
    assert poster_module.render.cache_info().hits == hits + 1, "the same poster is made once"
    assert errcode(await wx.post(ROOM + "editroom", {**body, "id": roomid, "name": "改过名字的直播间"})) == 0
    assert (await get_png(wx, reply["posterUrl"])).tobytes() != poster.tobytes(), "an edit makes a new poster"


def poster_spec(**fields: Any) -> poster_module.PosterSpec:
    values = {"title": "测试直播间", "start_time": 1_800_000_000, "time_zone": "Asia/Shanghai", "cover": ""}
    return poster_module.PosterSpec(**{**values, "page": "plugin-private://x?room_id=1", **fields})


def test_poster_time_zone_long_titles_and_big_covers(tmp_path):
    shanghai = Image.open(io.BytesIO(poster_module.render(poster_spec())))
    utc = Image.open(io.BytesIO(poster_module.render(poster_spec(time_zone="UTC"))))
    assert shanghai.tobytes() != utc.tobytes(), "the start time is written in the configured zone"
    long_title = Image.open(io.BytesIO(poster_module.render(poster_spec(title="很长的直播间名字" * 10))))
    assert long_title.size == (poster_module.WIDTH, poster_module.HEIGHT)
    big = tmp_path / "big.png"
    big.write_bytes(make_png(5000, 5000, pixels=False))  # claims 25 Mpx: not decoded
    plain = Image.open(io.BytesIO(poster_module.render(poster_spec(cover=str(big)))))
    assert plain.getpixel((300, 300)) == (40, 40, 48)


def test_poster_without_a_cjk_font(monkeypatch, caplog):
    """Without a CJK font the poster is still made (Pillow's own font), and the log says what to install."""
    monkeypatch.setattr(poster_module, "FONTS", (Path("/nonexistent/font.ttc"),))
    poster_module.font.cache_clear()
    try:
        data = poster_module.render(poster_spec(title="没有字体的直播间"))
    finally:
        poster_module.font.cache_clear()
    assert Image.open(io.BytesIO(data)).size == (poster_module.WIDTH, poster_module.HEIGHT)
    assert "fonts-wqy-zenhei" in caplog.text


# ---------------------------------------------------------------- switches, goods, assistants, sub-anchor


async def test_switches(wx):
    roomid, _ = await wx.room()
    store = wx.server.store
    assert errcode(await wx.post(ROOM + "updatereplay", {"roomId": roomid, "closeReplay": 0})) == 0
    assert errcode(await wx.post(ROOM + "updatefeedpublic", {"roomId": roomid, "isFeedsPublic": 0})) == 0
    assert errcode(await wx.post(ROOM + "updatekf", {"roomId": roomid, "closeKf": 0})) == 0
    assert errcode(await wx.post(ROOM + "updatecomment", {"id": roomid, "banComment": 1})) == 0
    room = await store.get_room(roomid)
    assert (room.close_replay, room.is_feeds_public, room.close_kf, room.ban_comment) == (0, 0, 0, 1)
    assert errcode(await wx.post(ROOM + "updatecomment", {"roomId": roomid, "banComment": 0})) == 0
    assert (await store.get_room(roomid)).ban_comment == 0
    assert errcode(await wx.post(ROOM + "updatecomment", {"banComment": 0})) == 200002
    assert errcode(await wx.post(ROOM + "updatereplay", {"roomId": roomid, "closeReplay": 2})) == 200002
    assert errcode(await wx.post(ROOM + "updatekf", {"roomId": roomid})) == 200002
    row = (await wx.live_info(start=0, limit=1))["room_info"][0]
    assert (row["close_replay"], row["is_feeds_public"], row["close_kf"]) == (0, 0, 0)


async def test_add_goods(wx):
    roomid, _ = await wx.room()
    three, four, five = [await wx.goods() for _ in range(3)]
    assert errcode(await wx.post(ROOM + "addgoods", {"ids": [three, four], "roomId": roomid})) == 0
    assert errcode(await wx.post(ROOM + "addgoods", {"ids": [four, five], "roomId": roomid})) == 0
    assert [g["goods_id"] for g in (await wx.server.store.get_room(roomid)).goods] == [three, four, five]
    assert errcode(await wx.post(ROOM + "addgoods", {"ids": [999999], "roomId": roomid})) == 300024  # see test_goods
    for bad in ([], ["3"], [True], "3", None):
        assert errcode(await wx.post(ROOM + "addgoods", {"ids": bad, "roomId": roomid})) == 200002, bad


async def test_assistants(wx):
    roomid, _ = await wx.room()
    users = [{"username": "helper1", "nickname": "小助手"}, {"username": "helper2", "nickname": "二号"}]
    assert errcode(await wx.post(ROOM + "addassistant", {"roomId": roomid, "users": users})) == 0
    listed = await wx.get(ROOM + "getassistantlist", roomId=roomid)
    assert listed["errcode"] == 0 and listed["count"] == 2 and listed["maxCount"] == 10
    assert all(set(a) == {"timestamp", "headimg", "nickname", "alias", "openid"} for a in listed["list"])
    assert [(a["alias"], a["nickname"]) for a in listed["list"]] == [("helper1", "小助手"), ("helper2", "二号")]
    assert abs(listed["list"][0]["timestamp"] - time.time()) < 60

    change = {"roomId": roomid, "username": "helper1", "nickname": "改名"}
    assert errcode(await wx.post(ROOM + "modifyassistant", change)) == 0
    assert errcode(await wx.post(ROOM + "removeassistant", {"roomId": roomid, "username": "helper2"})) == 0
    listed = await wx.get(ROOM + "getassistantlist", roomId=roomid)
    assert [(a["alias"], a["nickname"]) for a in listed["list"]] == [("helper1", "改名")] and listed["count"] == 1

    assert errcode(await wx.post(ROOM + "removeassistant", {"roomId": roomid, "username": "nobody"})) == 200002
    assert errcode(await wx.post(ROOM + "modifyassistant", {"roomId": roomid, "username": "helper1"})) == 200002
    for bad in ([], [{"nickname": "x"}], ["helper3"], {"username": "x"}):
        assert errcode(await wx.post(ROOM + "addassistant", {"roomId": roomid, "users": bad})) == 200002, bad
    many = [{"username": f"user_{n:02}", "nickname": "n"} for n in range(10)]
    assert errcode(await wx.post(ROOM + "addassistant", {"roomId": roomid, "users": many})) == 200002


async def test_sub_anchor(wx):
    roomid, _ = await wx.room()
    assert await wx.get(ROOM + "getsubanchor", roomId=roomid) == {"errcode": 0, "errmsg": "ok", "username": ""}
    assert errcode(await wx.post(ROOM + "addsubanchor", {"roomId": roomid, "username": "second_wx"})) == 0
    assert (await wx.get(ROOM + "getsubanchor", roomId=roomid))["username"] == "second_wx"
    assert errcode(await wx.post(ROOM + "modifysubanchor", {"roomId": roomid, "username": "third_wx"})) == 0
    assert (await wx.get(ROOM + "getsubanchor", roomId=roomid))["username"] == "third_wx"
    assert errcode(await wx.post(ROOM + "addsubanchor", {"roomId": roomid, "username": "anchor_wx"})) == 500005
    assert errcode(await wx.post(ROOM + "addsubanchor", {"roomId": roomid, "username": ""})) == 300039
    assert errcode(await wx.post(ROOM + "deletesubanchor", {"roomId": roomid})) == 0
    assert (await wx.get(ROOM + "getsubanchor", roomId=roomid))["username"] == ""


# ---------------------------------------------------------------- media


async def test_upload_png_and_serve_it(wx):
    data = make_png(64, 48)
    reply = await wx.upload(data)
    assert set(reply) == {"errcode", "errmsg", "type", "media_id", "created_at"} and reply["type"] == "image"
    assert abs(reply["created_at"] - time.time()) < 60
    media = await wx.server.store.get_media(reply["media_id"])
    assert (media.appid, media.width, media.height, media.content_type) == (wx.app.appid, 64, 48, "image/png")
    assert media.expires_at == pytest.approx(media.created_at + 3 * 86400)
    assert Path(wx.server.settings.data_dir, media.path) == (
        wx.server.settings.data_dir / "media" / wx.app.appid / f"{media.media_id}.png"
    )
    async with wx.session.get(f"{wx.base}/media/{media.media_id}") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "image/png"
        assert response.headers["Cache-Control"] == "public, max-age=86400"
        assert await response.read() == data


@needs_ffmpeg
async def test_upload_real_images(wx, tmp_path):
    made = {
        "x.jpg": ([], "image/jpeg"),
        "x.gif": ([], "image/gif"),
        "lossy.webp": (["-c:v", "libwebp", "-lossless", "0"], "image/webp"),
        "lossless.webp": (["-c:v", "libwebp", "-lossless", "1"], "image/webp"),
    }
    for name, (codec, content_type) in made.items():
        path = tmp_path / name
        code, _, err = await run(
            FFMPEG, "-v", "error", "-f", "lavfi", "-i", "color=red:s=64x48", "-frames:v", "1", *codec, str(path)
        )
        assert code == 0, err.decode()
        reply = await wx.upload(path.read_bytes(), filename=name)
        assert reply["errcode"] == 0, (name, reply)
        media = await wx.server.store.get_media(reply["media_id"])
        assert (media.width, media.height, media.content_type) == (64, 48, content_type), name
        assert media.path.endswith("." + name.rsplit(".", 1)[1])


async def test_upload_refusals(wx):
    assert errcode(await wx.upload(b"just some text, not an image")) == 40005
    assert errcode(await wx.upload(b"\x89PNG\r\n\x1a\n")) == 40005, "a truncated header"
    assert errcode(await wx.upload(make_png(0, 10, pixels=False))) == 40005
    assert errcode(await wx.upload(make_png(16, 16), media_type="voice")) == 40004
    assert errcode(await wx.upload(make_png(16, 16), media_type="")) == 40004
    assert errcode(await wx.upload(make_png(9000, 10, pixels=False))) == 40009
    assert errcode(await wx.upload(make_png(10, 8193, pixels=False))) == 40009
    assert errcode(await wx.upload(make_png(8192, 8192, pixels=False))) == 0
    assert errcode(await wx.upload(make_png(16, 16) + bytes(10 * 1024 * 1024))) == 40006
    form = aiohttp.FormData()
    form.add_field("file", make_png(16, 16), filename="x.png")
    assert errcode(await wx.call("POST", "/cgi-bin/media/upload", form, type="image")) == 41005
    assert errcode(await wx.call("POST", "/cgi-bin/media/upload", {"media": "x"}, type="image")) == 41005
    assert errcode(await wx.call("POST", "/cgi-bin/media/upload", b"", type="image", access_token="")) == 41001


async def test_media_serving_and_cleanup(wx):
    store, media_dir = wx.server.store, wx.server.settings.data_dir / "media"

    async def status(media_id: str) -> int:
        async with wx.session.get(f"{wx.base}/media/{media_id}") as response:
            return response.status

    used, unused = await wx.media_id(), await wx.media_id()
    await wx.create(used)  # pins it
    for media_id in (used, unused):
        media = await store.get_media(media_id)
        media.expires_at = time.time() - 1
        await store.put_media(media)
    assert await status(used) == 200, "a room's image is served after the upload expired"
    assert await status(unused) == 404
    for bad in ("unknown-media-id-123", "..%2F..%2Fminilive.db", "%2e%2e", "a" * 200):
        assert await status(bad) == 404, bad
    assert len(list(media_dir.rglob("*.png"))) == 2

    assert await wx.server.media.cleanup() == 1
    assert await store.get_media(unused) is None and await store.get_media(used) is not None
    assert [p.stem for p in media_dir.rglob("*.png")] == [used]
    assert errcode(await wx.create(unused)) == 300031


def test_image_headers():
    assert image_info(make_png(3, 2)) == ImageInfo("png", "image/png", 3, 2)
    gif = b"GIF89a" + struct.pack("<HH", 320, 200) + b"\x00" * 8
    assert (image_info(gif).width, image_info(gif).height, image_info(gif).ext) == (320, 200, "gif")
    vp8x = b"RIFF\x00\x00\x00\x00WEBPVP8X" + b"\x0a\x00\x00\x00" + b"\x00" * 4 + (99).to_bytes(3, "little") * 2
    assert (image_info(vp8x).width, image_info(vp8x).height) == (100, 100)
    jpeg = b"\xff\xd8\xff\xe0\x00\x04ab\xff\xff\xc2\x00\x0b\x08" + struct.pack(">HH", 480, 640) + b"\x03"
    info = image_info(jpeg)
    assert (info.width, info.height, info.content_type) == (640, 480, "image/jpeg")
    for junk in (b"", b"\xff\xd8\xff", b"\xff\xd8\xff\xd9", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"GIF89a\x01"):
        assert image_info(junk) is None, junk
