"""Goods over raw HTTP against a real server: the official library and goods-in-room endpoints, their
error codes, the three review modes (a real webhook receiver for one), prices in yuan and fen,
getliveinfo's goods, the room bus, a Redis-backed server, and the CLI's review switch."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from typing import Any

import aiohttp
import pytest
from wechatpy.exceptions import WeChatClientException

from api.models import LiveStatus
from tests.conftest import needs_ffmpeg, publish, run
from tests.test_openapi_responses import Api
from tests.test_replay_segments import clip_duration
from tests.test_rest_api import go_live
from tests.test_rooms_live import wait_status
from tests.test_webhooks import receiver  # noqa: F401  (a fixture)
from tests.test_wechat_api import LIVE_INFO, ROOM, Wx, connect, errcode, make_png, session  # noqa: F401
from tests.wechat_sdk import call, sdk_client

GOODS = "/wxaapi/broadcast/goods/"
WAREHOUSE = "/wxa/business/getgoodswarehouse"
GOODS_FIELDS = {"name", "cover_img", "url", "price", "price2", "price_type", "goods_id", "third_party_appid"}


async def cover(wx: Wx, width: int = 300, height: int = 300) -> str:
    reply = await wx.upload(make_png(width, height))
    assert reply["errcode"] == 0, reply
    return reply["media_id"]


def info(media_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "goodsInfo": {
            "coverImgUrl": media_id,
            "name": "TIT茶杯",
            "priceType": 1,
            "price": 19.9,
            "url": "pages/goods/detail?id=7",
            **fields,
        }
    }


async def add(wx: Wx, media_id: str, **fields: Any) -> dict[str, Any]:
    return await wx.post(GOODS + "add", info(media_id, **fields))


async def added(wx: Wx, media_id: str, **fields: Any) -> int:
    reply = await add(wx, media_id, **fields)
    assert errcode(reply) == 0, reply
    return reply["goodsId"]


class Rest:
    """The app's REST client (Bearer token), for the review routes."""

    def __init__(self, wx: Wx) -> None:
        self.wx = wx

    async def call(self, method: str, path: str, status: int, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.wx.token}"}
        async with self.wx.session.request(method, self.wx.base + path, headers=headers, **kwargs) as response:
            body = await response.json()
            assert response.status == status, body
            return body

    async def decide(self, goods_id: int, approve: bool, status: int = 200, **extra: Any) -> Any:
        path = f"/api/v1/apps/{self.wx.app.appid}/goods/{goods_id}/audit"
        return await self.call("POST", path, status, json={"approve": approve, **extra})

    async def goods(self) -> dict[str, dict[str, Any]]:
        listed = await self.call("GET", f"/api/v1/apps/{self.wx.app.appid}/goods", 200)
        assert listed["total"] == len(listed["goods"])
        return {str(g["goods_id"]): g for g in listed["goods"]}


class Bus:
    """The room bus of a server, as the room channel hears it."""

    def __init__(self, wx: Wx) -> None:
        self.messages: list[tuple[int, dict[str, Any]]] = []
        wx.server.bus.subscribe(lambda roomid, message: self.messages.append((roomid, message)))

    async def next(self, roomid: int, action: str, timeout: float = 5) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, (room, message) in enumerate(self.messages):
                if room == roomid and message.get("action") == action:
                    del self.messages[: i + 1]
                    return message
            assert time.monotonic() < deadline, f"no {action!r} message for room {roomid}: {self.messages}"
            await asyncio.sleep(0.02)


async def room_goods(wx: Wx, roomid: int) -> list[dict[str, Any]]:
    rows = (await wx.live_info(start=0, limit=100))["room_info"]
    return next(row for row in rows if row["roomid"] == roomid)["goods"]


@pytest.fixture
async def wx(make_server, session) -> Wx:  # noqa: F811
    return await connect(await make_server(), session)


# ---------------------------------------------------------------- the library


