"""The mini-program's viewer page, scripted: the sample back end (examples/backend) and minilive serve
it over real HTTP, WebSockets and HTTP-FLV, in the order the page and the anchor's page make their calls:
login (code2session mocked) -> a viewer token from the back end -> the room channel -> the anchor
pushes (ffmpeg, on the push URL the back end gave) -> the status turns live -> the FLV URL plays ->
a comment round-trips -> subscribe -> the room ends -> the replay's HLS is served."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp

from examples.backend import Config
from examples.backend.wechat import mock_openid
from tests.conftest import make_room, needs_ffmpeg, probe_streams, publish
from tests.test_miniprogram_backend import call, http, start_backend  # noqa: F401 (fixtures)

ANCHOR_CODE, VIEWER_CODE = "anchor-login-code", "viewer-login-code"


async def next_of(ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 15, **fields: Any) -> dict:
    """The next channel message of type ``kind`` holding ``fields`` (others are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        message = await ws.receive_json(timeout=max(0.01, deadline - time.monotonic()))
        if message["type"] == kind and all(message.get(k) == v for k, v in fields.items()):
            return message


@needs_ffmpeg
async def test_the_viewer_page_flow(make_server, start_backend, http, caplog) -> None:  # noqa: F811 (fixtures)
    server = await make_server(allow_anonymous_publish=False)
    app, room = await make_room(server, closeReplay=0)
    minilive = f"http://127.0.0.1:{server.http_port}"
    backend = await start_backend(
        Config(
            minilive_url=minilive,
            appid=app.appid,
            secret=app.secret,
            mock_wechat="1",
            anchors=frozenset({mock_openid(ANCHOR_CODE)}),
        )
    )
    api = f"{backend}/api/rooms/{room.roomid}"

    # The viewer page: login, the room, a viewer token, the channel.
    with caplog.at_level(logging.WARNING, logger="backend.wechat"):
        viewer = await call(http, "POST", f"{backend}/api/login", json={"code": VIEWER_CODE})
    assert viewer["mocked"] is True and viewer["openid"] == mock_openid(VIEWER_CODE)
    assert "MOCK code2session" in caplog.text  # the log says logins are not checked
    listed = await call(http, "GET", f"{backend}/api/rooms")
    assert [r["roomid"] for r in listed["rooms"]] == [room.roomid]
    page = await call(http, "GET", api, viewer["session"])
    assert page["room"]["live_status"] == 102 and page["qualities"][0]["name"] == "auto"
    channel = await call(http, "POST", f"{api}/channel", viewer["session"], json={"nickname": "小明"})
    assert channel["role"] == "viewer" and channel["url"].startswith(f"ws://127.0.0.1:{server.http_port}/")
    ws = await http.ws_connect(channel["url"])
    first = await ws.receive_json(timeout=5)
    assert (first["type"], first["live_status"]) == ("status", 102)

    # A viewer may not push; the anchor gets the signed push URL and goes live.
    async with http.get(f"{api}/push_url", headers={"Authorization": f"Bearer {viewer['session']}"}) as refused:
        assert refused.status == 403 and "ANCHOR_OPENIDS" in (await refused.json())["error"]["message"]
    anchor = await call(http, "POST", f"{backend}/api/login", json={"code": ANCHOR_CODE})
    push_url = (await call(http, "GET", f"{api}/push_url", anchor["session"]))["push_url"]
    assert "txSecret=" in push_url
    publisher = await publish(push_url, seconds=60)
    try:
        live = await next_of(ws, "status", live_status=101)
        assert live["previous_status"] == 102

        # The FLV URL the back end gave live-player plays H.264 and AAC.
        streams = await probe_streams(page["qualities"][0]["flv"])
        assert sorted(s["codec_name"] for s in streams) == ["aac", "h264"]

        # A comment round-trips through the channel with the viewer's identity; then subscribe.
        await ws.send_json({"type": "comment", "text": "主播好"})
        comment = await next_of(ws, "comment")
        assert (comment["openid"], comment["nickname"], comment["text"]) == (viewer["openid"], "小明", "主播好")
        await ws.send_json({"type": "subscribe"})
        answer = await next_of(ws, "subscription")
        assert (answer["subscribed"], answer["changed"]) == (True, True)
    finally:
        await publisher.stop()

    # The operator ends the room; the page sees 103, and the replay page gets the replay's HLS.
    token = await call(http, "POST", f"{minilive}/api/v1/token", json={"appid": app.appid, "secret": app.secret})
    await call(http, "POST", f"{minilive}/api/v1/rooms/{room.roomid}/end", token["access_token"])
    await next_of(ws, "status", live_status=103)
    await ws.close()
    deadline = time.monotonic() + 30
    while not (replays := (await call(http, "GET", f"{api}/replays"))["replays"]):
        assert time.monotonic() < deadline, "no replay was listed 30 s after the end"
        await asyncio.sleep(0.2)
    async with http.get(replays[0]["hls"]) as playlist:
        assert playlist.status == 200 and (await playlist.text()).startswith("#EXTM3U")
    streams = await probe_streams(replays[0]["hls"])
    assert "h264" in [s["codec_name"] for s in streams]
