"""Two nodes sharing one real redis-server: rooms, limits and status changes are the same everywhere."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import redis.asyncio as aioredis

from api.models import LiveStatus
from tests.conftest import hub_stream, make_room, needs_ffmpeg, publish

pytestmark = needs_ffmpeg


async def read_sse(response: aiohttp.ClientResponse, seen: list[dict], stop: asyncio.Event) -> None:
    async for line in response.content:
        if line.startswith(b"data:"):
            seen.append(json.loads(line[5:]))
        if stop.is_set():
            return


async def test_status_changes_reach_every_node(make_server, redis_url):
    url = redis_url.rsplit("/", 1)[0] + "/3"
    admin = aioredis.from_url(url)
    await admin.flushdb()
    await admin.aclose()
    a = await make_server(redis=url, allow_anonymous_publish=False)
    b = await make_server(redis=url, allow_anonymous_publish=False)
    app, room = await make_room(a)
    assert (await b.store.get_room(room.roomid)).name == room.name, "node B sees node A's room"

    seen: list[dict] = []
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        events = await session.get(f"http://127.0.0.1:{b.http_port}/api/v1/rooms/{room.roomid}/events")
        reader = asyncio.create_task(read_sse(events, seen, stop))
        pub = await publish(a.urls.push_url(app, room))  # the anchor pushes to node A
        try:
            for _ in range(150):
                if any(m.get("live_status") == LiveStatus.LIVE for m in seen):
                    break
                await asyncio.sleep(0.1)
            assert any(m.get("live_status") == LiveStatus.LIVE for m in seen), seen
            async with session.get(f"http://127.0.0.1:{b.http_port}/api/v1/rooms/{room.roomid}/status") as r:
                assert (await r.json())["live_status"] == LiveStatus.LIVE

            # An admin pauses the room on node B: node A, which has the publisher, holds its stream.
            await b.room_status.admin_action(app, room.roomid, "pause")
            for _ in range(50):
                if hub_stream(a, "live", room.stream_name).held:
                    break
                await asyncio.sleep(0.1)
            assert hub_stream(a, "live", room.stream_name).held
            assert pub.process.returncode is None, "the anchor of a paused room stays connected"
            for _ in range(50):
                if any(m.get("live_status") == LiveStatus.PAUSED for m in seen):
                    break
                await asyncio.sleep(0.1)
            assert any(m.get("live_status") == LiveStatus.PAUSED for m in seen)
        finally:
            stop.set()
            reader.cancel()
            events.close()
            await pub.stop()
    # Limits are shared: the live slot taken through node A is visible from node B.
    assert room.roomid in await b.store.live_slots(app.appid)
