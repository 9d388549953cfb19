"""Subscribers (the start reminder) over real HTTP: the REST routes (checked against the OpenAPI
document), the bus messages, the signed wxalive_follow_notify webhook, get_wxa_followers paging,
push_message and its daily rule, the subscribers_notify webhook when ffmpeg takes a room live, and a
Redis-backed pair of nodes."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
import redis.asyncio as aioredis

from api import subscribers as subscribers_module
from api.errors import ApiError
from api.models import LiveStatus
from api.server import Server
from tests.conftest import make_room, needs_ffmpeg, official_room_body, publish
from tests.test_openapi_responses import Api
from tests.test_rest_api import go_live
from tests.test_rooms_live import wait_status
from tests.test_webhooks import Receiver
from tests.test_wechat_api import ROOM, Wx, connect, errcode

FOLLOWERS = "/wxa/business/get_wxa_followers"
PUSH = "/wxa/business/push_message"
SUBS = "/api/v1/rooms/{id}/subscribers"  # the documented operation
FOLLOWER_FIELDS = {"openid", "subscribe_time", "room_status", "room_id"}


@pytest.fixture(name="hook")
async def webhook_receiver() -> AsyncIterator[Receiver]:
    """An app's webhook endpoint that answers 200."""
    receiver = Receiver([])
    await receiver.start()
    yield receiver
    await receiver.stop()


async def rest_client(server: Server, app) -> Api:  # type: ignore[no-untyped-def]
    """A REST client of ``app`` whose every answer is checked against the served OpenAPI document."""
    session = aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}")
    async with session.get("/api/v1/openapi.json") as response:
        document = await response.json()
    token = await server.apps.issue_token(app.appid, app.secret)
    session.headers["Authorization"] = f"Bearer {token.token}"
    return Api(session, document)


def bus_messages(server: Server) -> list[tuple[int, dict[str, Any]]]:
    heard: list[tuple[int, dict[str, Any]]] = []
    server.bus.subscribe(lambda roomid, message: heard.append((roomid, message)))
    return heard


