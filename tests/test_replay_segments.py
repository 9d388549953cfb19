"""Replay segments (issue 14): every stretch of a live a ready replay within 10 s of the anchor
leaving, get_replay listing them in order, updatereplay after the end and close_replay hiding them,
and clips of the recording between two wall-clock times (goods explainer videos)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from api.errors import ApiError
from api.models import LiveStatus, Replay
from api.replays import ClipRefused
from recorder.clip import cut
from recorder.finalize import finalize
from recorder.playlist import PLAYLIST, Entry, read, render
from recorder.recording import Recording
from tests.conftest import FFPROBE, decode_cleanly, make_room, needs_ffmpeg, probe_frames, publish, run
from tests.hevc import FPS
from tests.test_replays import access_token, cli_room, get_replay, probe, wait_replay
from tests.test_rooms_live import wait_status
from tests.test_webhooks import Receiver

pytestmark = needs_ffmpeg

READY_WITHIN = 10.0  # seconds from the anchor leaving to its segment listed by get_replay


async def wait_segments(session: aiohttp.ClientSession, http: str, token: str, roomid: int, count: int) -> float:
    """Poll get_replay until it lists ``count`` segments; how long that took (at most READY_WITHIN)."""
    started = time.monotonic()
    while True:
        reply = await get_replay(session, http, token, roomid)
        assert reply["errcode"] == 0, reply
        if reply["total"] == count:
            return time.monotonic() - started
        elapsed = time.monotonic() - started
        assert elapsed < READY_WITHIN, f"{reply['total']} segments listed {elapsed:.1f} s after the anchor left"
        await asyncio.sleep(0.1)


def dated(server, replay: Replay) -> list[Entry]:  # type: ignore[no-untyped-def]
    entries = read((server.settings.data_dir / "replays" / replay.path / PLAYLIST).read_text())
    assert entries and all(e.date is not None for e in entries), entries
    return entries


async def official(session: aiohttp.ClientSession, http: str, token: str, path: str, body: dict[str, Any]) -> dict:
    async with session.post(f"{http}{path}", params={"access_token": token}, json=body) as response:
        return await response.json()


async def status_of(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        await response.read()
        return response.status


async def test_each_stretch_is_a_segment_ready_within_seconds(make_server):
    server = await make_server(allow_anonymous_publish=False, sweep_interval_seconds=0.2)
    receiver = Receiver([])
    await receiver.start()
    http = f"http://127.0.0.1:{server.http_port}"
    try:
        app, room = await make_room(server, closeReplay=0)
        await server.apps.update_app(app, {"webhook_url": receiver.url})
        url = server.urls.push_url(app, room)
        async with aiohttp.ClientSession() as session:
            token = await access_token(session, http, app)
            for count, seconds in ((1, 4), (2, 3)):
                # The anchor pushes, stops (106), and comes back within the hub's grace: the same hub
                # stream, whose GOP cache still holds the end of the first stretch.
                pub = await publish(url, seconds=seconds)
                await wait_status(server, room, LiveStatus.LIVE)
                await pub.process.wait()
                assert await wait_segments(session, http, token, room.roomid, count) <= READY_WITHIN
                assert (await server.store.get_room(room.roomid)).live_status == LiveStatus.INTERRUPTED
                segment = (await server.store.list_replays(room.roomid))[-1]
                assert segment.status == "ready" and abs(segment.duration - seconds) <= 1.0, segment
                info = await probe(f"{http}/replays/{segment.path}/replay.mp4")
                assert sorted(s["codec_name"] for s in info["streams"]) == ["aac", "h264"]
                assert abs(float(info["format"]["duration"]) - segment.duration) <= 0.5, info["format"]

            first, second = await server.store.list_replays(room.roomid)
            # Nothing in two segments: the second starts after the first ends (wall clock).
            last = dated(server, first)[-1]
            assert last.date is not None and dated(server, second)[0].date is not None
            assert dated(server, second)[0].date >= last.date + last.duration - 0.2

            await server.room_status.admin_action(app, room.roomid, "end")
            await wait_status(server, room, LiveStatus.ENDED)
            reply = await get_replay(session, http, token, room.roomid)
            media = [f"{http}/replays/{r.path}/index.m3u8" for r in (first, second)]
            assert reply["total"] == 2 and [r["media_url"] for r in reply["live_replay"]] == media, reply
            body = {"action": "get_replay", "room_id": room.roomid, "start": 1, "limit": 10}
            reply = await official(session, http, token, "/wxa/business/getliveinfo", body)
            assert reply["total"] == 2 and [r["media_url"] for r in reply["live_replay"]] == media[1:]
            assert len(await server.store.list_replays(room.roomid)) == 2, "the end adds nothing"
            await receiver.wait_calls(6)  # 101, 106, 101, 106, 103 and a replay_ready per segment
            ready = [body["data"]["replay_id"] for _, body in receiver.calls if body["event"] == "replay_ready"]
            assert ready == [first.replay_id, second.replay_id]

            # updatereplay after the end: closing hides the segments from get_replay and viewers
            # (nothing is deleted), opening shows them again; other switches stay refused.
            update = "/wxaapi/broadcast/room/updatereplay"
            assert (await official(session, http, token, update, {"roomId": room.roomid, "closeReplay": 1}))[
                "errcode"
            ] == 0
            reply = await get_replay(session, http, token, room.roomid)
            assert (reply["errcode"], reply["live_replay"], reply["total"]) == (0, [], 0), reply
            for name in ("index.m3u8", "replay.mp4", "cover.jpg", "seg00000.ts"):
                assert await status_of(session, f"{http}/replays/{first.path}/{name}") == 404, name
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(f"{http}/api/v1/rooms/{room.roomid}/replays", headers=headers) as response:
                assert len((await response.json())["replays"]) == 2, "the operator still sees them"
            kf = await official(
                session, http, token, "/wxaapi/broadcast/room/updatekf", {"roomId": room.roomid, "closeKf": 1}
            )
            assert kf["errcode"] == 300023, kf
            await official(session, http, token, update, {"roomId": room.roomid, "closeReplay": 0})
            reply = await get_replay(session, http, token, room.roomid)
            assert reply["total"] == 2 and [r["media_url"] for r in reply["live_replay"]] == media
            assert await status_of(session, f"{http}/replays/{first.path}/replay.mp4") == 200
    finally:
        await receiver.stop()


async def clip_duration(path: Path) -> tuple[float, bool]:
    """The clip's duration, and whether its first video frame is a keyframe."""
    info = await probe(str(path))
    code, out, err = await run(
        FFPROBE, "-v", "error", "-select_streams", "v", "-read_intervals", "%+#1", "-show_entries",
        "frame=key_frame", "-of", "csv=p=0", str(path),
    )  # fmt: skip
    assert code == 0, err.decode()
    return float(info["format"]["duration"]), out.decode().strip().startswith("1")


