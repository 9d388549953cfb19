"""The store contract (api/store/base.py): every test runs against the SQLite and the Redis store.

Redis is a real ``redis-server`` started once per session on a free port; each test uses its own
key prefix, so tests share the server but no data.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from api.models import App, Assistant, Goods, LiveStatus, Media, Replay, Room, RoomEvent, Token
from api.store.base import DELIVERIES_KEPT, RoomStore
from api.store.redis import RedisStore
from api.store.sqlite import SqliteStore

StoreFactory = Callable[[], Awaitable[RoomStore]]

LIVE, NOT_STARTED, ENDED, PAUSED = LiveStatus.LIVE, LiveStatus.NOT_STARTED, LiveStatus.ENDED, LiveStatus.PAUSED


@pytest.fixture(params=["sqlite", "redis"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Open stores that share one backing (the same file, or the same server and prefix), as
    several processes or nodes would."""
    if request.param == "sqlite":
        path = tmp_path / "minilive.db"

        def new() -> RoomStore:
            return SqliteStore(path)

    else:
        url = request.getfixturevalue("redis_url")
        prefix = f"test-{uuid.uuid4().hex}:"

        def new() -> RoomStore:
            return RedisStore(url, prefix=prefix)

    opened: list[RoomStore] = []

    async def make() -> RoomStore:
        store = new()
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> RoomStore:
    return await make_store()


def new_room(appid: str = "wx1", start_time: int = 1_700_000_000, **fields: object) -> Room:
    record = {
        "roomid": 0,
        "appid": appid,
        "name": "直播间",
        "cover_img": "media-cover",
        "share_img": "media-share",
        "feeds_img": "media-feeds",
        "start_time": start_time,
        "end_time": start_time + 3600,
        "anchor_name": "主播",
        "anchor_wechat": "anchor_wx",
    }
    return Room(**{**record, **fields})  # type: ignore[arg-type]


async def eventually(predicate: Callable[[], object], timeout: float = 5) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# ------------------------------------------------------------ apps and tokens


async def test_apps_round_trip_oldest_first(store: RoomStore) -> None:
    new = App(
        "wx1",
        "secret1",
        "新应用",
        "push1",
        play_key="play1",
        webhook_url="https://hooks.example/live",
        replay_retention_days=7,
        created_at=2000.5,
    )
    old = App("wx2", "secret2", "Old app", "push2", created_at=1000.25)
    await store.put_app(new)
    await store.put_app(old)
    assert await store.get_app("wx1") == new
    assert await store.list_apps() == [old, new]

    renamed = dataclasses.replace(new, name="renamed", webhook_url="")
    await store.put_app(renamed)
    assert await store.get_app("wx1") == renamed
    assert await store.list_apps() == [old, renamed]
    assert await store.get_app("wx3") is None


async def test_tokens_expire(store: RoomStore) -> None:
    valid = Token("token-valid", "wx1", time.time() + 60)
    expired = Token("token-expired", "wx1", time.time() - 1)
    await store.put_token(valid)
    await store.put_token(expired)
    assert await store.get_token("token-valid") == valid
    assert await store.get_token("token-expired") is None
    assert await store.get_token("token-unknown") is None


# ------------------------------------------------------------ rooms


async def test_room_round_trip_with_goods_and_assistants(store: RoomStore) -> None:
    goods = [Goods(7, "茶叶", "https://cdn.example/7.png", "pages/goods?id=7", 990, 1990, 2).to_dict()]
    assistants = [Assistant("helper", "小助手", 1_700_000_000, alias="helper").to_dict()]
    room = new_room(
        roomid=999,  # ignored
        live_type=1,
        close_replay=0,
        goods=goods,
        assistants=assistants,
        created_at=1_700_000_000.123456,
    )
    created = await store.create_room(room)
    assert created.roomid == 1
    assert created == dataclasses.replace(room, roomid=1)
    assert await store.get_room(1) == created
    assert (await store.get_room(1)).stream_name == "wx1-1"  # type: ignore[union-attr]

    edited = dataclasses.replace(created, name="edited", goods=[], assistants=[*assistants, *assistants])
    await store.put_room(edited)
    assert await store.get_room(1) == edited
    assert await store.get_room(2) is None


