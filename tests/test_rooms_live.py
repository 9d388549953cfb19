"""The room status machine end to end: signed push URLs, ffmpeg publishing, admin actions, timers."""

from __future__ import annotations

import asyncio
import time

import pytest

from api.errors import ApiError
from api.models import LiveStatus
from api.signing import sign_query
from tests.conftest import make_room, needs_ffmpeg, official_room_body, publish, wait_live

pytestmark = needs_ffmpeg


async def status_of(server, room) -> int:
    return (await server.store.get_room(room.roomid)).live_status


async def wait_status(server, room, status: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while (current := await status_of(server, room)) != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"room {room.roomid} is {current}, expected {status}")
        await asyncio.sleep(0.05)


async def publish_refused(url: str) -> str:
    """Push with ffmpeg and expect the server to refuse it; return what ffmpeg printed."""
    pub = await publish(url, seconds=5)
    code = await asyncio.wait_for(pub.process.wait(), 15)
    err = (await pub.process.stderr.read()).decode()
    assert code != 0, "the publish should have been refused"
    return err


@pytest.fixture
async def rooms_server(make_server):
    return await make_server(
        allow_anonymous_publish=False,
        grace_seconds=0.5,
        interrupt_grace_seconds=3,
        sweep_interval_seconds=0.2,
        publisher_idle_timeout=3,
    )


async def test_status_follows_the_anchor(rooms_server):
    server = rooms_server
    app, room = await make_room(server)
    assert room.live_status == LiveStatus.NOT_STARTED
    url = server.urls.push_url(app, room)
    assert url.startswith(f"rtmp://127.0.0.1:{server.rtmp_port}/live/{app.appid}-{room.roomid}?txSecret=")

    pub = await publish(url)  # anchors may start before startTime
    await wait_status(server, room, LiveStatus.LIVE)
    await wait_live(server, room.stream_name)
    stored = await server.store.get_room(room.roomid)
    assert stored.live_sessions == 1 and stored.live_started_at > 0

    await pub.stop()  # the anchor's network drops
    await wait_status(server, room, LiveStatus.INTERRUPTED)

    pub = await publish(url)  # back within the grace
    await wait_status(server, room, LiveStatus.LIVE)
    assert (await server.store.get_room(room.roomid)).live_sessions == 1, "a return is the same session"

    await server.room_status.admin_action(app, room.roomid, "end")
    assert await status_of(server, room) == LiveStatus.ENDED
    assert await asyncio.wait_for(pub.process.wait(), 10) is not None, "ending the room stops the publisher"
    err = await publish_refused(url)
    assert "has ended (103)" in err, err
    assert room.roomid not in await server.store.live_slots(app.appid)


async def test_interruption_past_the_grace_ends_the_live(rooms_server):
    server = rooms_server
    app, room = await make_room(server)
    pub = await publish(server.urls.push_url(app, room))
    await wait_status(server, room, LiveStatus.LIVE)
    await pub.stop()
    await wait_status(server, room, LiveStatus.INTERRUPTED)
    await wait_status(server, room, LiveStatus.ENDED, timeout=10)
    assert "did not come back" in (await server.store.get_room(room.roomid)).status_reason


async def test_pause_kicks_and_refuses_until_resumed(rooms_server):
    server = rooms_server
    app, room = await make_room(server)
    url = server.urls.push_url(app, room)
    pub = await publish(url)
    await wait_status(server, room, LiveStatus.LIVE)
    await server.room_status.admin_action(app, room.roomid, "pause")
    assert await status_of(server, room) == LiveStatus.PAUSED
    await asyncio.wait_for(pub.process.wait(), 10)
    assert "paused (105)" in await publish_refused(url)

    await server.room_status.admin_action(app, room.roomid, "resume")
    assert await status_of(server, room) == LiveStatus.INTERRUPTED
    pub = await publish(url)
    await wait_status(server, room, LiveStatus.LIVE)
    await pub.stop()


async def test_resume_while_the_anchor_pushes_goes_live(rooms_server):
    """The official 105 -> 101: a room resumed while its anchor's stream is here is live again at once.
    (Pausing kicks the anchor here, so this is the anchor that the pause did not reach: the room was
    paused in the store, with no event to this node.)"""
    server = rooms_server
    app, room = await make_room(server)
    pub = await publish(server.urls.push_url(app, room))
    await wait_status(server, room, LiveStatus.LIVE)
    assert await server.store.transition(room.roomid, {LiveStatus.LIVE}, LiveStatus.PAUSED, {}) is not None
    resumed = await server.room_status.admin_action(app, room.roomid, "resume")
    assert resumed.live_status == LiveStatus.LIVE and resumed.status_reason == "resumed by an admin"
    assert pub.process.returncode is None, "the anchor was not disconnected"
    await pub.stop()
    await wait_status(server, room, LiveStatus.INTERRUPTED)