async def test_a_clip_is_cut_from_the_recording_between_two_wall_clock_times(make_server):
    server = await make_server(allow_anonymous_publish=False, sweep_interval_seconds=0.2, clip_max_seconds=60)
    app, room = await make_room(server, closeReplay=0)
    pub = await publish(server.urls.push_url(app, room), seconds=7)
    await wait_status(server, room, LiveStatus.LIVE)
    try:
        # While the live goes on: from a written segment of the replay being recorded, up to its end.
        deadline = time.monotonic() + 10
        while True:
            # The recording's record is written just after the room goes live (on a busy machine, later).
            recordings = await server.store.list_replays(room.roomid)
            path = server.settings.data_dir / "replays" / recordings[0].path / PLAYLIST if recordings else None
            if path is not None and path.exists() and read(path.read_text()):
                break
            assert time.monotonic() < deadline, "no segment written"
            await asyncio.sleep(0.1)
        first = read(path.read_text())[0]
        assert first.date is not None
        live = await server.replays.clip(room.roomid, first.date + 0.5, None, name="live")
        assert live is not None and live.name == "live.mp4"
        duration, keyframe = await clip_duration(live)
        assert keyframe and first.duration - 1.0 <= duration <= first.duration + 0.2, (duration, first)
    finally:
        await pub.process.wait()

    await wait_status(server, room, LiveStatus.INTERRUPTED)
    (replay,) = await server.store.list_replays(room.roomid)
    while replay.status != "ready":
        await asyncio.sleep(0.1)
        (replay,) = await server.store.list_replays(room.roomid)
    start = first.date + 2.3
    end = start + 3.0
    clip = await server.replays.clip(room.roomid, start, end, name="goods-7")
    assert clip == server.settings.data_dir / "replays" / replay.path / "clips" / "goods-7.mp4"
    duration, keyframe = await clip_duration(clip)
    # From the keyframe at or before the start (a GOP is 1 s) to the end.
    assert keyframe and end - start <= duration + 0.1 and duration <= end - start + 1.1, duration
    await decode_cleanly(str(clip))

    # Served (also while the replay is closed: clips are the goods' videos, not the replay).
    await server.rooms.set_flag(app, room.roomid, "close_replay", 1)
    url = server.replays.clip_url(clip)
    assert url == f"http://127.0.0.1:{server.http_port}/replays/{replay.path}/clips/goods-7.mp4"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200 and response.content_type == "video/mp4"
        assert await response.read() == clip.read_bytes()

    assert await server.replays.clip(room.roomid, first.date - 600, first.date - 550) is None, "nothing recorded then"
    assert await server.replays.clip(room.roomid + 1, start, end) is None, "another room"
    with pytest.raises(ClipRefused, match="before it starts"):
        await server.replays.clip(room.roomid, end, start)
    with pytest.raises(ClipRefused, match="clip_max_seconds"):
        await server.replays.clip(room.roomid, start, start + 61)
    with pytest.raises(ClipRefused, match="letters, digits"):
        await server.replays.clip(room.roomid, start, end, name="../x")
    # Two cuts of one room at once: one after the other, both whole.
    both = await asyncio.gather(
        server.replays.clip(room.roomid, start, end, name="a"), server.replays.clip(room.roomid, start, end, name="b")
    )
    assert [p.name for p in both if p is not None] == ["a.mp4", "b.mp4"]
    assert both[0].read_bytes() == both[1].read_bytes() == clip.read_bytes()