async def test_deleted_room_is_gone_and_stays_gone(store: RoomStore) -> None:
    room = await store.create_room(new_room())
    assert await store.delete_room(room.roomid) is True
    assert await store.delete_room(room.roomid) is False
    assert await store.get_room(room.roomid) is None
    await store.put_room(room)  # an edit racing the delete does not bring it back
    assert await store.get_room(room.roomid) is None
    assert await store.list_rooms("wx1", 0, 10) == ([], 0)
    assert await store.rooms_in_status([NOT_STARTED]) == []


async def test_room_ids_unique_and_increasing_across_apps_and_deletes(
    store: RoomStore, make_store: StoreFactory
) -> None:
    ids = [(await store.create_room(new_room(appid))).roomid for appid in ("wx1", "wx2", "wx1", "wx2")]
    assert ids == [1, 2, 3, 4]
    await store.delete_room(4)
    assert (await store.create_room(new_room("wx3"))).roomid == 5

    other = await make_store()
    created = await asyncio.gather(*((store, other)[i % 2].create_room(new_room()) for i in range(20)))
    assert sorted(room.roomid for room in created) == list(range(6, 26))


async def test_list_rooms_orders_pages_and_counts(store: RoomStore) -> None:
    rooms = [await store.create_room(new_room("wx1", start_time)) for start_time in (300, 100, 300, 200, 300)]
    await store.create_room(new_room("wx2", 999))
    expected = sorted(rooms, key=lambda room: (room.start_time, room.roomid), reverse=True)
    assert [room.roomid for room in expected] == [5, 3, 1, 4, 2]

    assert await store.list_rooms("wx1", 0, 100) == (expected, 5)
    assert await store.list_rooms("wx1", 1, 2) == (expected[1:3], 5)
    assert await store.list_rooms("wx1", 4, 10) == (expected[4:], 5)
    assert await store.list_rooms("wx1", 5, 10) == ([], 5)
    assert await store.list_rooms("wx1", 0, 0) == ([], 5)
    assert await store.list_rooms("wx3", 0, 10) == ([], 0)

    moved = dataclasses.replace(expected[-1], start_time=400)
    await store.put_room(moved)
    page, total = await store.list_rooms("wx1", 0, 2)
    assert (page, total) == ([moved, expected[0]], 5)


async def test_rooms_in_status(store: RoomStore) -> None:
    a, b, c = [await store.create_room(new_room()) for _ in range(3)]
    await store.create_room(new_room("wx2"))
    await store.transition(b.roomid, [NOT_STARTED], PAUSED, {})
    await store.transition(a.roomid, [NOT_STARTED], LIVE, {})
    assert [room.roomid for room in await store.rooms_in_status([LIVE, PAUSED])] == [a.roomid, b.roomid]
    assert [room.roomid for room in await store.rooms_in_status(iter([NOT_STARTED]))] == [c.roomid, 4]
    assert await store.rooms_in_status([]) == []

    banned = dataclasses.replace(c, live_status=LiveStatus.BANNED)
    await store.put_room(banned)
    assert await store.rooms_in_status([LiveStatus.BANNED]) == [banned]
    assert [room.roomid for room in await store.rooms_in_status([NOT_STARTED])] == [4]

    await store.delete_room(a.roomid)
    assert [room.roomid for room in await store.rooms_in_status([LIVE, PAUSED])] == [b.roomid]


