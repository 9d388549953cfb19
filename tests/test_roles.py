"""Roles, sub-anchors and assistants over the official API, real HTTP against a real server: shapes,
paging and keyword search, limits and every error code."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from api.roles import LIMITS, Role
from tests.test_wechat_api import ROOM, Wx, connect, errcode

ROLE = "/wxaapi/broadcast/role/"
MEMBER_FIELDS = {"headingimg", "nickname", "openid", "roleList", "updateTimestamp", "username"}


@pytest.fixture(name="wx")
async def wechat_client(make_server) -> AsyncIterator[Wx]:
    """A new app talking to a new server as a WeChat back end does."""
    async with aiohttp.ClientSession() as session:
        yield await connect(await make_server(), session)


async def add_role(wx: Wx, username: str, role: int) -> int:
    return errcode(await wx.post(ROLE + "addrole", {"username": username, "role": role}))


async def delete_role(wx: Wx, username: str, role: int) -> int:
    return errcode(await wx.post(ROLE + "deleterole", {"username": username, "role": role}))


async def role_list(wx: Wx, **query: object) -> dict:
    reply = await wx.get(ROLE + "getrolelist", **query)
    assert reply["errcode"] == 0, reply
    return reply


async def test_add_list_and_delete_roles(wx):
    assert await wx.post(ROLE + "addrole", {"username": "Boss_01", "role": 1}) == {"errcode": 0, "errmsg": "ok"}
    assert await add_role(wx, "anchor-amy", 2) == 0
    assert await add_role(wx, "anchor-amy", 3) == 0  # a second role of the same member
    assert await add_role(wx, "operator_bob", 3) == 0

    listed = await role_list(wx)
    assert listed["total"] == 3 and len(listed["list"]) == 3
    assert all(set(m) == MEMBER_FIELDS for m in listed["list"])
    by_name = {m["username"]: m for m in listed["list"]}
    assert by_name["anchor-amy"]["roleList"] == [2, 3]
    assert by_name["Boss_01"]["roleList"] == [1]
    assert all(abs(m["updateTimestamp"] - time.time()) < 60 for m in listed["list"])

    assert sorted(m["username"] for m in (await role_list(wx, role=3))["list"]) == ["anchor-amy", "operator_bob"]
    assert (await role_list(wx, role=1))["total"] == 1
    assert (await role_list(wx, role=0)) == {"errcode": 0, "errmsg": "ok", "total": 0, "list": []}
    # keyword: part of the WeChat id, any case
    found = await role_list(wx, keyword="ANCHOR")
    assert [m["username"] for m in found["list"]] == ["anchor-amy"] and found["total"] == 1
    assert (await role_list(wx, keyword="nobody"))["total"] == 0

    assert await delete_role(wx, "anchor-amy", 3) == 0
    assert (await role_list(wx, keyword="amy"))["list"][0]["roleList"] == [2]
    assert await delete_role(wx, "anchor-amy", 3) == 2003  # no longer held
    assert await delete_role(wx, "operator_bob", 3) == 0
    assert (await role_list(wx))["total"] == 2


async def test_paging_newest_first(wx):
    for n in range(35):
        assert await add_role(wx, f"operator_{n:02}", 3) == 0
    first = await role_list(wx)
    assert first["total"] == 35 and len(first["list"]) == 10  # limit 10 by default
    page = await role_list(wx, offset=30, limit=30)
    assert page["total"] == 35 and len(page["list"]) == 5
    assert len((await role_list(wx, limit=100))["list"]) == 30  # at most 30
    everyone = [m["username"] for m in (await role_list(wx, limit=30))["list"]] + [m["username"] for m in page["list"]]
    assert sorted(everyone) == [f"operator_{n:02}" for n in range(35)]
    stamps = [m["updateTimestamp"] for m in (await role_list(wx, limit=30))["list"]]
    assert stamps == sorted(stamps, reverse=True)
    for bad in ({"role": 4}, {"role": -2}, {"offset": -1}, {"limit": 0}, {"limit": "x"}):
        reply = await wx.get(ROLE + "getrolelist", **bad)
        assert errcode(reply) == 200002, (bad, reply)
    assert "role must be -1 or 0 or 1 or 2 or 3" in (await wx.get(ROLE + "getrolelist", role=9))["errmsg"]


async def test_role_error_codes(wx):
    for bad in ("abc12", "1abcdef", "a" * 21, "有中文的微信号", "bad name!", ""):
        reply = await wx.post(ROLE + "addrole", {"username": bad, "role": 2})
        assert errcode(reply) == 400001 and "6-20 letters" in reply["errmsg"], (bad, reply)
    assert await delete_role(wx, "1abcdef", 2) == 400001
    for role in (0, 4, -1, "admin"):
        assert await add_role(wx, "valid_user", role) == 200002, role
        assert await delete_role(wx, "valid_user", role) == 200002, role
    assert errcode(await wx.post(ROLE + "addrole", {"role": 1})) == 200002
    assert errcode(await wx.post(ROLE + "addrole", {"username": 12345678, "role": 1})) == 200002
    assert await add_role(wx, "valid_user", 1) == 0
    duplicate = await wx.post(ROLE + "addrole", {"username": "valid_user", "role": 1})
    assert errcode(duplicate) == 400004 and "already admin" in duplicate["errmsg"]
    assert await delete_role(wx, "someone_else", 1) == 2003
    assert errcode(await wx.get(ROLE + "addrole")) == 43002
    assert errcode(await wx.post(ROLE + "getrolelist", {})) == 43001
    assert errcode(await wx.post(ROLE + "addrole", {"username": "x_user_1", "role": 1}, access_token="nope")) == 40001


async def test_role_limits(wx):
    for n in range(LIMITS[Role.ADMIN]):
        assert await add_role(wx, f"admin_{n:02}", 1) == 0
    over = await wx.post(ROLE + "addrole", {"username": "admin_more", "role": 1})
    assert errcode(over) == 400003 and "at most 10" in over["errmsg"]
    assert (await role_list(wx, role=1))["total"] == 10, "the refused member was not kept"
    assert await add_role(wx, "admin_more", 3) == 0  # other roles have their own limits
    # Anchors: 500, the 500th of them added over HTTP.
    store, app = wx.server.store, wx.app
    for n in range(LIMITS[Role.ANCHOR] - 1):
        assert await store.add_doc(f"roles:{app.appid}:2", f"anchor_{n:03}", {"username": f"anchor_{n:03}", "time": 1})
    assert await add_role(wx, "anchor_last", 2) == 0
    assert await add_role(wx, "anchor_over", 2) == 400003
    assert await delete_role(wx, "anchor_000", 2) == 0
    assert await add_role(wx, "anchor_over", 2) == 0


async def test_anchor_with_rooms_not_started_keeps_the_role(wx):
    assert await add_role(wx, "anchor_wx", 2) == 0
    roomid, _ = await wx.room()  # anchorWechat anchor_wx, not started (102)
    refused = await wx.post(ROLE + "deleterole", {"username": "anchor_wx", "role": 2})
    assert errcode(refused) == 400005 and str(roomid) in refused["errmsg"]
    assert await add_role(wx, "anchor_wx", 3) == 0
    assert await delete_role(wx, "anchor_wx", 3) == 0, "only the anchor role is held back"
    other = await connect(wx.server, wx.session, "other app")
    assert await add_role(other, "anchor_wx", 2) == 0
    assert await delete_role(other, "anchor_wx", 2) == 0, "another app's rooms do not count"
    await wx.server.room_status.admin_action(wx.app, roomid, "end")
    assert await delete_role(wx, "anchor_wx", 2) == 0


async def test_create_room_may_require_the_anchor_role(make_server):
    async with aiohttp.ClientSession() as session:
        await anchor_role_required(await connect(await make_server(require_anchor_role=True), session))


async def anchor_role_required(wx: Wx) -> None:
    media_id = await wx.media_id()
    refused = await wx.create(media_id, anchorWechat="no_role_yet")
    assert errcode(refused) == 300030 and "role/addrole" in refused["errmsg"]
    assert await add_role(wx, "no_role_yet", 3) == 0
    assert errcode(await wx.create(media_id, anchorWechat="no_role_yet")) == 300030, "an operator is no anchor"
    assert await add_role(wx, "no_role_yet", 2) == 0
    created = await wx.create(media_id, anchorWechat="no_role_yet")
    assert errcode(created) == 0
    roomid = created["roomId"]
    edit = {**(await wx.server.rooms.room(wx.app, roomid)).to_dict()}
    body = {
        "id": roomid,
        "name": edit["name"],
        "coverImg": media_id,
        "shareImg": media_id,
        "feedsImg": media_id,
        "startTime": edit["start_time"],
        "endTime": edit["end_time"],
        "anchorName": edit["anchor_name"],
        "closeLike": 0,
        "closeGoods": 0,
        "closeComment": 0,
    }
    assert errcode(await wx.post(ROOM + "editroom", {**body, "anchorWechat": "other_anchor"})) == 300030
    assert errcode(await wx.post(ROOM + "editroom", {**body, "anchorWechat": "no_role_yet"})) == 0


async def test_sub_anchor_add_modify_delete(wx):
    roomid, _ = await wx.room()
    sub = ROOM + "addsubanchor"
    assert errcode(await wx.post(ROOM + "modifysubanchor", {"roomId": roomid, "username": "second_wx"})) == 200002
    assert errcode(await wx.post(ROOM + "deletesubanchor", {"roomId": roomid})) == 200002
    is_anchor = await wx.post(sub, {"roomId": roomid, "username": "anchor_wx"})
    assert errcode(is_anchor) == 500005 and "副号不能和主号重复" in is_anchor["errmsg"]
    for bad in ("", "x1", "9starts_digit", "sp ace_name"):
        assert errcode(await wx.post(sub, {"roomId": roomid, "username": bad})) == 300039, bad
    assert errcode(await wx.post(sub, {"roomId": roomid})) == 200002
    assert errcode(await wx.post(sub, {"roomId": roomid, "username": "second_wx"})) == 0
    for again in ("second_wx", "third_wx"):
        duplicate = await wx.post(sub, {"roomId": roomid, "username": again})
        assert errcode(duplicate) == 500004 and "modifysubanchor" in duplicate["errmsg"], again
    assert errcode(await wx.post(ROOM + "modifysubanchor", {"roomId": roomid, "username": "anchor_wx"})) == 500005
    assert errcode(await wx.post(ROOM + "modifysubanchor", {"roomId": roomid, "username": "third_wx"})) == 0
    assert (await wx.get(ROOM + "getsubanchor", roomId=roomid))["username"] == "third_wx"
    assert errcode(await wx.post(ROOM + "deletesubanchor", {"roomId": roomid})) == 0
    assert (await wx.get(ROOM + "getsubanchor", roomId=roomid))["username"] == ""
    assert errcode(await wx.post(sub, {"roomId": 999999, "username": "second_wx"})) == 300022


async def test_assistants_rules(wx):
    roomid, _ = await wx.room()
    add = ROOM + "addassistant"
    missing_nickname = await wx.post(add, {"roomId": roomid, "users": [{"username": "helper_1"}]})
    assert errcode(missing_nickname) == 200002 and "nickname is required" in missing_nickname["errmsg"]
    for user in ({"username": "helper_1", "nickname": ""}, {"username": "h1", "nickname": "x"}, {"nickname": "x"}):
        assert errcode(await wx.post(add, {"roomId": roomid, "users": [user]})) == 200002, user
    # all or nothing: one bad user and none is added
    mixed = [{"username": "helper_1", "nickname": "一号"}, {"username": "1bad", "nickname": "x"}]
    assert errcode(await wx.post(add, {"roomId": roomid, "users": mixed})) == 200002
    assert (await wx.get(ROOM + "getassistantlist", roomId=roomid))["count"] == 0

    users = [{"username": f"helper_{n}", "nickname": f"助手{n}"} for n in range(9)]
    assert errcode(await wx.post(add, {"roomId": roomid, "users": users})) == 0
    assert errcode(await wx.post(add, {"roomId": roomid, "users": users[:2]})) == 0, "already assistants: kept"
    two_more = [{"username": "helper_9", "nickname": "九"}, {"username": "helper_10", "nickname": "十"}]
    over = await wx.post(add, {"roomId": roomid, "users": two_more})
    assert errcode(over) == 200002 and "at most 10" in over["errmsg"]
    assert (await wx.get(ROOM + "getassistantlist", roomId=roomid))["count"] == 9
    assert errcode(await wx.post(add, {"roomId": roomid, "users": two_more[:1]})) == 0

    before = (await wx.server.rooms.room(wx.app, roomid)).assistants[0]["timestamp"]
    modify = ROOM + "modifyassistant"
    assert errcode(await wx.post(modify, {"roomId": roomid, "username": "helper_0", "nickname": ""})) == 200002
    stranger = await wx.post(modify, {"roomId": roomid, "username": "stranger_1", "nickname": "x"})
    assert errcode(stranger) == 200002 and "not an assistant" in stranger["errmsg"]
    assert errcode(await wx.post(modify, {"roomId": roomid, "username": "helper_0", "nickname": "新名"})) == 0
    changed = (await wx.server.rooms.room(wx.app, roomid)).assistants[0]
    assert changed["nickname"] == "新名" and changed["timestamp"] >= before
    remove = ROOM + "removeassistant"
    assert errcode(await wx.post(remove, {"roomId": roomid, "username": "stranger_1"})) == 200002
    assert errcode(await wx.post(remove, {"roomId": roomid, "username": "helper_0"})) == 0
    assert (await wx.get(ROOM + "getassistantlist", roomId=roomid))["count"] == 9
