"""The room status machine end to end: signed push URLs, ffmpeg publishing, admin actions, timers."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from api.errors import ApiError
from api.models import LiveStatus
from api.signing import sign_query
from relay.formats.packet import VIDEO, Packet
from tests.conftest import hub_stream, make_room, needs_ffmpeg, official_room_body, publish, wait_live

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


class FlvTags:
    """A real HTTP-FLV viewer that records each media tag: (arrival time, kind, keyframe, is a header)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.tags: list[tuple[float, int, bool, bool]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async with aiohttp.ClientSession() as session, session.get(self.url) as response:
            assert response.status == 200
            await response.content.readexactly(13)  # FLV header, first tag size
            while True:
                head = await response.content.readexactly(11)
                size = int.from_bytes(head[1:4], "big")
                body = await response.content.readexactly(size + 4)
                kind = head[0]
                if kind in (8, 9) and size >= 2:
                    keyframe = kind == 9 and body[0] >> 4 == 1
                    self.tags.append((time.monotonic(), kind, keyframe, body[1] == 0))

    def media_since(self, moment: float) -> list[tuple[float, int, bool, bool]]:
        return [tag for tag in self.tags if tag[0] > moment and not tag[3]]

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


class PacketLog:
    """A hub sink (as HLS, the recorder and WebRTC are) that logs what it is fed."""

    def __init__(self) -> None:
        self.log: list[tuple[float, str, bool]] = []  # (time, "media"/"header"/"new publisher", keyframe)

    def feed(self, packet: Packet) -> None:
        kind = "header" if packet.config else "media"
        self.log.append((time.monotonic(), kind, packet.kind == VIDEO and packet.keyframe))

    def new_publisher(self) -> None:
        self.log.append((time.monotonic(), "new publisher", False))

    def end(self) -> None:
        pass

    def failed(self, error: Exception) -> None:
        raise AssertionError(f"the sink failed: {error}")

    def since(self, moment: float) -> list[tuple[float, str, bool]]:
        return [entry for entry in self.log if entry[0] > moment and entry[1] != "header"]


async def test_pause_holds_the_stream_and_resume_makes_it_live_at_once(rooms_server):
    """As the official service: pausing (105) leaves the anchor pushing and connected (and one that
    reconnects is let in), viewers get nothing meanwhile; resuming makes the room live (101) at once,
    and viewers start again at a keyframe."""
    server = rooms_server
    app, room = await make_room(server)
    url = server.urls.push_url(app, room)
    pub = await publish(url)
    await wait_status(server, room, LiveStatus.LIVE)
    viewer = FlvTags(f"{server.urls.http_base}/live/{room.stream_name}.flv")
    sink = PacketLog()
    assert server.hub.add_sink("live", room.stream_name, sink) is not None
    try:
        await asyncio.sleep(1.5)
        assert viewer.media_since(0), "the viewer plays before the pause"

        await server.room_status.admin_action(app, room.roomid, "pause")
        assert await status_of(server, room) == LiveStatus.PAUSED
        paused_at = time.monotonic()
        await asyncio.sleep(2)
        assert pub.process.returncode is None, "the anchor stays connected"
        assert not viewer.media_since(paused_at + 0.3), "nothing reaches viewers while the room is paused"
        assert not sink.since(paused_at), "nor the sinks (HLS, WebRTC, recorder, transcoder)"
        assert hub_stream(server, "live", room.stream_name).held

        await pub.stop()  # the anchor's network drops during the pause, and it comes back
        pub = await publish(url)
        await asyncio.sleep(1.5)
        assert pub.process.returncode is None, "the anchor of a paused room may reconnect"
        assert await status_of(server, room) == LiveStatus.PAUSED
        assert not viewer.media_since(paused_at + 0.3)

        resumed = await server.room_status.admin_action(app, room.roomid, "resume")
        assert resumed.live_status == LiveStatus.LIVE and resumed.status_reason == "resumed by an admin"
        resumed_at = time.monotonic()
        await asyncio.sleep(2.5)
        after = viewer.media_since(resumed_at)
        assert after, "viewers play again after the resume"
        first_video = next(tag for tag in after if tag[1] == 9)
        assert first_video[2], "viewers start again at a keyframe"
        fed = sink.since(paused_at)
        first_media = next(i for i, entry in enumerate(fed) if entry[1] == "media")
        # the anchor's reconnect, then the release: a sink takes each as a new publisher (a gap)
        assert [entry[1] for entry in fed[:first_media]] == ["new publisher", "new publisher"], fed[:3]
        assert fed[first_media][2] and fed[first_media][0] > resumed_at, "sinks start again at a keyframe"
    finally:
        await viewer.close()
    await pub.stop()
    await wait_status(server, room, LiveStatus.INTERRUPTED)


async def test_resume_without_the_anchor_waits_for_it(rooms_server):
    server = rooms_server
    app, room = await make_room(server)
    url = server.urls.push_url(app, room)
    pub = await publish(url)
    await wait_status(server, room, LiveStatus.LIVE)
    await server.room_status.admin_action(app, room.roomid, "pause")
    await pub.stop()
    await asyncio.sleep(0.5)
    assert await status_of(server, room) == LiveStatus.PAUSED, "the anchor leaving a paused room changes nothing"
    await server.room_status.admin_action(app, room.roomid, "resume")
    assert await status_of(server, room) == LiveStatus.INTERRUPTED
    pub = await publish(url)
    await wait_status(server, room, LiveStatus.LIVE)
    await pub.stop()


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