async def test_add_list_and_warehouse_shapes(wx):
    media_id = await cover(wx)
    reply = await add(wx, media_id)
    assert errcode(reply) == 0 and reply["errmsg"] == "ok" and reply["auditId"] >= 1, reply
    fixed = reply["goodsId"]
    ranged = await added(wx, media_id, name="红茶礼盒装", priceType=2, price=10, price2="20.5")
    third = "wx" + "a" * 16
    discount = await added(wx, media_id, name="绿茶茶叶", priceType=3, price=0.02, price2=0.01, thirdPartyAppid=third)

    listed = await wx.get(GOODS + "getapproved", offset=0, limit=10, status=2)  # auto review: approved at once
    assert listed["errcode"] == 0 and listed["total"] == 3
    rows = {row["goodsId"]: row for row in listed["goods"]}
    assert list(rows) == [fixed, ranged, discount]
    assert rows[fixed] == {
        "goodsId": fixed,
        "coverImgUrl": f"{wx.base}/media/{media_id}",
        "name": "TIT茶杯",
        "price": 19.9,
        "price2": 0,
        "url": "pages/goods/detail?id=7",
        "priceType": 1,
        "thirdPartyTag": 2,
        "thirdPartyAppid": "",
    }
    assert (rows[ranged]["price"], rows[ranged]["price2"]) == (10, 20.5)
    assert (rows[discount]["price"], rows[discount]["price2"], rows[discount]["thirdPartyAppid"]) == (0.02, 0.01, third)
    async with wx.session.get(rows[fixed]["coverImgUrl"]) as response:
        assert response.status == 200 and response.content_type == "image/png"

    page = await wx.get(GOODS + "getapproved", offset=1, limit=1, status=2)
    assert page["total"] == 3 and [g["goodsId"] for g in page["goods"]] == [ranged]
    assert (await wx.get(GOODS + "getapproved", offset=0, status=2))["total"] == 3  # limit defaults to 30
    assert (await wx.get(GOODS + "getapproved", offset=0, limit=10, status=0)) == {
        "errcode": 0,
        "errmsg": "ok",
        "total": 0,
        "goods": [],
    }
    for query in ({"limit": 0, "status": 2}, {"limit": 101, "status": 2}, {"status": 4}, {"limit": 5}):
        assert errcode(await wx.get(GOODS + "getapproved", offset=0, **query)) == 200002, query
    assert errcode(await wx.get(GOODS + "getapproved", offset=-1, status=2)) == 200002

    house = await wx.post(WAREHOUSE, {"goods_ids": [ranged, 999999, fixed]})
    assert house["errcode"] == 0 and house["total"] == 2
    assert [g["goods_id"] for g in house["goods"]] == [ranged, fixed], "found ones, in the order asked"
    assert house["goods"][1] == {
        "goods_id": fixed,
        "name": "TIT茶杯",
        "cover_img_url": f"{wx.base}/media/{media_id}",
        "url": "pages/goods/detail?id=7",
        "price_type": 1,
        "price": 19.9,
        "price2": 0,
        "audit_status": 2,
        "third_party_tag": 2,
        "thirdPartyAppid": "",
    }
    for bad in ([], "1", [True], list(range(1, 22))):
        assert errcode(await wx.post(WAREHOUSE, {"goods_ids": bad})) == 200002, bad
    # another app does not see them
    other = await connect(wx.server, wx.session, "other")
    assert (await other.post(WAREHOUSE, {"goods_ids": [fixed]}))["goods"] == []


async def test_add_refusals_name_the_rule(wx):
    media_id = await cover(wx)
    cases: list[tuple[dict[str, Any], int]] = [
        ({"price": 19.999}, 300003),
        ({"price": "19.999"}, 300003),
        ({"price": -1}, 300003),
        ({"price": 0}, 300003),
        ({"price": "abc"}, 300003),
        ({"price": True}, 300003),
        ({"price": 1e300}, 300003),
        ({"priceType": 2, "price": 20, "price2": 10}, 300003),
        ({"priceType": 2, "price": 20, "price2": 20}, 300003),
        ({"priceType": 3, "price": 10, "price2": 20}, 300003),
        ({"priceType": 4}, 300003),
        ({"priceType": 2, "price": 10}, 200002),
        ({"price": None}, 200002),
        ({"name": "一二三四五六七八九十一二三四五"}, 300002),  # 15 汉字
        ({"name": "茶杯"}, 300002),  # 2 汉字
        ({"url": "https://shop.example/goods"}, 300007),
        ({"url": "pages/goods detail"}, 300007),
        ({"url": ""}, 300007),
        ({"thirdPartyAppid": "not-an-appid"}, 200002),
        ({"coverImgUrl": "never-uploaded-id"}, 300006),
        ({"coverImgUrl": await cover(wx, 301, 300)}, 300018),
    ]
    for fields, code in cases:
        reply = await add(wx, media_id, **fields)
        assert errcode(reply) == code, (fields, reply)
        assert reply["errmsg"] and "goodsId" not in reply
    assert errcode(await wx.post(GOODS + "add", {"goods": {}})) == 200002
    other = await connect(wx.server, wx.session, "other")
    assert errcode(await add(other, media_id)) == 300006, "another app's image"
    # the limits pass: 14 汉字, 3 汉字, two decimals, a leading slash
    for fields in (
        {"name": "一二三四五六七八九十一二三四"},
        {"name": "茶杯子"},
        {"price": "0.01"},
        {"url": "/pages/a"},
    ):
        assert errcode(await add(wx, media_id, **fields)) == 0, fields
    assert (await wx.get(GOODS + "getapproved", offset=0, status=2))["total"] == 4