async def test_transition_applies_changes_or_refuses(store: RoomStore) -> None:
    room = await store.create_room(new_room())
    goods = [Goods(1).to_dict()]
    changes = {"live_started_at": 1_700_000_100.25, "live_sessions": 1, "goods": goods, "status_reason": "开播"}
    updated = await store.transition(room.roomid, {NOT_STARTED, PAUSED}, LIVE, changes)
    assert updated == dataclasses.replace(room, live_status=LIVE, **changes)  # type: ignore[arg-type]
    assert await store.get_room(room.roomid) == updated

    # Wrong status: nothing changes.
    assert await store.transition(room.roomid, [NOT_STARTED, PAUSED], ENDED, {"name": "x"}) is None
    assert await store.transition(999, [LIVE], ENDED, {}) is None
    for bad in ({"no_such_field": 1}, {"live_status": ENDED}, {"roomid": 5}, {"appid": "wx2"}):
        with pytest.raises(ValueError):
            await store.transition(room.roomid, [LIVE], ENDED, bad)
    assert await store.get_room(room.roomid) == updated

    # A start_time change moves the room in its app's list.
    later = await store.create_room(new_room(start_time=room.start_time + 10))
    moved = await store.transition(room.roomid, [LIVE], LIVE, {"start_time": room.start_time + 20})
    assert await store.list_rooms("wx1", 0, 10) == ([moved, later], 2)


async def test_concurrent_transitions_succeed_once(store: RoomStore, make_store: StoreFactory) -> None:
    room = await store.create_room(new_room())
    stores = (store, await make_store())
    results = await asyncio.gather(
        *(stores[i % 2].transition(room.roomid, [NOT_STARTED], LIVE, {"live_sessions": i}) for i in range(50))
    )
    winners = [result for result in results if result is not None]
    assert len(winners) == 1
    assert await store.get_room(room.roomid) == winners[0]
    assert await store.rooms_in_status([NOT_STARTED]) == []


# ------------------------------------------------------------ limits


async def test_incr_counter_counts_exactly_to_the_limit(store: RoomStore, make_store: StoreFactory) -> None:
    stores = (store, await make_store())
    results = await asyncio.gather(*(stores[i % 2].incr_counter("quota:wx1:create", 10, 60) for i in range(100)))
    assert sum(results) == 10
    assert await store.counter("quota:wx1:create") == await stores[1].counter("quota:wx1:create") == 10
    assert await store.incr_counter("quota:wx2:create", 10, 60) is True
    assert await store.counter("quota:wx2:create") == 1
    assert await store.incr_counter("quota:wx3:create", 0, 60) is False
    assert await store.counter("quota:wx3:create") == 0


async def test_incr_counter_lifetime_starts_at_first_use(store: RoomStore) -> None:
    assert await store.incr_counter("burst", 2, 1) is True
    await asyncio.sleep(0.5)
    assert await store.incr_counter("burst", 2, 1) is True
    assert await store.incr_counter("burst", 2, 1) is False
    await asyncio.sleep(0.7)  # 1.2 s after the first use, 0.7 s after the last
    assert await store.counter("burst") == 0
    assert await store.incr_counter("burst", 2, 1) is True


async def test_live_slots_claim_and_release(store: RoomStore) -> None:
    assert await store.claim_live_slot("wx1", 1, 2) is True
    assert await store.claim_live_slot("wx1", 1, 2) is True  # already holding one
    assert await store.claim_live_slot("wx1", 2, 2) is True
    assert await store.claim_live_slot("wx1", 3, 2) is False
    assert await store.live_slots("wx1") == {1, 2}
    assert await store.claim_live_slot("wx2", 3, 2) is True  # limits are per app

    await store.release_live_slot("wx1", 1)
    await store.release_live_slot("wx1", 99)
    assert await store.claim_live_slot("wx1", 3, 2) is True
    assert await store.live_slots("wx1") == {2, 3}
    assert await store.live_slots("wx9") == set()


async def test_two_processes_race_for_live_slots(store: RoomStore, make_store: StoreFactory) -> None:
    stores = (store, await make_store())
    roomids = range(1, 21)
    results = await asyncio.gather(*(stores[i % 2].claim_live_slot("wx1", i, 5) for i in roomids))
    assert sum(results) == 5
    assert await stores[1].live_slots("wx1") == {i for i, ok in zip(roomids, results, strict=True) if ok}


# ------------------------------------------------------------ media and replays


