"""The room bus (api/bus.py) over a real store: room messages reach every subscriber by room id."""

from __future__ import annotations

import asyncio
from pathlib import Path

from api.bus import RoomBus
from api.store.sqlite import SqliteStore


async def test_room_messages_reach_subscribers_by_room(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "minilive.db")
    await store.open()
    try:
        bus = RoomBus(store)
        first: list[tuple[int, dict[str, object]]] = []
        second: list[tuple[int, dict[str, object]]] = []
        bus.subscribe(lambda roomid, message: first.append((roomid, message)))
        bus.subscribe(lambda roomid, message: second.append((roomid, message)))
        await bus.publish(7, {"type": "goods", "goods_id": 3})
        await store.publish_message("room:x", {"type": "not a room"})
        await store.publish_message("other", {"type": "not a room either"})
        await bus.publish(12, {"type": "likes", "total": 5})
        for _ in range(100):
            if len(first) == 2:
                break
            await asyncio.sleep(0.01)
        assert first == [(7, {"type": "goods", "goods_id": 3}), (12, {"type": "likes", "total": 5})]
        assert second == first
    finally:
        await store.close()