async def test_reviews_per_day(make_server, session):  # noqa: F811
    wx = await connect(await make_server(goods_reviews_per_day=2), session)
    await wx.server.apps.update_app(wx.app, {"goods_audit": "manual"})
    media_id = await cover(wx)
    first = await add(wx, media_id)
    await added(wx, media_id)
    reply = await add(wx, media_id)
    assert errcode(reply) == 300012 and "2 times a day" in reply["errmsg"], reply
    # withdrawing returns nothing: a new review counts too
    goods_id, audit_id = first["goodsId"], first["auditId"]
    assert errcode(await wx.post(GOODS + "resetaudit", {"goodsId": goods_id, "auditId": audit_id})) == 0
    assert errcode(await wx.post(GOODS + "audit", {"goodsId": goods_id})) == 300012


async def test_manual_review_through_the_rest_api(wx):
    rest = Rest(wx)
    body = await rest.call("PATCH", "/api/v1/app", 200, json={"goods_audit": "manual"})
    assert body["goods_audit"] == "manual"
    await rest.call("PATCH", "/api/v1/app", 400, json={"goods_audit": "sometimes"})
    media_id = await cover(wx)
    reply = await add(wx, media_id)
    goods_id, audit_id = reply["goodsId"], reply["auditId"]
    assert [g["goodsId"] for g in (await wx.get(GOODS + "getapproved", offset=0, status=1))["goods"]] == [goods_id]
    roomid, _ = await wx.room()
    assert errcode(await wx.post(ROOM + "addgoods", {"ids": [goods_id], "roomId": roomid})) == 300025
    assert errcode(await wx.post(GOODS + "delete", {"goodsId": goods_id})) == 300014
    update = {"goodsInfo": {"goodsId": goods_id, "price": 9.9}}
    assert errcode(await wx.post(GOODS + "update", update)) == 300010, "in review"
    assert errcode(await wx.post(GOODS + "audit", {"goodsId": goods_id})) == 300010, "in review already"
    reset = {"goodsId": goods_id, "auditId": audit_id + 1000}
    assert errcode(await wx.post(GOODS + "resetaudit", reset)) == 300010, "another review"
    assert errcode(await wx.post(GOODS + "resetaudit", {"goodsId": 999999, "auditId": audit_id})) == 300024
    assert errcode(await wx.post(GOODS + "resetaudit", {"goodsId": goods_id, "auditId": audit_id})) == 0
    assert (await rest.goods())[str(goods_id)]["audit_status"] == 0
    await rest.decide(goods_id, True, status=409)  # nothing to decide: not in review

    again = await wx.post(GOODS + "audit", {"goodsId": goods_id})
    assert errcode(again) == 0 and again["auditId"] > audit_id
    rejected = await rest.decide(goods_id, False, reason="封面模糊")
    assert (rejected["audit_status"], rejected["audit_reason"], rejected["price"]) == (3, "封面模糊", 1990)
    listed = await rest.goods()
    assert listed[str(goods_id)]["audit_status"] == 3
    assert listed[str(goods_id)]["cover_img_url"] == f"{wx.base}/media/{media_id}"
    assert (await wx.get(GOODS + "getapproved", offset=0, status=3))["total"] == 1
    assert errcode(await wx.post(GOODS + "audit", {"goodsId": goods_id})) == 0, "rejected goods may be resubmitted"
    assert (await rest.decide(goods_id, True))["audit_status"] == 2
    assert errcode(await wx.post(ROOM + "addgoods", {"ids": [goods_id], "roomId": roomid})) == 0

    await rest.decide(goods_id, "yes", status=400)  # type: ignore[arg-type]
    await rest.decide(999999, True, status=404)
    other = await connect(wx.server, wx.session, "other")
    path = f"/api/v1/apps/{other.app.appid}/goods/{goods_id}/audit"
    await rest.call("POST", path, 401, json={"approve": True})  # not this token's app
    await rest.call("GET", f"/api/v1/apps/{other.app.appid}/goods", 401)