async def test_ban_is_final(rooms_server):
    server = rooms_server
    app, room = await make_room(server)
    url = server.urls.push_url(app, room)
    pub = await publish(url)
    await wait_status(server, room, LiveStatus.LIVE)
    await server.room_status.admin_action(app, room.roomid, "ban")
    await asyncio.wait_for(pub.process.wait(), 10)
    assert "banned (104)" in await publish_refused(url)
    with pytest.raises(Exception, match="resume is not allowed"):
        await server.room_status.admin_action(app, room.roomid, "resume")
    assert await status_of(server, room) == LiveStatus.BANNED


async def test_room_that_never_went_live_expires(rooms_server):
    server = rooms_server
    app, room = await make_room(server)
    url = server.urls.push_url(app, room)
    stored = await server.store.get_room(room.roomid)
    stored.end_time = int(time.time()) - 1  # as if its planned end passed
    await server.store.put_room(stored)
    await wait_status(server, room, LiveStatus.EXPIRED, timeout=5)
    assert "expired (107)" in await publish_refused(url)
    with pytest.raises(ApiError, match="cannot go live again"):
        server.urls.push_url(app, await server.store.get_room(room.roomid))


async def test_bad_signatures_are_refused_with_a_reason(rooms_server):
    server = rooms_server
    app, room = await make_room(server)
    base = f"rtmp://127.0.0.1:{server.rtmp_port}/live/{room.stream_name}"
    assert "no txSecret" in await publish_refused(base)
    forged = sign_query("not-the-key", room.stream_name, int(time.time()) + 3600)
    assert "does not match" in await publish_refused(f"{base}?{forged}")
    expired = sign_query(app.push_key, room.stream_name, int(time.time()) - 10)
    assert "expired" in await publish_refused(f"{base}?{expired}")
    other_app, other_room = await make_room(server)
    # A valid signature of another app's room does not open this one.
    stolen = server.urls.push_url(other_app, other_room).split("?", 1)[1]
    assert "does not match" in await publish_refused(f"{base}?{stolen}")
    assert await status_of(server, room) == LiveStatus.NOT_STARTED


async def test_concurrent_lives_are_limited_per_app(make_server):
    server = await make_server(allow_anonymous_publish=False, max_live_rooms=1)
    app, first = await make_room(server)
    second = await server.rooms.create_room(app, official_room_body(app.appid))
    pub = await publish(server.urls.push_url(app, first))
    try:
        await wait_status(server, first, LiveStatus.LIVE)
        err = await publish_refused(server.urls.push_url(app, second))
        assert "already has 1 rooms live" in err, err
    finally:
        await pub.stop()


async def test_rooms_survive_a_restart(make_server, tmp_path):
    server = await make_server(allow_anonymous_publish=False, data_dir=tmp_path / "keep")
    app, room = await make_room(server)
    await server.room_status.admin_action(app, room.roomid, "ban")
    await server.stop()
    again = await make_server(allow_anonymous_publish=False, data_dir=tmp_path / "keep")
    stored = await again.store.get_room(room.roomid)
    assert stored is not None and stored.live_status == LiveStatus.BANNED and stored.name == room.name
    assert (await again.store.get_app(app.appid)).push_key == app.push_key


async def test_a_room_live_when_the_server_died_waits_for_its_anchor(make_server, tmp_path):
    server = await make_server(allow_anonymous_publish=False, data_dir=tmp_path / "crash")
    app, room = await make_room(server)
    await server.store.transition(room.roomid, {LiveStatus.NOT_STARTED}, LiveStatus.LIVE, {})
    await server.stop()  # as after a crash: the room says 101 but nobody publishes
    again = await make_server(allow_anonymous_publish=False, data_dir=tmp_path / "crash", interrupt_grace_seconds=60)
    stored = await again.store.get_room(room.roomid)
    assert stored.live_status == LiveStatus.INTERRUPTED and "restarted" in stored.status_reason
    pub = await publish(again.urls.push_url(app, stored))
    try:
        await wait_status(again, room, LiveStatus.LIVE)
    finally:
        await pub.stop()
