"""The official API driven by a real SDK (wechatpy), as integrations drive it: its token handling,
its error parsing and its retries must work against minilive unchanged."""

from __future__ import annotations

import time

import pytest
from wechatpy.exceptions import WeChatClientException

from tests.conftest import add_images, official_room_body
from tests.wechat_sdk import call, sdk_client

ROOM = "wxaapi/broadcast/room/"


async def test_token_create_and_list(server):
    app = await server.apps.create_app("shop")
    await add_images(server, app.appid)
    client = sdk_client(server, app)
    token = await call(client.fetch_access_token)
    assert token["expires_in"] == 7200 and (await server.apps.app_for_token(token["access_token"])) == app

    created = await call(client.wxa._post, ROOM + "create", data=official_room_body(app.appid))
    roomid = created["roomId"]
    assert created["errcode"] == 0 and (await server.store.get_room(roomid)).appid == app.appid
    listed = await call(client.wxa._post, "wxa/business/getliveinfo", data={"start": 0, "limit": 10})
    assert [(r["roomid"], r["live_status"]) for r in listed["room_info"]] == [(roomid, 102)]
    push = await call(client.wxa._get, ROOM + "getpushurl", params={"roomId": roomid})
    assert push["pushAddr"].startswith(f"rtmp://127.0.0.1:{server.rtmp_port}/live/{app.appid}-{roomid}?txSecret=")
    assert await call(client.misc.get_wechat_ips) == ["127.0.0.1"], "wechatpy's own getcallbackip call"


async def test_errors_surface_as_sdk_exceptions(server):
    app = await server.apps.create_app("shop")
    client = sdk_client(server, app)
    with pytest.raises(WeChatClientException) as unknown:
        await call(client.wxa._post, "wxaapi/broadcast/nosuchthing", data={})
    assert unknown.value.errcode == 48001 and "api unauthorized" in unknown.value.errmsg
    with pytest.raises(WeChatClientException) as missing:
        await call(client.wxa._post, ROOM + "deleteroom", data={"id": 12345})
    assert missing.value.errcode == 300022
    with pytest.raises(WeChatClientException) as empty:
        await call(client.wxa._post, "wxa/business/getliveinfo", data={"start": 0, "limit": 10})
    assert empty.value.errcode == 9410000


async def test_an_expired_token_is_renewed_by_the_sdk(server):
    """42001 is what wechatpy (like WeChat's other SDKs) takes as "fetch a new token and retry"."""
    app = await server.apps.create_app("shop")
    strict, client = sdk_client(server, app, auto_retry=False), sdk_client(server, app)
    await call(strict.fetch_access_token)
    await call(client.fetch_access_token)
    old = client.access_token
    server.apps.clock = lambda: time.time() + 7201  # both tokens have expired (the SDKs' clocks disagree)
    with pytest.raises(WeChatClientException) as expired:
        await call(strict.wxa._post, "wxa/business/getliveinfo", data={"start": 0, "limit": 10})
    assert expired.value.errcode == 42001
    with pytest.raises(WeChatClientException) as empty:
        await call(client.wxa._post, "wxa/business/getliveinfo", data={"start": 0, "limit": 10})
    assert empty.value.errcode == 9410000, "the call went through with a new token"
    assert client.access_token != old