async def test_webhook_review(make_server, session, receiver):  # noqa: F811
    wx = await connect(await make_server(webhook_retry_seconds=[0.05]), session)
    hook = await receiver()
    await wx.server.apps.update_app(wx.app, {"webhook_url": hook.url, "goods_audit": "webhook"})
    reply = await add(wx, await cover(wx), name="待审核商品")
    goods_id = reply["goodsId"]
    await hook.wait_calls(1)
    headers, body = hook.calls[0]
    assert headers["X-Minilive-Event"] == "goods_audit" and body["event"] == "goods_audit"
    assert body["sign"] == hashlib.md5((wx.app.push_key + str(body["t"])).encode()).hexdigest()
    data = body["data"]
    assert (data["goods_id"], data["audit_id"], data["goods"]["name"]) == (goods_id, reply["auditId"], "待审核商品")
    assert data["decide"] == f"POST /api/v1/apps/{wx.app.appid}/goods/{goods_id}/audit"
    assert (await wx.post(WAREHOUSE, {"goods_ids": [goods_id]}))["goods"][0]["audit_status"] == 1
    # the team's moderation answers through the REST route
    await Rest(wx).decide(goods_id, True)
    assert (await wx.post(WAREHOUSE, {"goods_ids": [goods_id]}))["goods"][0]["audit_status"] == 2


async def test_update_rules(wx):
    await wx.server.apps.update_app(wx.app, {"goods_audit": "manual"})
    media_id = await cover(wx)
    reply = await add(wx, media_id)
    goods_id = reply["goodsId"]
    await wx.post(GOODS + "resetaudit", {"goodsId": goods_id, "auditId": reply["auditId"]})
    # not audited: everything may change
    change = {
        "goodsId": goods_id,
        "name": "新名字茶杯",
        "url": "pages/new/new",
        "priceType": 2,
        "price": 1,
        "price2": 2,
    }
    assert errcode(await wx.post(GOODS + "update", {"goodsInfo": change})) == 0
    listed = (await Rest(wx).goods())[str(goods_id)]
    assert (listed["name"], listed["url"], listed["price_type"], listed["price"], listed["price2"]) == (
        "新名字茶杯",
        "pages/new/new",
        2,
        100,
        200,
    )
    bad = {"goodsInfo": {"goodsId": goods_id, "price": 3}}  # the range would become 3..2
    assert errcode(await wx.post(GOODS + "update", bad)) == 300003
    assert errcode(await wx.post(GOODS + "update", {"goodsInfo": {"goodsId": 999999, "price": 3}})) == 300024
    await wx.post(GOODS + "audit", {"goodsId": goods_id})
    await Rest(wx).decide(goods_id, True)

    # approved: prices only, and the rooms holding it show the new ones
    roomid, _ = await wx.room()
    assert errcode(await wx.post(ROOM + "addgoods", {"ids": [goods_id], "roomId": roomid})) == 0
    bus = Bus(wx)
    reply = await wx.post(GOODS + "update", {"goodsInfo": {"goodsId": goods_id, "name": "再改名字"}})
    assert errcode(reply) == 300010 and "name" in reply["errmsg"], reply
    prices = {"goodsId": goods_id, "priceType": 3, "price": 29.9, "price2": 19.9}
    assert errcode(await wx.post(GOODS + "update", {"goodsInfo": prices})) == 0
    [shown] = await room_goods(wx, roomid)
    assert (shown["name"], shown["price_type"], shown["price"], shown["price2"]) == ("新名字茶杯", 3, 2990, 1990)
    message = await bus.next(roomid, "update")
    assert message["goods"] == shown and message["type"] == "goods"


