"""The room channel: real WebSocket clients (aiohttp) against real servers, one node or two sharing a
real redis-server; comments, likes, moderation, limits, viewer tokens, SSE and replays."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import yaml
from aiohttp import web

from api import keys, viewer_tokens
from api.models import LiveStatus, Replay
from tests.conftest import make_room, needs_ffmpeg, official_room_body, publish
from tests.test_goods import GOODS, added, cover
from tests.test_openapi_responses import Api
from tests.test_replays import wait_replay
from tests.test_rest_api import go_live
from tests.test_rooms_live import wait_status
from tests.test_status_push import next_event, start_publishing, wait_for, watch
from tests.test_webhooks import Receiver
from tests.test_wechat_api import ROOM, connect, errcode

ASYNCAPI = yaml.safe_load((Path(__file__).parent.parent / "docs" / "asyncapi.yaml").read_text())
# A received message's type -> its AsyncAPI message (others: the room bus's messages, left open).
DOCUMENTED = {
    "status": "status",
    "viewers": "viewers",
    "comment": "comment",
    "comment_deleted": "commentDeleted",
    "mute": "mute",
    "likes": "likes",
    "subscription": "subscription",
    "error": "error",
}


def documented(message: dict[str, Any]) -> dict[str, Any]:
    """``message``, checked against its schema in docs/asyncapi.yaml (closed to undocumented fields)."""
    name = DOCUMENTED.get(message["type"], "roomMessage")
    schema = ASYNCAPI["components"]["messages"][name]["payload"]
    if name != "roomMessage":
        schema = {**schema, "additionalProperties": False}
    jsonschema.validate(message, schema)
    return message


def base(server) -> str:
    return f"http://127.0.0.1:{server.http_port}"


async def access_token(session: aiohttp.ClientSession, server, app) -> str:
    body = {"appid": app.appid, "secret": app.secret}
    async with session.post(f"{base(server)}/api/v1/token", json=body) as response:
        return (await response.json())["access_token"]


async def viewer_token(session, server, app, roomid: int, openid: str, **extra: Any) -> str:
    headers = {"Authorization": f"Bearer {await access_token(session, server, app)}"}
    body = {"openid": openid, "nickname": extra.pop("nickname", openid.upper()), **extra}
    async with session.post(f"{base(server)}/api/v1/rooms/{roomid}/viewer_tokens", json=body, headers=headers) as r:
        reply = await r.json()
        assert r.status == 200, reply
    assert reply["expires_in"] == server.settings.channel.token_ttl_seconds
    return reply["token"]


async def join(session, server, roomid: int, token: str = "") -> aiohttp.ClientWebSocketResponse:
    """A member, past its first message (the room's status)."""
    query = f"?token={token}" if token else ""
    ws = await session.ws_connect(f"{base(server)}/api/v1/rooms/{roomid}/ws{query}")
    first = documented(await ws.receive_json(timeout=5))
    assert (first["type"], first["roomid"]) == ("status", roomid)
    return ws


async def next_of(ws, kind: str, timeout: float = 5) -> dict[str, Any]:
    """The next message of type ``kind`` (others skipped: viewer counts, likes...)."""
    deadline = time.monotonic() + timeout
    while True:
        message = documented(await ws.receive_json(timeout=max(0.01, deadline - time.monotonic())))
        if message["type"] == kind:
            return message


async def error_of(ws, message: Any) -> dict[str, Any]:
    await (ws.send_str(message) if isinstance(message, str) else ws.send_json(message))
    return await next_of(ws, "error")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def test_viewer_tokens_are_signed_bound_to_a_room_and_expire(make_server, session):
    server = await make_server()
    app, room = await make_room(server)
    other_room = await server.rooms.create_room(app, official_room_body(app.appid))
    url = f"{base(server)}/api/v1/rooms/{room.roomid}/ws"

    async def refused(token: str) -> str:
        async with session.get(url, params={"token": token}) as response:
            assert response.status == 401
            return (await response.json())["error"]["message"]

    token = await viewer_token(session, server, app, room.roomid, "alice")
    ws = await join(session, server, room.roomid, token)
    await ws.close()
    body, _, signature = token.partition(".")
    forged = viewer_tokens.issue("not the secret", viewer_tokens.verify(app.secret, token, room.roomid, time.time()))
    assert "signature does not match" in await refused(forged)
    assert "signature does not match" in await refused(f"{body}x.{signature}")
    assert "malformed" in await refused("garbage")
    assert "is for room" in await refused(await viewer_token(session, server, app, other_room.roomid, "alice"))
    expired = viewer_tokens.ViewerIdentity(room.roomid, "alice", "A", "viewer", int(time.time()) - 1)
    assert "expired" in await refused(viewer_tokens.issue(app.secret, expired))

    # Only the room's app may issue, with a valid body.
    other_app, _ = await make_room(server, "third")
    headers = {"Authorization": f"Bearer {await access_token(session, server, other_app)}"}
    tokens_url = f"{base(server)}/api/v1/rooms/{room.roomid}/viewer_tokens"
    async with session.post(tokens_url, json={"openid": "x"}, headers=headers) as response:
        assert response.status == 404 and (await response.json())["error"]["code"] == 300022
    headers = {"Authorization": f"Bearer {await access_token(session, server, app)}"}
    for bad in ({}, {"openid": ""}, {"openid": "x", "role": "god"}, {"openid": "x", "age": 3}, {"openid": 5}):
        async with session.post(tokens_url, json=bad, headers=headers) as response:
            assert response.status == 400 and (await response.json())["error"]["code"] == 200002, bad
    async with session.post(tokens_url, json={"openid": "x"}) as response:
        assert response.status == 401
    async with session.get(f"{base(server)}/api/v1/asyncapi.yaml") as response:
        assert response.status == 200 and yaml.safe_load(await response.read()) == ASYNCAPI


async def test_anonymous_members_only_receive_and_an_app_may_require_tokens(make_server, session):
    server = await make_server()
    app, room = await make_room(server)
    ws = await join(session, server, room.roomid)
    assert (await error_of(ws, {"type": "comment", "text": "hi"}))["code"] == "read_only"
    await ws.close()

    headers = {"Authorization": f"Bearer {await access_token(session, server, app)}"}
    settings_url = f"{base(server)}/api/v1/app/channel"
    async with session.patch(settings_url, json={"channel_anonymous": False}, headers=headers) as response:
        assert response.status == 200 and (await response.json())["channel_anonymous"] is False
    async with session.get(f"{base(server)}/api/v1/rooms/{room.roomid}/ws") as response:
        assert response.status == 401 and "needs a viewer token" in (await response.json())["error"]["message"]
    async with session.patch(settings_url, json={"channel_anonymous": "no"}, headers=headers) as response:
        assert response.status == 400


async def test_comments_reach_every_member_sse_and_bus_messages_too(make_server, session):
    server = await make_server()
    app, room = await make_room(server)
    alice = await join(session, server, room.roomid, await viewer_token(session, server, app, room.roomid, "alice"))
    bob = await join(session, server, room.roomid, await viewer_token(session, server, app, room.roomid, "bob"))
    anonymous = await join(session, server, room.roomid)
    async with session.get(f"{base(server)}/api/v1/rooms/{room.roomid}/events") as sse:
        assert (await next_event(sse))[0] == "status"
        before = time.time()
        await alice.send_json({"type": "comment", "text": "  你好 hello  "})
        for member in (alice, bob, anonymous):
            comment = await next_of(member, "comment")
            assert comment["id"] == 1 and comment["roomid"] == room.roomid
            assert (comment["openid"], comment["nickname"], comment["text"]) == ("alice", "ALICE", "你好 hello")
            assert before <= comment["time"] <= time.time() and comment["stream_ms"] is None  # not live
        kind, comment = await next_event(sse)
        assert kind == "comment" and comment["text"] == "你好 hello" and comment["id"] == 1

        # Goods pushed (another service's message on the room bus) reach members unchanged.
        goods = {"type": "goods", "roomid": room.roomid, "goods": [{"goods_id": 7, "name": "茶"}], "push": True}
        await server.bus.publish(room.roomid, goods)
        for member in (alice, bob, anonymous):
            assert await next_of(member, "goods") == goods
        assert await next_event(sse) == ("goods", goods)
    await bob.send_json({"type": "comment", "text": "second"})
    assert (await next_of(alice, "comment"))["id"] == 2
    stored = await server.store.read_log(f"comments:{room.roomid}")
    assert [entry["text"] for entry in stored] == ["你好 hello", "second"]


async def test_refused_messages_are_answered_to_their_sender_alone(make_server, session):
    server = await make_server()
    app, room = await make_room(server)
    alice = await join(session, server, room.roomid, await viewer_token(session, server, app, room.roomid, "alice"))
    bob = await join(session, server, room.roomid, await viewer_token(session, server, app, room.roomid, "bob"))
    cases = [
        ("not json", "bad_json"),
        ("[1, 2]", "bad_json"),
        ('{"text": "no type"}', "bad_json"),
        ("[" * 2000 + "]" * 2000, "bad_json"),  # nesting deeper than the parser goes
        ({"type": "shout"}, "unknown_type"),
        ({"type": "comment"}, "bad_request"),
        ({"type": "comment", "text": "   "}, "bad_request"),
        ({"type": "comment", "text": "x" * 301}, "too_big"),
        ({"type": "like", "count": 0}, "bad_request"),
        ({"type": "like", "count": "many"}, "bad_request"),
        ({"type": "delete_comment", "id": 1}, "not_admin"),
        ({"type": "mute", "openid": "bob"}, "not_admin"),
        (json.dumps({"type": "comment", "text": "x" * 65536}), "too_big"),  # a 64 KB message
    ]
    for message, code in cases:
        error = await error_of(alice, message)
        assert error["code"] == code, (message, error)
        assert error["message"]
    await alice.send_bytes(b'{"type": "comment", "text": "binary"}')
    assert (await next_of(alice, "error"))["code"] == "bad_json"
    # Still a member: its next comment goes out; bob heard none of the refusals.
    await alice.send_json({"type": "comment", "text": "fine"})
    assert (await next_of(bob, "comment"))["text"] == "fine"
    assert (await next_of(alice, "comment"))["text"] == "fine"

    # A frame above max_frame_bytes closes that socket (1009) before it is buffered; the server goes on.
    await alice.send_str("x" * (server.settings.channel.max_frame_bytes + 1))
    closed = await alice.receive(timeout=5)
    assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and alice.close_code == 1009
    await bob.send_json({"type": "comment", "text": "still here"})
    assert (await next_of(bob, "comment"))["text"] == "still here"


async def test_rate_limits_and_a_flood_of_refusals_disconnects(make_server, session):
    server = await make_server(channel_max_refusals=10)
    app, room = await make_room(server)
    alice = await join(session, server, room.roomid, await viewer_token(session, server, app, room.roomid, "alice"))
    burst = server.settings.channel.comment_burst
    for n in range(burst):
        await alice.send_json({"type": "comment", "text": f"c{n}"})
        assert (await next_of(alice, "comment"))["text"] == f"c{n}"
    assert (await error_of(alice, {"type": "comment", "text": "one too many"}))["code"] == "rate_limited"
    # A second connection of the same viewer shares the limit.
    again = await join(session, server, room.roomid, await viewer_token(session, server, app, room.roomid, "alice"))
    assert (await error_of(again, {"type": "comment", "text": "other tab"}))["code"] == "rate_limited"

    for _ in range(10):
        await again.send_str("junk")
    while (message := await again.receive(timeout=5)).type is aiohttp.WSMsgType.TEXT:
        assert json.loads(message.data)["code"] in ("bad_json", "rate_limited")
    assert again.close_code == 1008


async def test_close_comment_ban_comment_and_close_like(make_server, session):
    server = await make_server()
    app, room = await make_room(server)
    token = await access_token(session, server, app)
    alice = await join(session, server, room.roomid, await viewer_token(session, server, app, room.roomid, "alice"))
    admin_token = await viewer_token(session, server, app, room.roomid, "host", role="admin")
    admin = await join(session, server, room.roomid, admin_token)

    async def official(path: str, body: dict[str, Any]) -> None:
        url = f"{base(server)}/wxaapi/broadcast/room/{path}?access_token={token}"
        async with session.post(url, json=body) as response:
            assert (await response.json())["errcode"] == 0

    await official("updatecomment", {"roomId": room.roomid, "banComment": 1})
    assert (await error_of(alice, {"type": "comment", "text": "hi"}))["code"] == "comments_banned"
    await admin.send_json({"type": "comment", "text": "admins may"})
    for member in (alice, admin):
        assert (await next_of(member, "comment"))["text"] == "admins may"
    await official("updatecomment", {"roomId": room.roomid, "banComment": 0})
    await alice.send_json({"type": "comment", "text": "back"})
    assert (await next_of(admin, "comment"))["text"] == "back"

    stored = await server.store.get_room(room.roomid)
    stored.close_comment, stored.close_like = 1, 1
    await server.store.put_room(stored)
    for member in (alice, admin):
        assert (await error_of(member, {"type": "comment", "text": "closed"}))["code"] == "comments_closed"
    fresh = await join(session, server, room.roomid, await viewer_token(session, server, app, room.roomid, "carol"))
    assert (await error_of(fresh, {"type": "like", "count": 3}))["code"] == "likes_closed"


async def test_admins_mute_users_and_delete_comments(make_server, session):
    server = await make_server()
    app, room = await make_room(server)
    alice = await join(session, server, room.roomid, await viewer_token(session, server, app, room.roomid, "alice"))
    admin = await join(
        session, server, room.roomid, await viewer_token(session, server, app, room.roomid, "host", role="admin")
    )
    await alice.send_json({"type": "comment", "text": "spam"})
    spam = await next_of(admin, "comment")
    await admin.send_json({"type": "delete_comment", "id": spam["id"]})
    for member in (alice, admin):
        assert await next_of(member, "comment_deleted") == {
            "type": "comment_deleted",
            "roomid": room.roomid,
            "id": spam["id"],
        }
    await admin.send_json({"type": "mute", "openid": "alice", "muted": True})
    assert (await next_of(alice, "mute"))["muted"] is True
    assert (await error_of(alice, {"type": "comment", "text": "more spam"}))["code"] == "muted"
    await admin.send_json({"type": "mute", "openid": "alice", "muted": False})
    assert (await next_of(alice, "mute"))["muted"] is False
    await alice.send_json({"type": "comment", "text": "sorry"})
    assert (await next_of(admin, "comment"))["text"] == "sorry"
    assert (await error_of(admin, {"type": "delete_comment", "id": "1"}))["code"] == "bad_request"


class Moderator(Receiver):
    """An app's moderation endpoint: refuses comments saying "bad", answers those saying "slow" late."""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append((dict(request.headers), body))
        if "slow" in body["text"]:
            await asyncio.sleep(1)
        return web.json_response({"allow": "bad" not in body["text"], "reason": "not here"})


async def test_word_list_and_moderation_webhook(make_server, session):
    server = await make_server(channel_filter_timeout_seconds=0.5)
    app, room = await make_room(server)
    moderation = Moderator([])
    await moderation.start()
    try:
        headers = {"Authorization": f"Bearer {await access_token(session, server, app)}"}
        changes = {"comment_words": ["Forbidden"], "comment_webhook": moderation.url}
        async with session.patch(f"{base(server)}/api/v1/app/channel", json=changes, headers=headers) as response:
            assert response.status == 200 and (await response.json())["comment_words"] == ["Forbidden"]
        token = await viewer_token(session, server, app, room.roomid, "alice")
        alice = await join(session, server, room.roomid, token)
        assert (await error_of(alice, {"type": "comment", "text": "a forbidden word"}))["code"] == "filtered"
        seen = [body for _, body in moderation.calls]
        assert seen == []  # the word list decides first
        refused = await error_of(alice, {"type": "comment", "text": "bad one"})
        assert refused == {"type": "error", "code": "filtered", "message": "not here"}
        seen = [body for _, body in moderation.calls]
        assert seen[-1]["openid"] == "alice" and seen[-1]["roomid"] == room.roomid and seen[-1]["sign"]
        assert (await error_of(alice, {"type": "comment", "text": "slow one"}))["code"] == "moderation_unavailable"
        await alice.send_json({"type": "comment", "text": "good one"})
        assert (await next_of(alice, "comment"))["text"] == "good one"
    finally:
        await moderation.stop()


async def test_likes_are_one_message_a_second_with_the_total(make_server, session):
    server = await make_server()
    app, room = await make_room(server)
    watcher = await join(session, server, room.roomid)
    likers = [
        await join(session, server, room.roomid, await viewer_token(session, server, app, room.roomid, f"u{n}"))
        for n in range(3)
    ]
    started = time.monotonic()
    for _ in range(10):  # 3 viewers x 10 messages x 10 likes, within their burst
        for liker in likers:
            await liker.send_json({"type": "like", "count": 10})
    totals = []
    while not totals or totals[-1] < 300:
        totals.append((await next_of(watcher, "likes", timeout=5))["total"])
    elapsed = time.monotonic() - started
    assert totals == sorted(set(totals)) and totals[-1] == 300
    assert len(totals) <= elapsed / server.settings.channel.likes_tick_seconds + 1  # never one per like
    # A member joining later is told the total at once.
    late = await session.ws_connect(f"{base(server)}/api/v1/rooms/{room.roomid}/ws")
    await late.receive_json(timeout=5)
    assert await late.receive_json(timeout=5) == {"type": "likes", "roomid": room.roomid, "total": 300}


async def test_two_nodes_see_one_comment_order_and_the_same_likes(make_server, redis_url, session):
    a = await make_server(redis=redis_url)
    b = await make_server(redis=redis_url)
    app, room = await make_room(a)
    on_a = [
        await join(session, a, room.roomid, await viewer_token(session, a, app, room.roomid, f"a{n}")) for n in range(2)
    ]
    on_b = [
        await join(session, b, room.roomid, await viewer_token(session, b, app, room.roomid, f"b{n}")) for n in range(2)
    ]
    members = on_a + on_b
    # Everyone comments at once, on both nodes: every member sees the same order.
    for round_ in range(3):
        for n, member in enumerate(members):
            await member.send_json({"type": "comment", "text": f"{n}-{round_}"})
    orders = []
    for member in members:
        orders.append([(await next_of(member, "comment"))["id"] for _ in range(12)])
    assert all(order == orders[0] for order in orders) and sorted(orders[0]) == list(range(1, 13))

    for member in members:
        await member.send_json({"type": "like", "count": 5})
    seen = []
    for member in members:
        totals = []
        while not totals or totals[-1] < 20:
            totals.append((await next_of(member, "likes"))["total"])
        seen.append(totals)
    assert all(totals == seen[0] for totals in seen) and seen[0][-1] == 20


async def test_audience_counts_reach_members(make_server, session):
    server = await make_server()
    server.status.feed.viewer_interval = 0.1
    _, room = await make_room(server)
    member = await join(session, server, room.roomid)
    publisher = start_publishing(server, room)
    assert (await next_of(member, "status"))["live_status"] == LiveStatus.LIVE
    async with aiohttp.ClientSession() as players:
        await watch(players, server, room, 2)
        counts = []
        while not counts or counts[-1] < 2:
            counts.append((await next_of(member, "viewers"))["viewers"])
        assert counts in ([2], [1, 2])
    publisher.close()


async def test_a_member_too_slow_to_read_is_dropped_and_the_others_miss_nothing(make_server, session):
    server = await make_server(channel_member_buffer_bytes=64 * 1024)
    _, room = await make_room(server)
    healthy = await join(session, server, room.roomid)
    sleeper = silent_member(server, room.roomid)
    await wait_for(lambda: server.channel.members == 2)
    filler = "x" * 20_000
    count = 400  # 8 MB: more than the kernel's buffers hold
    reader = asyncio.create_task(_goods_numbers(healthy, count))
    for n in range(count):
        await server.bus.publish(room.roomid, {"type": "goods", "n": n, "filler": filler})
        if n % 10 == 0:
            await asyncio.sleep(0.01)  # a write per few messages, as a live room's traffic comes
    assert await reader == list(range(count))
    await wait_for(lambda: server.channel.members == 1)
    sleeper.close()


def silent_member(server, roomid: int) -> socket.socket:
    """A raw client that upgrades to the room's channel and then neither reads nor answers pings."""
    sleeper = socket.create_connection(("127.0.0.1", server.http_port))
    sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sleeper.sendall(
        f"GET /api/v1/rooms/{roomid}/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    return sleeper


async def test_an_abandoned_socket_is_ended_by_the_heartbeat(make_server, session):
    server = await make_server(channel_heartbeat_seconds=0.2)
    _, room = await make_room(server)
    healthy = await join(session, server, room.roomid)
    reading = asyncio.create_task(next_of(healthy, "goods", timeout=10))  # aiohttp answers pings as it reads
    sleeper = silent_member(server, room.roomid)
    await wait_for(lambda: server.channel.members == 2)
    await wait_for(lambda: server.channel.members == 1)
    await asyncio.sleep(0.5)  # heartbeats go on: the member that answers them stays
    await server.bus.publish(room.roomid, {"type": "goods", "n": 1})
    assert (await reading)["n"] == 1 and server.channel.members == 1
    sleeper.close()


async def _goods_numbers(ws, count: int) -> list[int]:
    return [(await next_of(ws, "goods"))["n"] for _ in range(count)]


@needs_ffmpeg
async def test_comments_of_a_replay_at_their_times(make_server, session):
    server = await make_server(allow_anonymous_publish=False, sweep_interval_seconds=0.2)
    app, room = await make_room(server, closeReplay=0)
    pub = await publish(server.urls.push_url(app, room), seconds=60)
    await wait_status(server, room, LiveStatus.LIVE)
    token = await viewer_token(session, server, app, room.roomid, "alice")
    alice = await join(session, server, room.roomid, token)
    made = []
    for n in range(3):
        await asyncio.sleep(1)
        await alice.send_json({"type": "comment", "text": f"at {n}"})
        made.append(await next_of(alice, "comment"))
    await alice.send_json({"type": "delete_comment", "id": made[1]["id"]})
    assert (await next_of(alice, "error"))["code"] == "not_admin"
    await server.comments.delete(await server.store.get_room(room.roomid), made[1]["id"], admin_identity(room))
    await asyncio.sleep(1)
    await server.room_status.admin_action(app, room.roomid, "end")
    replay = await wait_replay(server.store, room.roomid, "ready", timeout=10)
    await pub.stop()
    assert all(comment["stream_ms"] > 0 for comment in made)  # this node held the anchor

    url = f"{base(server)}/api/v1/replays/{replay.replay_id}/comments"
    async with session.get(url) as response:
        assert response.status == 200
        body = await response.json()
    assert body["replay_id"] == replay.replay_id and body["roomid"] == room.roomid
    listed = body["comments"]
    assert [c["text"] for c in listed] == ["at 0", "at 2"]  # the deleted one is not shown
    for comment in listed:
        assert comment["offset"] == pytest.approx(comment["time"] - replay.created_at, abs=0.01)
        assert 0 <= comment["offset"] <= replay.duration
    first, last = listed[0]["offset"], listed[1]["offset"]
    async with session.get(url, params={"from": str(first + 0.001), "to": str(replay.duration)}) as response:
        assert [c["text"] for c in (await response.json())["comments"]] == ["at 2"]
    async with session.get(url, params={"from": "0", "to": str(last - 0.001)}) as response:
        assert [c["text"] for c in (await response.json())["comments"]] == ["at 0"]
    async with session.get(url, params={"from": "soon"}) as response:
        assert response.status == 400
    async with session.get(f"{base(server)}/api/v1/replays/nothing/comments") as response:
        assert response.status == 404 and (await response.json())["error"]["code"] == 9410201


async def test_a_stopping_server_ends_its_members(make_server, session):
    server = await make_server()
    app, room = await make_room(server)
    members = [
        await join(session, server, room.roomid),
        await join(session, server, room.roomid, await viewer_token(session, server, app, room.roomid, "alice")),
    ]
    assert server.channel.members == 2 and server.status.feed.subscribers == 2
    await asyncio.wait_for(server.stop(), 5)
    for member in members:
        message = await member.receive(timeout=5)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    assert server.channel.members == 0 and server.status.feed.subscribers == 0


async def test_subscribe_and_unsubscribe(make_server, session):
    server = await make_server()
    app, room = await make_room(server)
    alice = await join(session, server, room.roomid, await viewer_token(session, server, app, room.roomid, "alice"))
    answers = []
    for kind in ("subscribe", "subscribe", "unsubscribe", "unsubscribe"):
        await alice.send_json({"type": kind})
        answers.append(await next_of(alice, "subscription"))
    flags = [(a["subscribed"], a["changed"]) for a in answers]
    assert flags == [(True, True), (True, False), (False, True), (False, False)]
    subscribers = server.app[keys.SUBSCRIBERS]
    await alice.send_json({"type": "subscribe"})
    await next_of(alice, "subscription")
    assert (await subscribers.page(room, 0, 10))[1] == 1  # the subscribers service holds alice
    anonymous = await join(session, server, room.roomid)
    assert (await error_of(anonymous, {"type": "subscribe"}))["code"] == "read_only"


async def test_rest_answers_match_the_openapi_document(make_server, session):
    server = await make_server()
    app, room = await make_room(server)
    async with session.get(f"{base(server)}/api/v1/openapi.json") as response:
        api = Api(session, await response.json())
    headers = {"Authorization": f"Bearer {await access_token(session, server, app)}"}
    tokens = f"{base(server)}/api/v1/rooms/{room.roomid}/viewer_tokens"
    operation = "/api/v1/rooms/{id}/viewer_tokens"
    body = {"openid": "alice", "nickname": "A", "role": "admin"}
    reply = await api.call("POST", tokens, 200, operation, json=body, headers=headers)
    await api.call("POST", tokens, 400, operation, json={"openid": ""}, headers=headers)
    await api.call("POST", tokens, 401, operation, json=body)
    await api.call("POST", f"{base(server)}/api/v1/rooms/999/viewer_tokens", 404, operation, json=body, headers=headers)
    settings = f"{base(server)}/api/v1/app/channel"
    await api.call("PATCH", settings, 200, "/api/v1/app/channel", json={"comment_words": ["x"]}, headers=headers)
    await api.call("PATCH", settings, 400, "/api/v1/app/channel", json={"comment_webhook": "ftp://x"}, headers=headers)

    now = time.time()
    replay = Replay("r1", room.roomid, app.appid, 1, "ready", now - 5, now + 3600, duration=60)
    await server.store.put_replay(replay)
    alice = await join(session, server, room.roomid, reply["token"])
    await alice.send_json({"type": "comment", "text": "for the replay"})
    await next_of(alice, "comment")
    comments = f"{base(server)}/api/v1/replays/r1/comments"
    operation = "/api/v1/replays/{replay_id}/comments"
    listed = await api.call("GET", comments, 200, operation)
    assert [c["text"] for c in listed["comments"]] == ["for the replay"] and 4 < listed["comments"][0]["offset"] < 60
    await api.call("GET", f"{comments}?limit=0", 400, operation)
    await api.call("GET", f"{base(server)}/api/v1/replays/r2/comments", 404, operation)


async def test_goods_pushed_through_the_official_api_reach_members(make_server, session):
    wx = await connect(await make_server(), session)
    tea = await added(wx, await cover(wx), name="红茶礼盒")
    roomid, _ = await wx.room()
    await wx.post(ROOM + "addgoods", {"ids": [tea], "roomId": roomid})
    await go_live(wx.server, await wx.server.store.get_room(roomid))
    member = await join(session, wx.server, roomid)
    assert errcode(await wx.post(GOODS + "push", {"roomId": roomid, "goodsId": tea})) == 0
    pushed = await next_of(member, "goods")
    assert (pushed["action"], pushed["goods"]["goods_id"], pushed["goods"]["name"]) == ("push", tea, "红茶礼盒")


def admin_identity(room) -> viewer_tokens.ViewerIdentity:
    return viewer_tokens.ViewerIdentity(room.roomid, "host", "HOST", viewer_tokens.ADMIN, int(time.time()) + 60)