async def test_a_clip_of_an_hevc_recording_copies_its_fmp4_frames(tmp_path, hevc_media):
    """fMP4 segments (HEVC) clip as TS ones do: from the keyframe at or before the start, hvc1."""
    packets, _ = hevc_media
    folder = tmp_path / "replay"
    folder.mkdir()
    with ThreadPoolExecutor(1) as writer:
        recording = Recording("r", folder, 2.0, writer)
        for packet in packets:
            recording.feed(packet)
        await recording.close()
        assert recording.mp4 is not None
        recording.mp4.finish()
        await asyncio.to_thread(finalize, folder, recording.mp4)
    # Fed at once, the segments were dated together: date them as a live would have.
    recorded = 1_800_000_000.0
    entries, at = [], recorded
    for entry in read((folder / PLAYLIST).read_text()):
        entries.append(replace(entry, date=at))
        at += entry.duration
    (folder / PLAYLIST).write_text(render(entries, ended=True))

    clip = await asyncio.to_thread(cut, [tmp_path / "elsewhere", folder], recorded + 2.5, recorded + 4.5, "h")
    assert clip is not None and clip.path == folder / "clips" / "h.mp4"
    assert abs(clip.start - (recorded + 2)) <= 0.05 and abs(clip.duration - 2.5) <= 0.1, clip
    (video,) = [s for s in await probe_frames(str(clip.path)) if s["codec_type"] == "video"]
    assert (video["codec_name"], video["codec_tag_string"]) == ("hevc", "hvc1")
    assert int(video["nb_read_frames"]) == 2.5 * FPS + 0.5, "the frames at 2.00, 2.04 ... 4.48 s"
    duration, keyframe = await clip_duration(clip.path)
    assert keyframe and abs(duration - 2.5) <= 0.1, duration
    await decode_cleanly(str(clip.path))
    assert await asyncio.to_thread(cut, [folder], recorded + 60, recorded + 70, "late") is None


async def test_only_the_replay_switch_changes_after_the_end(make_server):
    server = await make_server()
    app, room = await make_room(server, closeReplay=0)
    await server.room_status.admin_action(app, room.roomid, "end")  # 102 -> 103
    assert (await server.rooms.set_flag(app, room.roomid, "close_replay", 1)).close_replay == 1
    assert (await server.rooms.set_flag(app, room.roomid, "close_replay", 0)).close_replay == 0
    for key in ("close_kf", "ban_comment", "is_feeds_public"):
        with pytest.raises(ApiError) as refused:
            await server.rooms.set_flag(app, room.roomid, key, 1)
        assert refused.value.errcode == 300023, key
    other, banned = await make_room(server, "banned", closeReplay=0)
    await server.room_status.admin_action(other, banned.roomid, "ban")
    with pytest.raises(ApiError) as refused:
        await server.rooms.set_flag(other, banned.roomid, "close_replay", 1)
    assert refused.value.errcode == 300023


async def test_a_server_killed_during_the_second_segment_keeps_both(tmp_path):
    """SIGKILL mid-stretch: the finished segment stays as it was, the one being recorded is
    finalized at the next start, and get_replay lists both, in order."""
    pub = None
    async with cli_room(tmp_path) as served:
        store, app, room, urls = served.store, served.app, served.room, served.urls
        http = f"http://127.0.0.1:{served.http}"
        try:
            server = await served.serve()
            pub = await publish(urls.push_url(app, room), seconds=2)
            await pub.process.wait()
            first = await wait_replay(store, room.roomid, "ready", timeout=10)
            pub = await publish(urls.push_url(app, room), seconds=60)
            await wait_replay(store, room.roomid, "recording", timeout=10)
            await asyncio.sleep(5)  # a 4 s segment on disk
            server.kill()
            await server.wait()
            await pub.stop()

            await served.serve()
            replays = await store.list_replays(room.roomid)
            assert [r.status for r in replays] == ["ready", "ready"] and replays[0] == first, replays
            assert replays[1].duration >= 3.5, replays[1]
            async with aiohttp.ClientSession() as session:
                reply = await get_replay(session, http, await access_token(session, http, app), room.roomid)
            assert [r["media_url"] for r in reply["live_replay"]] == [
                f"{http}/replays/{r.path}/index.m3u8" for r in replays
            ]
            await decode_cleanly(f"{http}/replays/{replays[1].path}/replay.mp4")
        finally:
            if pub is not None:
                await pub.stop()