async def test_goods_keys(wx):
    assert await wx.get(GOODS + "getkey") == {"errcode": 0, "errmsg": "ok", "vendorGoodsKey": []}
    assert errcode(await wx.post(GOODS + "setkey", {"goodsKey": ["productId", "sid"]})) == 0
    assert (await wx.get(GOODS + "getkey"))["vendorGoodsKey"] == ["productId", "sid"]
    for bad in ("productId", [], [1], [""], None):
        reply = await wx.post(GOODS + "setkey", {"goodsKey": bad})
        assert errcode(reply) == 200002 and "Array<string>" in reply["errmsg"], bad
    assert errcode(await wx.get(GOODS + "setkey")) == 43002


# ---------------------------------------------------------------- goods in a room


async def test_room_goods(make_server, session):  # noqa: F811
    wx = await connect(await make_server(max_room_goods=3), session)
    media_id = await cover(wx)
    tea = await added(wx, media_id, name="红茶礼盒", price=19.9)
    cup = await added(wx, media_id, name="茶杯子", priceType=2, price=0.01, price2=1)
    pot = await added(wx, media_id, name="紫砂茶壶", priceType=3, price=300, price2=199.99)
    mat = await added(wx, media_id, name="竹茶席")
    roomid, _ = await wx.room()
    bus = Bus(wx)

    assert errcode(await wx.post(ROOM + "addgoods", {"ids": [tea, 999999], "roomId": roomid})) == 300024
    assert await room_goods(wx, roomid) == [], "nothing imported when one is missing"
    assert errcode(await wx.post(ROOM + "addgoods", {"ids": [tea, cup], "roomId": 999999})) == 300022
    assert errcode(await wx.post(ROOM + "addgoods", {"ids": [tea, cup], "roomId": roomid})) == 0
    message = await bus.next(roomid, "add")
    assert [g["goods_id"] for g in message["goods"]] == [tea, cup]
    assert errcode(await wx.post(ROOM + "addgoods", {"ids": [cup, pot], "roomId": roomid})) == 0, "cup again: kept"
    assert errcode(await wx.post(ROOM + "addgoods", {"ids": [mat], "roomId": roomid})) == 300033

    goods = await room_goods(wx, roomid)
    assert [g["goods_id"] for g in goods] == [tea, cup, pot]
    assert all(set(g) == GOODS_FIELDS for g in goods)
    assert goods[0] == {
        "name": "红茶礼盒",
        "cover_img": f"{wx.base}/media/{media_id}",
        "url": "pages/goods/detail?id=7",
        "price": 1990,
        "price2": 0,
        "price_type": 1,
        "goods_id": tea,
        "third_party_appid": "",
    }
    assert [(g["price"], g["price2"]) for g in goods[1:]] == [(1, 100), (30000, 19999)], "yuan in, fen out"

    # on and off sale
    assert errcode(await wx.post(GOODS + "onsale", {"roomId": roomid, "goodsId": cup, "onSale": 0})) == 0
    message = await bus.next(roomid, "onsale")
    assert (message["on_sale"], message["goods"]["goods_id"], message["goods"]["price2"]) == (0, cup, 100)
    assert errcode(await wx.post(GOODS + "onsale", {"roomId": roomid, "goodsId": mat, "onSale": 0})) == 300053
    assert errcode(await wx.post(GOODS + "onsale", {"roomId": roomid, "goodsId": cup, "onSale": 2})) == 200002
    assert [g["goods_id"] for g in await room_goods(wx, roomid)] == [tea, cup, pot], "off sale stays listed"

    # sort: the goods named first, the others after
    assert errcode(await wx.post(GOODS + "sort", {"roomId": roomid, "goods": [{"goodsId": pot}]})) == 0
    assert (await bus.next(roomid, "sort"))["goods_ids"] == [pot, tea, cup]
    assert [g["goods_id"] for g in await room_goods(wx, roomid)] == [pot, tea, cup]
    twice = {"roomId": roomid, "goods": [{"goodsId": pot}, {"goodsId": pot}]}
    assert errcode(await wx.post(GOODS + "sort", twice)) == 200002
    assert errcode(await wx.post(GOODS + "sort", {"roomId": roomid, "goods": [{"goodsId": mat}]})) == 300053
    assert errcode(await wx.post(GOODS + "sort", {"roomId": roomid, "goods": [pot]})) == 200002

    # delete from the room; then from the library, which takes it out of rooms too
    assert errcode(await wx.post(GOODS + "deleteInRoom", {"roomId": roomid, "goodsId": tea})) == 0
    assert (await bus.next(roomid, "delete"))["goods_id"] == tea
    assert errcode(await wx.post(GOODS + "deleteInRoom", {"roomId": roomid, "goodsId": tea})) == 300053
    assert errcode(await wx.post(GOODS + "delete", {"goodsId": pot})) == 0
    assert (await bus.next(roomid, "delete"))["goods_id"] == pot
    assert [g["goods_id"] for g in await room_goods(wx, roomid)] == [cup]
    assert errcode(await wx.post(GOODS + "delete", {"goodsId": pot})) == 300015
    assert errcode(await wx.post(ROOM + "addgoods", {"ids": [pot], "roomId": roomid})) == 300024

    # an ended room's goods stay as they were
    await wx.server.store.transition(roomid, {LiveStatus.NOT_STARTED}, LiveStatus.ENDED, {})
    assert errcode(await wx.post(ROOM + "addgoods", {"ids": [mat], "roomId": roomid})) == 300023
    assert errcode(await wx.post(GOODS + "delete", {"goodsId": cup})) == 0
    assert [g["goods_id"] for g in await room_goods(wx, roomid)] == [cup]


