"""The viewer-facing status: the cacheable /status poll, and changes pushed over SSE and WebSocket."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from api.models import LiveStatus
from api.status import Listener
from relay.hub import PublisherInfo
from tests.conftest import make_room


@pytest.fixture
async def push_server(make_server):
    server = await make_server()
    server.status.feed.viewer_interval = 0.1  # viewer counts and departed clients checked fast
    return server


def base(server) -> str:
    return f"http://127.0.0.1:{server.http_port}"


def start_publishing(server, room):
    """The anchor's stream arriving at the hub, as ingest would open it: the room goes live."""
    return server.hub.publish("live", room.stream_name, PublisherInfo("test", "127.0.0.1"), lambda reason: None)


async def watch(session: aiohttp.ClientSession, server, room, count: int) -> list[aiohttp.ClientResponse]:
    """``count`` HTTP-FLV players of the room's stream, connected (their response headers in)."""
    url = f"{base(server)}/live/{room.stream_name}.flv"
    players = [await session.get(url) for _ in range(count)]
    assert all(player.status == 200 for player in players)
    return players


async def wait_for(predicate, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def next_event(response: aiohttp.ClientResponse) -> tuple[str, dict]:
    """The next SSE event (comments and the retry field skipped)."""
    while True:
        block = (await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)).decode()
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            return fields["event"], json.loads(fields["data"])


async def test_status_poll_is_cacheable(push_server):
    server = push_server
    _, room = await make_room(server)
    server.apps.settings.quotas = {"default": 0}  # any counted call would now fail with 45009
    url = f"{base(server)}/api/v1/rooms/{room.roomid}/status"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 200
            assert await response.json() == {"roomid": room.roomid, "live_status": 102, "viewers": 0}
            assert response.headers["Cache-Control"] == "public, max-age=2"
            etag = response.headers["ETag"]
            assert etag.startswith('"') and not etag.startswith("W/")
        for tag in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            async with session.get(url, headers={"If-None-Match": tag}) as response:
                assert response.status == 304 and response.headers["ETag"] == etag
        async with session.get(url, headers={"If-None-Match": '"other"'}) as response:
            assert response.status == 200

        stream = start_publishing(server, room)
        players = await watch(session, server, room, 3)
        await wait_until_status(server, room.roomid, LiveStatus.LIVE)
        async with session.get(url, headers={"If-None-Match": etag}) as response:
            assert response.status == 200 and response.headers["ETag"] != etag
            assert await response.json() == {"roomid": room.roomid, "live_status": 101, "viewers": 3}
        stream.close()
        for player in players:
            player.close()

        async with session.get(f"{base(server)}/api/v1/rooms/999999/status") as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == 300022


async def wait_until_status(server, roomid: int, status: int) -> None:
    deadline = time.monotonic() + 5
    while (await server.store.get_room(roomid)).live_status != status:
        assert time.monotonic() < deadline, f"room {roomid} never reached {status}"
        await asyncio.sleep(0.02)


async def test_server_sent_events(push_server):
    server = push_server
    app, room = await make_room(server)
    feed = server.status.feed
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base(server)}/api/v1/rooms/{room.roomid}/events") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        kind, first = await next_event(response)
        assert kind == "status" and first["live_status"] == 102 and first["previous_status"] is None
        assert feed.subscribers == 1

        publisher = start_publishing(server, room)
        kind, live = await next_event(response)
        assert (kind, live["live_status"], live["previous_status"]) == ("status", 101, 102)
        assert live["reason"] == "anchor started"

        async with aiohttp.ClientSession() as players:
            await watch(players, server, room, 2)
            counts = []
            while not counts or counts[-1] < 2:  # the count as it changes: 1 may show before 2
                kind, message = await next_event(response)
                assert (kind, message["type"], message["roomid"]) == ("viewers", "viewers", room.roomid)
                counts.append(message["viewers"])
            assert counts in ([2], [1, 2])

            await server.room_status.admin_action(app, room.roomid, "pause")  # kicks the publisher too
            kind, paused = await next_event(response)
            assert (kind, paused["live_status"], paused["previous_status"]) == ("status", 105, 101)
        publisher.close()
    await wait_for(lambda: feed.subscribers == 0)


async def test_websocket(push_server):
    server = push_server
    app, room = await make_room(server)
    _, other_room = await make_room(server, "other")
    feed = server.status.feed
    async with aiohttp.ClientSession() as session:
        async with (
            session.ws_connect(f"{base(server)}/api/v1/rooms/{room.roomid}/ws") as ws,
            session.ws_connect(f"{base(server)}/api/v1/rooms/{room.roomid}/ws") as ws2,
            session.ws_connect(f"{base(server)}/api/v1/rooms/{other_room.roomid}/ws") as other,
        ):
            for client in (ws, ws2):
                first = await client.receive_json(timeout=5)
                assert (first["type"], first["roomid"], first["live_status"]) == ("status", room.roomid, 102)
            assert (await other.receive_json(timeout=5))["roomid"] == other_room.roomid
            assert feed.subscribers == 3

            await server.room_status.admin_action(app, room.roomid, "end")
            for client in (ws, ws2):
                ended = await client.receive_json(timeout=5)
                assert (ended["type"], ended["live_status"], ended["previous_status"]) == ("status", 103, 102)
                assert ended["reason"] == "ended by an admin"
            with pytest.raises(asyncio.TimeoutError):
                await other.receive_json(timeout=0.3)  # another room's change is not sent
            await ws2.close()
            await wait_for(lambda: feed.subscribers == 2)
        await wait_for(lambda: feed.subscribers == 0)
        async with session.get(f"{base(server)}/api/v1/rooms/999999/ws") as response:
            assert response.status == 404


async def test_departed_sse_clients_are_dropped_and_shutdown_ends_streams(push_server):
    server = push_server
    _, room = await make_room(server)
    url = f"{base(server)}/api/v1/rooms/{room.roomid}/events"
    feed = server.status.feed
    # A client that goes away silently (no data flows to reveal it) is still noticed.
    async with aiohttp.ClientSession() as session:
        response = await session.get(url)
        await next_event(response)
        assert feed.subscribers == 1
        response.close()
    await wait_for(lambda: feed.subscribers == 0)

    async with aiohttp.ClientSession() as session, session.get(url) as response:
        await next_event(response)
        await asyncio.wait_for(server.stop(), 5)
        assert await asyncio.wait_for(response.content.read(), 5) == b""
    assert feed.subscribers == 0


async def test_slow_client_loses_oldest_messages():
    listener = Listener(asyncio.Queue(2), lambda: True)
    for n in range(4):
        listener.put({"type": "viewers", "viewers": n})
    assert [listener.queue.get_nowait()["viewers"] for _ in range(2)] == [2, 3]
    listener.close()
    listener.put({"type": "viewers", "viewers": 9})
    assert listener.queue.get_nowait() is None and listener.queue.empty()


def test_a_client_is_told_only_news():
    listener = Listener(asyncio.Queue(), lambda: True)
    assert listener.fresh({"type": "status", "live_status": 102, "viewers": 0})
    assert not listener.fresh({"type": "status", "live_status": 102, "viewers": 4})  # raced with the first message
    assert not listener.fresh({"type": "viewers", "viewers": 0})
    assert listener.fresh({"type": "viewers", "viewers": 4})
    assert listener.fresh({"type": "status", "live_status": 101, "viewers": 5})
    assert not listener.fresh({"type": "viewers", "viewers": 5})