async def test_media_by_expiry(store: RoomStore) -> None:
    first = Media("m1", "wx1", "image", "image/png", 1234, 300, 200, "media/wx1/m1.png", 100.0, 1000.5)
    second = Media("m2", "wx1", "image", "image/jpeg", 99, 1, 1, "media/wx1/m2.jpg", 200.0, 2000.0)
    await store.put_media(second)
    await store.put_media(first)
    assert await store.get_media("m1") == first
    assert await store.get_media("m3") is None
    assert await store.expired_media(1000.5) == []  # strictly before
    assert await store.expired_media(1500) == [first]
    assert await store.expired_media(3000) == [first, second]

    await store.delete_media("m1")
    await store.delete_media("m3")
    assert await store.get_media("m1") is None
    assert await store.expired_media(3000) == [second]
    await store.put_media(dataclasses.replace(second, expires_at=5000.0))
    assert await store.expired_media(3000) == []


async def test_replays_by_room_status_and_expiry(store: RoomStore) -> None:
    r1 = Replay("r1", 1, "wx1", 1, "ready", 100.0, 1000.0, "replays/wx1-1/1", 61.5, 123_456)
    r2 = Replay("r2", 1, "wx1", 2, "recording", 200.0, 2000.0)
    r3 = Replay("r3", 2, "wx1", 1, "ready", 150.0, 500.0)
    for replay in (r2, r1, r3):
        await store.put_replay(replay)
    assert await store.get_replay("r1") == r1
    assert await store.get_replay("r4") is None
    assert await store.list_replays(1) == [r1, r2]
    assert await store.list_replays(2) == [r3]
    assert await store.list_replays(3) == []
    assert await store.replays_in_status("ready") == [r1, r3]
    assert await store.replays_in_status("recording") == [r2]
    assert await store.expired_replays(1000.0) == [r3]
    assert await store.expired_replays(5000.0) == [r3, r1, r2]

    done = dataclasses.replace(r2, status="ready", duration=30.0, expire_at=400.0)
    await store.put_replay(done)
    assert await store.replays_in_status("recording") == []
    assert await store.replays_in_status("ready") == [r1, r3, done]
    assert await store.expired_replays(450.0) == [done]

    await store.delete_replay("r1")
    await store.delete_replay("r4")
    assert await store.get_replay("r1") is None
    assert await store.list_replays(1) == [done]
    assert await store.replays_in_status("ready") == [r3, done]
    assert await store.expired_replays(5000.0) == [done, r3]


# ------------------------------------------------------------ events and deliveries


async def test_events_arrive_in_order_outside_the_publisher(store: RoomStore) -> None:
    received: list[RoomEvent] = []
    also: list[RoomEvent] = []
    tasks: list[asyncio.Task[object] | None] = []

    def on_event(event: RoomEvent) -> None:
        received.append(event)
        tasks.append(asyncio.current_task())

    store.subscribe(on_event)
    store.subscribe(also.append)
    events = [
        RoomEvent("status", "wx1", 1 + i % 2, LIVE, NOT_STARTED, f"#{i}", 1_700_000_000.5 + i, {"n": i})
        for i in range(20)
    ]
    for event in events:
        await store.publish_event(event)
    await eventually(lambda: len(received) == len(also) == len(events))
    assert received == events
    assert also == events
    assert asyncio.current_task() not in tasks  # never called inside publish_event


@pytest.mark.parametrize("make_store", ["redis"], indirect=True)
async def test_events_reach_every_node(store: RoomStore, make_store: StoreFactory) -> None:
    other = await make_store()
    here: list[RoomEvent] = []
    there: list[RoomEvent] = []
    store.subscribe(here.append)
    other.subscribe(there.append)
    event = RoomEvent("replay_ready", "wx1", 3, ENDED, data={"replay_id": "r1"})
    await other.publish_event(event)
    await eventually(lambda: here and there)
    assert here == [event]
    assert there == [event]