async def test_push_while_live(wx):
    media_id = await cover(wx)
    tea = await added(wx, media_id, name="红茶礼盒")
    cup = await added(wx, media_id, name="茶杯子", price=0.5)
    roomid, _ = await wx.room()
    await wx.post(ROOM + "addgoods", {"ids": [tea, cup], "roomId": roomid})
    bus = Bus(wx)
    assert errcode(await wx.post(GOODS + "push", {"roomId": roomid, "goodsId": tea})) == 300023, "not live"
    await go_live(wx.server, await wx.server.store.get_room(roomid))
    assert (await wx.server.store.get_room(roomid)).live_status == LiveStatus.LIVE

    clock = [time.time()]
    wx.server.goods.clock = lambda: clock[0]
    assert errcode(await wx.post(GOODS + "push", {"roomId": roomid, "goodsId": tea})) == 0
    message = await bus.next(roomid, "push")
    assert message == {
        "type": "goods",
        "action": "push",
        "goods": (await room_goods(wx, roomid))[0],
        "time": clock[0],
    }
    assert message["goods"]["goods_id"] == tea and message["goods"]["price"] == 1990
    # one push at a time, and the goods being pushed keep their sale
    reply = await wx.post(GOODS + "push", {"roomId": roomid, "goodsId": cup})
    assert errcode(reply) == 300047 and f"goods {tea}" in reply["errmsg"], reply
    assert errcode(await wx.post(GOODS + "onsale", {"roomId": roomid, "goodsId": tea, "onSale": 0})) == 300049
    assert errcode(await wx.post(GOODS + "onsale", {"roomId": roomid, "goodsId": cup, "onSale": 0})) == 0
    clock[0] += wx.server.settings.rooms.goods_push_seconds + 0.5
    assert errcode(await wx.post(GOODS + "push", {"roomId": roomid, "goodsId": cup})) == 300052, "off sale"
    assert errcode(await wx.post(GOODS + "onsale", {"roomId": roomid, "goodsId": cup, "onSale": 1})) == 0
    assert errcode(await wx.post(GOODS + "push", {"roomId": roomid, "goodsId": cup})) == 0
    assert (await bus.next(roomid, "push"))["goods"]["price"] == 50
    clock[0] += 10
    other = await added(wx, media_id, name="不在直播间")
    assert errcode(await wx.post(GOODS + "push", {"roomId": roomid, "goodsId": other})) == 300053
    assert errcode(await wx.post(GOODS + "push", {"roomId": roomid})) == 200002
    pushes = await wx.server.goods.pushes(roomid)
    assert [p["goods_id"] for p in pushes] == [tea, cup], "each push is kept for the explainer clips"