async def until(condition, timeout: float = 5, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def signed(body: dict[str, Any], push_key: str) -> bool:
    return body["sign"] == hashlib.md5(f"{push_key}{body['t']}".encode()).hexdigest()


async def test_rest_subscribe_unsubscribe_with_bus_and_webhook(make_server, hook):
    server = await make_server(webhook_retry_seconds=[0.05])
    app, room = await make_room(server)
    app = await server.apps.update_app(app, {"webhook_url": hook.url})
    heard = bus_messages(server)
    api = await rest_client(server, app)
    path = f"/api/v1/rooms/{room.roomid}/subscribers"
    async with api.session:
        first = await api.call("POST", path, 201, SUBS, json={"openid": "o_user_1", "nickname": "小明"})
        assert first == {"subscribed": True, "subscribers": 1}
        again = await api.call("POST", path, 200, SUBS, json={"openid": "o_user_1"})
        assert again == {"subscribed": False, "subscribers": 1}
        assert (await api.call("POST", path, 201, SUBS, json={"openid": "o_user_2"}))["subscribers"] == 2

        listed = await api.call("GET", path, 200, SUBS)
        assert listed["total"] == 2 and listed["start"] == 0
        assert [(s["openid"], s["nickname"], s["room_status"]) for s in listed["subscribers"]] == [
            ("o_user_1", "小明", 102),
            ("o_user_2", "", 102),
        ]
        assert abs(listed["subscribers"][0]["subscribe_time"] - time.time()) < 60
        second_page = await api.call("GET", f"{path}?start=1&limit=1", 200, operation=SUBS)
        assert [s["openid"] for s in second_page["subscribers"]] == ["o_user_2"] and second_page["total"] == 2

        gone = f"{path}/o_user_1"
        operation = "/api/v1/rooms/{id}/subscribers/{openid}"
        assert await api.call("DELETE", gone, 200, operation) == {"unsubscribed": True, "subscribers": 1}
        assert await api.call("DELETE", gone, 200, operation) == {"unsubscribed": False, "subscribers": 1}

        # bad input: the REST error shape, never a traceback
        for body, code in (
            ({"openid": "has space"}, 200002),
            ({"openid": "x" * 65}, 200002),
            ({"openid": ""}, 200002),
            ({}, 200002),
            ({"openid": "o_user_3", "nickname": "n" * 65}, 200002),
            ({"openid": "o_user_3", "extra": 1}, 200002),
        ):
            error = await api.call("POST", path, 400, SUBS, json=body)
            assert error["error"]["code"] == code, body
        assert (await api.call("POST", path, 400, SUBS, data=b"not json"))["error"]["code"] == 47001
        assert (await api.call("GET", f"{path}?limit=0", 400, operation=SUBS))["error"]["code"] == 200002
        _, foreign = await make_room(server, "another app")
        await api.call("POST", f"/api/v1/rooms/{foreign.roomid}/subscribers", 404, SUBS, json={"openid": "o_user_3"})
        await server.room_status.admin_action(app, room.roomid, "end")
        ended = await api.call("POST", path, 409, SUBS, json={"openid": "o_user_3"})
        assert ended["error"]["code"] == 300023

    await until(lambda: len(heard) == 3, what="bus messages")
    assert heard == [  # nothing for a viewer subscribed already, or not subscribed
        (room.roomid, {"type": "subscribe", "openid": "o_user_1", "subscribers": 1}),
        (room.roomid, {"type": "subscribe", "openid": "o_user_2", "subscribers": 2}),
        (room.roomid, {"type": "unsubscribe", "openid": "o_user_1", "subscribers": 1}),
    ]
    await hook.wait_calls(4)  # three follow events and the room's end (status)
    follows = [(h, b) for h, b in hook.calls if b["event"] == "wxalive_follow_notify"]
    assert len(follows) == 3
    for headers, body in follows:
        assert signed(body, app.push_key) and headers["X-Minilive-Event"] == "wxalive_follow_notify"
        assert body["appid"] == app.appid and body["roomid"] == room.roomid
        assert abs(body["data"]["time"] - time.time()) < 60
    assert [{k: v for k, v in b["data"].items() if k != "time"} for _, b in follows] == [
        {"room_id": room.roomid, "user_openid": "o_user_1", "live_status": 102, "action": "add_follow"},
        {"room_id": room.roomid, "user_openid": "o_user_2", "live_status": 102, "action": "add_follow"},
        {"room_id": room.roomid, "user_openid": "o_user_1", "live_status": 102, "action": "del_follow"},
    ]


async def test_follow_status_is_101_102_or_103(make_server):
    server = await make_server()
    app, room = await make_room(server)
    await go_live(server, room)
    await server.room_status.admin_action(app, room.roomid, "pause")
    paused = await server.rooms.room(app, room.roomid)
    assert await server.subscribers.subscribe(paused, "o_paused", "")
    await server.room_status.admin_action(app, room.roomid, "end")
    ended = await server.rooms.room(app, room.roomid)
    assert await server.subscribers.unsubscribe(ended, "o_paused")
    assert subscribers_module.follow_status(LiveStatus.PAUSED) == 101
    assert subscribers_module.follow_status(LiveStatus.INTERRUPTED) == 101
    assert subscribers_module.follow_status(LiveStatus.EXPIRED) == 103
    assert (await server.subscribers.page(paused, 0, 10)) == ([], 0)


@pytest.fixture(name="wx")
async def wechat_client(make_server) -> AsyncIterator[Wx]:
    async with aiohttp.ClientSession() as session:
        yield await connect(await make_server(webhook_retry_seconds=[0.05]), session)


async def test_followers_pages_through_the_apps_subscribers(wx):
    server = wx.server
    a_id, _ = await wx.room()
    b_id, _ = await wx.room()
    a, b = await server.rooms.room(wx.app, a_id), await server.rooms.room(wx.app, b_id)
    order = []
    for n in range(7):
        room = a if n % 2 == 0 else b
        assert await server.subscribers.subscribe(room, f"o_{n}", f"user {n}")
        order.append((room.roomid, f"o_{n}"))
    assert await server.subscribers.unsubscribe(a, "o_2")
    assert await server.subscribers.subscribe(a, "o_2")  # subscribes again: now the latest
    order.remove((a_id, "o_2"))
    order.append((a_id, "o_2"))
    other = await connect(server, wx.session, "other app")
    other_id, _ = await other.room()
    assert await server.subscribers.subscribe(await server.rooms.room(other.app, other_id), "o_elsewhere")

    everyone = await wx.post(FOLLOWERS, {})
    assert everyone["errcode"] == 0 and len(everyone["followers"]) == 7
    assert all(set(f) == FOLLOWER_FIELDS for f in everyone["followers"])
    assert [(f["room_id"], f["openid"]) for f in everyone["followers"]] == order
    assert all(f["room_status"] == 102 and abs(f["subscribe_time"] - time.time()) < 60 for f in everyone["followers"])

    paged, page_break = [], 0
    for _ in range(5):
        page = await wx.post(FOLLOWERS, {"limit": 3, "page_break": page_break})
        paged += [(f["room_id"], f["openid"]) for f in page["followers"]]
        page_break = page["page_break"]
        if len(page["followers"]) < 3:
            break
    assert paged == order
    assert (await wx.post(FOLLOWERS, {"limit": 3, "page_break": page_break}))["followers"] == []
    assert await server.subscribers.subscribe(b, "o_late")
    later = await wx.post(FOLLOWERS, {"page_break": page_break})
    assert [f["openid"] for f in later["followers"]] == ["o_late"], "a page_break finds who came later"

    assert errcode(await wx.post(ROOM + "deleteroom", {"id": b_id})) == 0
    left = await wx.post(FOLLOWERS, {"limit": 2000})
    assert {f["room_id"] for f in left["followers"]} == {a_id}, "a deleted room's subscribers are gone"
    assert await server.store.list_docs(f"subscribers:{b_id}") == {}, "and not kept in the store"
    assert await server.store.count_docs(f"subscribers:{a_id}") == 4
    for bad in ({"limit": 0}, {"limit": 2001}, {"page_break": -1}, {"limit": "many"}):
        assert errcode(await wx.post(FOLLOWERS, bad)) == 200002, bad
    assert errcode(await wx.get(FOLLOWERS)) == 43002


async def test_push_message_once_a_day_per_app(wx, hook):
    server = wx.server
    await server.apps.update_app(wx.app, {"webhook_url": hook.url})
    a_id, _ = await wx.room()
    b_id, _ = await wx.room()
    users = ["o_user_1", "o_user_2"]
    not_live = await wx.post(PUSH, {"room_id": a_id, "user_openid": users})
    assert errcode(not_live) == 9410006 and "not live" in not_live["errmsg"]
    for bad in ([], "o_user_1", [1], ["bad id!"], [f"o_{n}" for n in range(2001)], None):
        assert errcode(await wx.post(PUSH, {"room_id": a_id, "user_openid": bad})) == 200002, bad
    assert errcode(await wx.post(PUSH, {"room_id": 999999, "user_openid": users})) == 300022
    await go_live(server, await server.rooms.room(wx.app, a_id))
    await go_live(server, await server.rooms.room(wx.app, b_id))

    # 23:59 in Shanghai (15:59 UTC): room A is pushed, twice; room B must wait for the next day there.
    shanghai = ZoneInfo("Asia/Shanghai")
    evening = datetime(2026, 12, 3, 23, 59, tzinfo=shanghai).timestamp()
    server.subscribers.clock = lambda: evening
    pushed = await wx.post(PUSH, {"room_id": a_id, "user_openid": users})
    assert pushed["errcode"] == 0 and isinstance(pushed["message_id"], str) and pushed["message_id"]
    again = await wx.post(PUSH, {"room_id": a_id, "user_openid": users[:1]})
    assert errcode(again) == 0 and again["message_id"] != pushed["message_id"]
    refused = await wx.post(PUSH, {"room_id": b_id, "user_openid": users})
    assert errcode(refused) == 9410005 and str(a_id) in refused["errmsg"]
    server.subscribers.clock = lambda: evening + 120  # 00:01 in Shanghai, still 16:01 on Dec 3 in UTC
    assert errcode(await wx.post(PUSH, {"room_id": b_id, "user_openid": users})) == 0

    await hook.wait_calls(5)  # A and B went live (status), three pushes
    pushes = [b for _, b in hook.calls if b["event"] == "push_message"]
    assert [(p["data"]["room_id"], p["data"]["user_openid"]) for p in pushes] == [
        (a_id, users),
        (a_id, users[:1]),
        (b_id, users),
    ]
    assert pushes[0]["data"]["message_id"] == pushed["message_id"] and all(signed(p, wx.app.push_key) for p in pushes)


async def test_push_day_follows_the_time_zone_setting(make_server):
    server = await make_server(time_zone="UTC")
    app, a = await make_room(server)
    b = await server.rooms.create_room(app, official_room_body(app.appid))
    await go_live(server, a)
    await go_live(server, b)
    a, b = await server.rooms.room(app, a.roomid), await server.rooms.room(app, b.roomid)
    evening = datetime(2026, 12, 3, 15, 59, tzinfo=ZoneInfo("UTC")).timestamp()  # 23:59 in Shanghai
    server.subscribers.clock = lambda: evening
    assert await server.subscribers.push(app, a, ["o_user_1"])
    server.subscribers.clock = lambda: evening + 120  # a new day in Shanghai, not in UTC
    with pytest.raises(ApiError) as refused:
        await server.subscribers.push(app, b, ["o_user_1"])
    assert refused.value.errcode == 9410005 and "(UTC)" in refused.value.errmsg
    server.subscribers.clock = lambda: evening + 8 * 3600 + 120
    assert await server.subscribers.push(app, b, ["o_user_1"])


@needs_ffmpeg
async def test_going_live_sends_the_subscribers_to_remind(make_server, hook, monkeypatch):
    monkeypatch.setattr(subscribers_module, "NOTIFY_BATCH", 2)
    server = await make_server(
        allow_anonymous_publish=False,
        grace_seconds=0.5,
        interrupt_grace_seconds=30,
        sweep_interval_seconds=0.2,
        webhook_retry_seconds=[0.05],
    )
    app, room = await make_room(server)
    app = await server.apps.update_app(app, {"webhook_url": hook.url})
    for n in range(3):
        assert await server.subscribers.subscribe(room, f"o_fan_{n}")
    await hook.wait_calls(3)  # the three follow events

    url = server.urls.push_url(app, room)
    pub = await publish(url)
    try:
        await wait_status(server, room, LiveStatus.LIVE)
        await hook.wait_calls(3 + 1 + 2)  # the status event and two batches
        notify = [b for _, b in hook.calls if b["event"] == "subscribers_notify"]
        assert [n["data"] for n in notify] == [
            {"room_id": room.roomid, "user_openid": ["o_fan_0", "o_fan_1"], "batch": 1, "batches": 2, "total": 3},
            {"room_id": room.roomid, "user_openid": ["o_fan_2"], "batch": 2, "batches": 2, "total": 3},
        ]
        assert all(signed(n, app.push_key) and n["live_status"] == 101 for n in notify)

        await pub.stop()  # the anchor drops and comes back: not a new start, no reminder
        await wait_status(server, room, LiveStatus.INTERRUPTED)
        pub = await publish(url)
        await wait_status(server, room, LiveStatus.LIVE)
        await hook.wait_calls(3 + 1 + 2 + 2)  # 101 -> 106 -> 101
        await asyncio.sleep(0.3)
        assert len([b for _, b in hook.calls if b["event"] == "subscribers_notify"]) == 2
    finally:
        await pub.stop()


async def test_subscribers_across_nodes_sharing_redis(make_server, redis_url):
    url = redis_url.rsplit("/", 1)[0] + "/7"
    admin = aioredis.from_url(url)
    await admin.flushdb()
    await admin.aclose()
    a = await make_server(redis=url)
    b = await make_server(redis=url)
    app, room = await make_room(a)
    heard_on_b = bus_messages(b)
    api = await rest_client(a, app)
    async with api.session:
        path = f"/api/v1/rooms/{room.roomid}/subscribers"
        assert (await api.call("POST", path, 201, SUBS, json={"openid": "o_node_a"}))["subscribers"] == 1
    assert await b.subscribers.subscribe(await b.rooms.room(app, room.roomid), "o_node_b")
    assert not await a.subscribers.subscribe(await a.rooms.room(app, room.roomid), "o_node_b")
    await until(lambda: len(heard_on_b) == 2, what="messages on node B")
    assert [m["subscribers"] for _, m in heard_on_b] == [1, 2]
    async with aiohttp.ClientSession() as session:
        token = await b.apps.issue_token(app.appid, app.secret)
        wx_b = Wx(b, session, app, token.token)
        listed = await wx_b.post(FOLLOWERS, {"limit": 1})
        assert [f["openid"] for f in listed["followers"]] == ["o_node_a"]
        rest = await wx_b.post(FOLLOWERS, {"page_break": listed["page_break"]})
        assert [f["openid"] for f in rest["followers"]] == ["o_node_b"]