@pytest.mark.parametrize("make_store", ["redis"], indirect=True)
async def test_events_resume_after_the_connection_drops(
    store: RoomStore, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[RoomEvent] = []
    store.subscribe(received.append)
    admin = aioredis.from_url(redis_url)
    try:
        assert await admin.client_kill_filter(_type="pubsub") >= 1
    finally:
        await admin.aclose()
    event = RoomEvent("status", "wx1", 1, LIVE, NOT_STARTED)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not received and loop.time() < deadline:  # events published while it reconnects are lost
        await store.publish_event(event)
        await asyncio.sleep(0.1)
    assert received[:1] == [event]
    assert "reconnecting" in caplog.text


async def test_deliveries_capped_newest_first(store: RoomStore) -> None:
    total = DELIVERIES_KEPT + 5
    for n in range(total):
        await store.log_delivery("wx1", {"n": n, "event": "status", "ok": True})
    await store.log_delivery("wx2", {"n": -1, "error": "超时"})
    assert [record["n"] for record in await store.deliveries("wx1")] == list(range(total - 1, total - 101, -1))
    assert [record["n"] for record in await store.deliveries("wx1", 5000)] == list(range(total - 1, 4, -1))
    assert await store.deliveries("wx2") == [{"n": -1, "error": "超时"}]
    assert await store.deliveries("wx3") == []


# ------------------------------------------------------------ documents, logs and messages


async def test_documents_by_collection_and_key(store: RoomStore, make_store: StoreFactory) -> None:
    other = await make_store()  # another process or node
    await store.put_doc("goods:wx1", "1", {"name": "茶杯", "price": 1990})
    await store.put_doc("goods:wx1", "2", {"name": "茶壶"})
    await store.put_doc("goods:wx2", "1", {"name": "other app"})
    assert await other.get_doc("goods:wx1", "1") == {"name": "茶杯", "price": 1990}
    assert await other.list_docs("goods:wx1") == {"1": {"name": "茶杯", "price": 1990}, "2": {"name": "茶壶"}}
    assert await other.count_docs("goods:wx1") == 2
    await other.put_doc("goods:wx1", "1", {"name": "replaced"})
    assert await store.get_doc("goods:wx1", "1") == {"name": "replaced"}
    assert await store.add_doc("goods:wx1", "1", {"name": "not added"}) is False
    assert await store.get_doc("goods:wx1", "1") == {"name": "replaced"}
    assert await store.add_doc("goods:wx1", "3", {"name": "added"}) is True
    assert await store.delete_doc("goods:wx1", "3") is True
    assert await store.delete_doc("goods:wx1", "3") is False
    assert await store.get_doc("goods:wx1", "3") is None
    await store.drop_docs("goods:wx1")
    assert await store.list_docs("goods:wx1") == {}
    assert await store.count_docs("goods:wx1") == 0
    assert await store.list_docs("goods:wx2") == {"1": {"name": "other app"}}


async def test_add_doc_and_next_id_race_across_processes(store: RoomStore, make_store: StoreFactory) -> None:
    stores = [store, *[await make_store() for _ in range(3)]]
    added = await asyncio.gather(*(s.add_doc("roles:wx1", "alice", {"by": n}) for n, s in enumerate(stores)))
    assert sorted(added) == [False, False, False, True]
    ids = await asyncio.gather(*(s.next_id("goods") for s in stores for _ in range(5)))
    assert sorted(ids) == list(range(1, 21))
    assert await store.next_id("other") == 1


async def test_next_id_steps_as_a_shared_counter(store: RoomStore, make_store: StoreFactory) -> None:
    other = await make_store()
    assert await store.next_id("likes:1", 0) == 0  # a read: nothing counted yet
    totals = await asyncio.gather(store.next_id("likes:1", 30), other.next_id("likes:1", 12))
    assert sorted(totals) in ([12, 42], [30, 42])
    assert await other.next_id("likes:1", 0) == 42
    assert await store.next_id("likes:1") == 43


async def test_logs_ordered_by_score_then_sequence(store: RoomStore, make_store: StoreFactory) -> None:
    other = await make_store()
    seqs = [
        await s.append_log("comments:7", score, {"text": text})
        for s, score, text in [
            (store, 2.5, "b"),
            (other, 1.0, "a"),
            (store, 2.5, "c"),
            (other, 10.0, "d"),
            (store, -1.0, "z"),
        ]
    ]
    assert seqs == [1, 2, 3, 4, 5]
    assert [e["text"] for e in await store.read_log("comments:7")] == ["z", "a", "b", "c", "d"]
    assert await other.read_log("comments:7", 1.0, 2.5) == [
        {"text": "a", "seq": 2},
        {"text": "b", "seq": 1},
        {"text": "c", "seq": 3},
    ]
    assert [e["text"] for e in await store.read_log("comments:7", 2.0, limit=2)] == ["b", "c"]
    assert await store.read_log("comments:8") == []
    await store.append_log("comments:8", 0, {"text": "kept"})
    await store.drop_log("comments:7")
    assert await store.read_log("comments:7") == []
    assert await store.append_log("comments:7", 0, {"text": "again"}) >= 1
    assert [e["text"] for e in await store.read_log("comments:8")] == ["kept"]


@pytest.mark.parametrize("shared", [False, True])
async def test_messages_in_order_beside_events(store: RoomStore, make_store: StoreFactory, shared: bool) -> None:
    if shared:
        if isinstance(store, RedisStore):
            pytest.skip("a Redis store is always shared")
        path = store.path  # type: ignore[attr-defined]
        store, other = SqliteStore(path, shared_events=True), SqliteStore(path, shared_events=True)
        await store.open()
        await other.open()
    else:
        other = await make_store() if isinstance(store, RedisStore) else store
    try:
        here: list[tuple[str, dict[str, object]]] = []
        there: list[tuple[str, dict[str, object]]] = []
        events: list[RoomEvent] = []
        store.subscribe_messages(lambda topic, message: here.append((topic, message)))
        other.subscribe_messages(lambda topic, message: there.append((topic, message)))
        other.subscribe(events.append)
        sent = [(f"room:{n % 2}", {"type": "comment", "n": n, "text": "评论"}) for n in range(30)]
        for topic, message in sent:
            await store.publish_message(topic, message)
        await store.publish_event(RoomEvent("status", "wx1", 1, LIVE, NOT_STARTED))
        await eventually(lambda: len(here) == len(there) == len(sent) and events)
        assert here == sent
        assert there == sent
        assert [e.roomid for e in events] == [1]  # messages are not events
    finally:
        if shared:
            await store.close()
            await other.close()


# ------------------------------------------------------------ durability


async def test_everything_survives_a_restart(store: RoomStore, make_store: StoreFactory) -> None:
    app = App("wx1", "secret", "app", "push", created_at=1.5)
    token = Token("token", "wx1", time.time() + 600)
    media = Media("m1", "wx1", "image", "image/png", 1, 1, 1, "media/m1.png", 1.0, 2.0)
    replay = Replay("r1", 1, "wx1", 1, "ready", 1.0, 2.0)
    await store.put_app(app)
    await store.put_token(token)
    await store.put_media(media)
    await store.put_replay(replay)
    room = await store.create_room(new_room(goods=[Goods(3).to_dict()]))
    room = await store.transition(room.roomid, [NOT_STARTED], LIVE, {"live_sessions": 1})  # type: ignore[assignment]
    last = await store.create_room(new_room("wx2"))
    await store.delete_room(last.roomid)
    assert await store.incr_counter("lives:wx1", 1, 600) is True
    assert await store.claim_live_slot("wx1", room.roomid, 1) is True
    await store.log_delivery("wx1", {"n": 1})
    await store.close()

    again = await make_store()
    assert await again.get_app("wx1") == app
    assert await again.get_token("token") == token
    assert await again.get_media("m1") == media
    assert await again.list_replays(1) == [replay]
    assert await again.get_room(room.roomid) == room
    assert await again.list_rooms("wx1", 0, 10) == ([room], 1)
    assert await again.rooms_in_status([LIVE]) == [room]
    assert await again.incr_counter("lives:wx1", 1, 600) is False
    assert await again.live_slots("wx1") == {room.roomid}
    assert await again.deliveries("wx1") == [{"n": 1}]
    assert (await again.create_room(new_room())).roomid == last.roomid + 1  # never reused