async def test_redis_backed_server(make_server, session, redis_url):  # noqa: F811
    wx = await connect(await make_server(redis=redis_url), session)
    tea = await added(wx, await cover(wx), name="红茶礼盒", price="0.01")
    roomid, _ = await wx.room()
    assert errcode(await wx.post(ROOM + "addgoods", {"ids": [tea], "roomId": roomid})) == 0
    assert [(g["goods_id"], g["price"]) for g in await room_goods(wx, roomid)] == [(tea, 1)]
    await go_live(wx.server, await wx.server.store.get_room(roomid))
    bus = Bus(wx)
    assert errcode(await wx.post(GOODS + "push", {"roomId": roomid, "goodsId": tea})) == 0
    assert (await bus.next(roomid, "push"))["goods"]["goods_id"] == tea
    assert (await wx.get(GOODS + "getapproved", offset=0, status=2))["total"] == 1


async def test_cli_sets_the_review_mode(server):
    app = await server.apps.create_app("shop")
    data_dir = str(server.settings.data_dir)
    cli = (sys.executable, "-m", "api.cli", "app", "goods-audit")
    code, out, err = await run(*cli, app.appid, "webhook", "--json", "--data-dir", data_dir)
    assert code == 0, err
    assert json.loads(out) == {"appid": app.appid, "goods_audit": "webhook"}
    assert (await server.store.get_app(app.appid)).goods_audit == "webhook"
    code, _, err = await run(sys.executable, "-m", "api.cli", "app", "goods-audit", app.appid, "never")
    assert code == 2 and b"invalid choice" in err
    code, _, err = await run(
        sys.executable, "-m", "api.cli", "app", "goods-audit", "wxnone", "auto", "--data-dir", data_dir
    )
    assert code == 1 and b"no app wxnone" in err


async def test_unknown_bodies_never_break(wx):
    for path in ("add", "update", "delete", "resetaudit", "audit", "onsale", "push", "sort", "deleteInRoom"):
        for body in ("not json", "[1]", json.dumps({"goodsInfo": []}), json.dumps({"goodsId": "x", "roomId": []})):
            reply = await wx.post(GOODS + path, body)
            assert errcode(reply) in (47001, 200002), (path, body, reply)
    async with aiohttp.ClientSession() as plain, plain.post(wx.base + GOODS + "add") as response:
        assert (await response.json())["errcode"] == 41001


async def test_rest_answers_match_the_document(wx):
    await wx.server.apps.update_app(wx.app, {"goods_audit": "manual"})
    goods_id = await added(wx, await cover(wx))
    async with aiohttp.ClientSession(wx.base) as rest:
        async with rest.get("/api/v1/openapi.json") as response:
            api = Api(rest, await response.json())
        rest.headers["Authorization"] = f"Bearer {wx.token}"
        listing, decision = "/api/v1/apps/{appid}/goods", "/api/v1/apps/{appid}/goods/{goods_id}/audit"
        mine = f"/api/v1/apps/{wx.app.appid}/goods"
        assert (await api.call("GET", mine, 200, listing))["goods"][0]["audit_status"] == 1
        assert (await api.call("GET", mine + "?status=2", 200, listing))["total"] == 0
        await api.call("GET", mine + "?status=x", 400, listing)
        decided = await api.call("POST", f"{mine}/{goods_id}/audit", 200, decision, json={"approve": True})
        assert decided["audit_status"] == 2
        await api.call("POST", f"{mine}/{goods_id}/audit", 409, decision, json={"approve": False})
        await api.call("POST", f"{mine}/999999/audit", 404, decision, json={"approve": False})
        await api.call("POST", f"{mine}/{goods_id}/audit", 400, decision, json={"reason": "no verdict"})
        await api.call("POST", f"/api/v1/apps/wxother/goods/{goods_id}/audit", 401, decision, json={"approve": True})
        await api.call("PATCH", "/api/v1/app", 200, "/api/v1/app", json={"goods_audit": "auto"})
        await api.call("GET", "/api/v1/app", 200, "/api/v1/app")


@needs_ffmpeg
async def test_explainer_video_is_cut_between_two_pushes(make_server, session, tmp_path):  # noqa: F811
    server = await make_server(allow_anonymous_publish=False, segment_seconds=1.0, goods_push_seconds=0.5)
    wx = await connect(server, session)
    media_id = await cover(wx)
    tea, cup, mat = [await added(wx, media_id, name=name) for name in ("红茶礼盒", "茶杯子", "竹茶席")]
    roomid, _ = await wx.room(closeReplay=0)  # the room records: the clips come from its recording
    await wx.post(ROOM + "addgoods", {"ids": [tea, cup, mat], "roomId": roomid})
    video = GOODS + "getVideo"
    assert errcode(await wx.post(video, {"roomId": roomid, "goodsId": tea})) == 300044, "never pushed"
    assert errcode(await wx.post(video, {"roomId": 999999, "goodsId": tea})) == 300022

    room = await server.store.get_room(roomid)
    pub = await publish((await wx.get(ROOM + "getpushurl", roomId=roomid))["pushAddr"], seconds=12)
    try:
        await wait_status(server, room, LiveStatus.LIVE)
        await asyncio.sleep(1.5)  # the recording has begun
        assert errcode(await wx.post(GOODS + "push", {"roomId": roomid, "goodsId": tea})) == 0
        reply = await wx.post(video, {"roomId": roomid, "goodsId": tea})
        assert errcode(reply) == 300045 and "still being explained" in reply["errmsg"], reply
        await asyncio.sleep(3)
        assert errcode(await wx.post(GOODS + "push", {"roomId": roomid, "goodsId": cup})) == 0
        pushes = await server.goods.pushes(roomid)
        explained = pushes[1]["time"] - pushes[0]["time"]
        deadline = time.monotonic() + 15
        while errcode(reply := await wx.post(video, {"roomId": roomid, "goodsId": tea})) == 300045:
            assert time.monotonic() < deadline, reply  # until the segment holding the end is on disk
            await asyncio.sleep(0.3)
        assert errcode(reply) == 0 and reply["url"].endswith(".mp4"), reply
        assert reply["url"].startswith(f"{wx.base}/replays/")
        assert errcode(await wx.post(video, {"roomId": roomid, "goodsId": cup})) == 300045, "still explained"
        assert errcode(await wx.post(video, {"roomId": roomid, "goodsId": mat})) == 300044
    finally:
        await pub.stop()
    left = time.time() - pushes[1]["time"]  # of the live after the last push

    async with wx.session.get(reply["url"]) as response:
        assert response.status == 200
        clip = tmp_path / "explainer.mp4"
        clip.write_bytes(await response.read())
    duration, keyframe = await clip_duration(clip)
    # From the keyframe at or before the push (a GOP is 1 s) to the next push.
    assert keyframe and explained - 0.2 <= duration <= explained + 1.2, (duration, explained)

    # Once the live is over, the last goods pushed is explained up to the end of the recording.
    await server.room_status.admin_action(wx.app, roomid, "end")
    reply = await wx.post(video, {"roomId": roomid, "goodsId": cup})
    assert errcode(reply) == 0 and reply["url"].endswith(".mp4"), reply
    async with wx.session.get(reply["url"]) as response:
        assert response.status == 200
        (tmp_path / "last.mp4").write_bytes(await response.read())
    duration, keyframe = await clip_duration(tmp_path / "last.mp4")
    assert keyframe and left - 1.5 <= duration <= left + 1.2, (duration, left)
    assert errcode(await wx.post(ROOM + "deleteroom", {"id": roomid})) == 0
    assert await server.goods.pushes(roomid) == [], "a deleted room's pushes go with it"


async def test_a_wechat_sdk_drives_the_goods_api(wx):
    """wechatpy (no goods methods of its own: its generic calls, as integrations use them)."""
    client = sdk_client(wx.server, wx.app)
    media_id = await cover(wx)
    reply = await call(client.wxa._post, "wxaapi/broadcast/goods/add", data=info(media_id, price=29.9))
    listed = await call(client.wxa._get, "wxaapi/broadcast/goods/getapproved", params={"offset": 0, "status": 2})
    assert [(g["goodsId"], g["price"]) for g in listed["goods"]] == [(reply["goodsId"], 29.9)]
    with pytest.raises(WeChatClientException) as refused:
        await call(client.wxa._post, "wxaapi/broadcast/goods/add", data=info(media_id, price=1.001))
    assert refused.value.errcode == 300003 and "more than two decimals" in refused.value.errmsg
