"""Replays end to end: ffmpeg lives (H.264, MPEG-TS segments) and HEVC lives (fMP4 segments) recorded
to HLS VOD + MP4 + cover, publisher and server crashes, a change of codec configuration, get_replay
and REST, the replay_ready webhook, retention, and serving files with Range but nothing outside the
replay folder."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from api.apps import Apps
from api.models import App, LiveStatus, Media, Replay, Room
from api.rooms import Rooms, RoomSettings
from api.store import open_store
from api.store.base import RoomStore
from api.urls import Urls
from api.views import iso_time
from recorder.finalize import finalize
from recorder.mp4 import MP4, LiveMp4, SegmentReader, remux
from recorder.playlist import PLAYLIST
from recorder.recording import Recording
from relay.formats.packet import VIDEO
from tests.conftest import (
    FFMPEG,
    FFPROBE,
    decode_cleanly,
    free_port,
    hub_stream,
    make_room,
    needs_ffmpeg,
    official_room_body,
    probe_frames,
    publish,
    run,
)
from tests.hevc import FPS, PacketPublisher, hevc_packets
from tests.test_cli import start_cli, wait_http
from tests.test_rooms_live import wait_status
from tests.test_webhooks import Receiver

pytestmark = needs_ffmpeg


async def wait_replay(store, roomid: int, status: str, timeout: float) -> Replay:
    deadline = time.monotonic() + timeout
    while True:
        replays = await store.list_replays(roomid)
        if replays and replays[-1].status == status:
            return replays[-1]
        assert time.monotonic() < deadline, f"replays of room {roomid}: {replays}, expected one {status}"
        await asyncio.sleep(0.05)


def listed_files(folder: Path) -> SegmentReader:
    """The segments that the replay's VOD playlist lists, each after the init segment it maps."""
    source = SegmentReader()
    init = None
    for line in (folder / PLAYLIST).read_text().splitlines():
        if line.startswith("#EXT-X-MAP:"):
            init = folder / line.split('"')[1]
        elif line and not line.startswith("#"):
            source.add(folder / line, init)
    return source


def assert_mp4_is_the_remux_of_the_files(folder: Path) -> None:
    """The replay's MP4 is the same, byte for byte, as the MP4 remuxed afterwards from the files on disk."""
    again = folder / "again.mp4"
    remux(listed_files(folder), again)
    assert again.read_bytes() == (folder / MP4).read_bytes()
    again.unlink()


def assert_mp4_made_during_the_live(folder: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """The replay's MP4 is the one the recording made while the live went on, and the same as the
    MP4 remuxed from the files."""
    assert any("MP4 made during the live" in r.getMessage() for r in caplog.records), caplog.text
    assert_mp4_is_the_remux_of_the_files(folder)


async def probe(url: str) -> dict[str, Any]:
    code, out, err = await run(FFPROBE, "-v", "error", "-show_format", "-show_streams", "-of", "json", url)
    assert code == 0, f"ffprobe failed on {url}: {err.decode()[-2000:]}"
    return json.loads(out)


async def check_playable(base: str, duration: float, video: str = "h264") -> None:
    """The replay's MP4 and playlist both hold ``video`` + AAC for ``duration`` (± a GOP)."""
    for name in ("replay.mp4", "index.m3u8"):
        info = await probe(f"{base}/{name}")
        codecs = sorted(s["codec_name"] for s in info["streams"])
        assert codecs == sorted(["aac", video]), (name, codecs)
        assert abs(float(info["format"]["duration"]) - duration) <= 1.0, (name, info["format"]["duration"], duration)


async def fetch_mp4_and_cover(session: aiohttp.ClientSession, base: str) -> bytes:
    """The replay's MP4 (served as video/mp4 to any origin, laid out for progressive playback), after
    checking its cover: a 320x240 JPEG."""
    async with session.get(f"{base}/replay.mp4") as response:
        assert response.content_type == "video/mp4"
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        mp4 = await response.read()
    boxes = top_level_boxes(mp4)
    assert boxes.index("moov") < boxes.index("mdat"), f"not faststart: {boxes}"
    async with session.get(f"{base}/cover.jpg") as response:
        assert response.content_type == "image/jpeg"
        cover = await response.read()
    assert cover[:3] == b"\xff\xd8\xff" and cover[-2:] == b"\xff\xd9"
    (picture,) = (await probe(f"{base}/cover.jpg"))["streams"]
    assert (picture["width"], picture["height"]) == (320, 240)
    return mp4


def top_level_boxes(data: bytes) -> list[str]:
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        boxes.append(data[pos + 4 : pos + 8].decode())
        if size < 8:
            break
        pos += size
    return boxes


async def access_token(session: aiohttp.ClientSession, http: str, app) -> str:  # type: ignore[no-untyped-def]
    query = {"grant_type": "client_credential", "appid": app.appid, "secret": app.secret}
    async with session.get(f"{http}/cgi-bin/token", params=query) as response:
        return (await response.json())["access_token"]


async def get_replay(session: aiohttp.ClientSession, http: str, token: str, roomid: int) -> dict[str, Any]:
    """The WeChat-compatible get_replay reply for a room's replays."""
    body = {"action": "get_replay", "room_id": roomid, "start": 0, "limit": 10}
    async with session.post(f"{http}/wxa/business/getliveinfo", params={"access_token": token}, json=body) as response:
        return await response.json()


async def test_live_session_becomes_a_replay(make_server, caplog):
    caplog.set_level(logging.INFO, "minilive.recorder")
    server = await make_server(allow_anonymous_publish=False, sweep_interval_seconds=0.2)
    receiver = Receiver([])
    await receiver.start()
    try:
        app, room = await make_room(server, closeReplay=0)
        await server.apps.update_app(app, {"webhook_url": receiver.url})
        pub = await publish(server.urls.push_url(app, room), seconds=60)
        await wait_status(server, room, LiveStatus.LIVE)
        await asyncio.sleep(20)
        await server.room_status.admin_action(app, room.roomid, "end")
        replay = await wait_replay(server.store, room.roomid, "ready", timeout=5)
        await pub.stop()
        assert abs(replay.duration - 20) <= 2, replay
        folder = server.settings.data_dir / "replays" / replay.path
        assert replay.size == sum(f.stat().st_size for f in folder.iterdir())
        assert_mp4_made_during_the_live(folder, caplog)

        http = f"http://127.0.0.1:{server.http_port}"
        base = f"{http}/replays/{replay.path}"
        await check_playable(base, replay.duration)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/index.m3u8") as response:
                assert response.content_type == "application/vnd.apple.mpegurl"
                playlist = await response.text()
            assert "#EXT-X-PLAYLIST-TYPE:VOD" in playlist and playlist.rstrip().endswith("#EXT-X-ENDLIST")
            assert "#EXT-X-VERSION:3" in playlist and "#EXT-X-MAP" not in playlist
            mp4 = await fetch_mp4_and_cover(session, base)
            async with session.get(f"{base}/replay.mp4", headers={"Range": "bytes=100-199"}) as response:
                assert response.status == 206
                assert response.headers["Content-Range"] == f"bytes 100-199/{len(mp4)}"
                assert await response.read() == mp4[100:200]

            token = await access_token(session, http, app)
            reply = await get_replay(session, http, token, room.roomid)
            assert reply["errcode"] == 0 and reply["total"] == 1, reply
            assert reply["live_replay"] == [
                {
                    "create_time": iso_time(replay.created_at),
                    "expire_time": iso_time(replay.expire_at),
                    "media_url": f"{base}/index.m3u8",
                }
            ]
            assert replay.expire_at - replay.created_at == app.replay_retention_days * 86400
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(f"{http}/api/v1/rooms/{room.roomid}/replays", headers=headers) as response:
                (listed,) = (await response.json())["replays"]
            assert listed["status"] == "ready" and listed["urls"]["mp4"] == f"{base}/replay.mp4"

        await receiver.wait_calls(3)  # 101, 103, replay_ready
        ready = [body for _, body in receiver.calls if body["event"] == "replay_ready"]
        assert len(ready) == 1 and ready[0]["data"]["replay_id"] == replay.replay_id
        assert ready[0]["data"]["media_url"] == f"{base}/index.m3u8"
    finally:
        await receiver.stop()


async def test_hevc_live_becomes_a_replay_of_fmp4_segments(make_server, hevc_media, caplog):
    caplog.set_level(logging.INFO, "minilive.recorder")
    packets, _ = hevc_media
    frames = sum(1 for p in packets if p.kind == VIDEO and not p.config)
    server = await make_server(
        allow_anonymous_publish=False, grace_seconds=0.3, interrupt_grace_seconds=0.5, sweep_interval_seconds=0.2
    )
    app, room = await make_room(server, closeReplay=0)
    publisher = await PacketPublisher.start(server.urls.push_url(app, room))
    second_gop = next(i for i, p in enumerate(packets) if p.kind == VIDEO and p.keyframe and p.timestamp > 0)
    try:
        await publisher.send(packets[:second_gop])
        await wait_status(server, room, LiveStatus.LIVE)
        # The recording starts from the GOP cache, which still holds the first GOP: every frame is in it.
        await wait_replay(server.store, room.roomid, "recording", timeout=5)
        await publisher.send(packets[second_gop:])
    finally:
        await publisher.stop()  # the anchor quits: the room ends after its grace
    await wait_status(server, room, LiveStatus.ENDED)
    replay = await wait_replay(server.store, room.roomid, "ready", timeout=10)
    assert abs(replay.duration - frames / FPS) <= 0.1, replay
    folder = server.settings.data_dir / "replays" / replay.path
    names = sorted(f.name for f in folder.iterdir())
    assert names == ["cover.jpg", "index.m3u8", "init00000.mp4", "replay.mp4", "seg00000.m4s", "seg00001.m4s"]
    assert_mp4_made_during_the_live(folder, caplog)

    http = f"http://127.0.0.1:{server.http_port}"
    base = f"{http}/replays/{replay.path}"
    await check_playable(base, replay.duration, video="hevc")
    async with aiohttp.ClientSession() as session:
        reply = await get_replay(session, http, await access_token(session, http, app), room.roomid)
        assert reply["errcode"] == 0 and [r["media_url"] for r in reply["live_replay"]] == [f"{base}/index.m3u8"]
        async with session.get(f"{base}/index.m3u8") as response:
            playlist = await response.text()
        assert "#EXT-X-PLAYLIST-TYPE:VOD" in playlist and playlist.rstrip().endswith("#EXT-X-ENDLIST")
        assert "#EXT-X-VERSION:7" in playlist and playlist.count("#EXT-X-MAP:") == 1
        assert '#EXT-X-MAP:URI="init00000.mp4"\n#EXT-X-PROGRAM-DATE-TIME:' in playlist and ".ts" not in playlist
        async with session.get(f"{base}/init00000.mp4") as response:
            assert response.content_type == "video/mp4"
            assert top_level_boxes(await response.read()) == ["ftyp", "moov"]
        async with session.get(f"{base}/seg00001.m4s") as response:
            assert response.content_type == "video/iso.segment"
            assert top_level_boxes(await response.read()) == ["moof", "mdat"]
        await fetch_mp4_and_cover(session, base)
    (video,) = [s for s in await probe_frames(f"{base}/replay.mp4") if s["codec_type"] == "video"]
    assert (video["codec_name"], video["codec_tag_string"]) == ("hevc", "hvc1"), "hvc1, as Apple players want"
    assert (video["width"], video["height"], int(video["nb_read_frames"])) == (320, 240, frames)
    await decode_cleanly(f"{base}/replay.mp4")
    await decode_cleanly(f"{base}/index.m3u8")


async def wait_stream_gone(server, name: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while hub_stream(server, "live", name) is not None:
        assert time.monotonic() < deadline, f"stream {name} is still in the hub"
        await asyncio.sleep(0.05)


async def test_replay_switched_on_during_the_live_survives_killed_publishers(make_server, caplog):
    caplog.set_level(logging.INFO, "minilive.recorder")
    server = await make_server(
        allow_anonymous_publish=False,
        grace_seconds=0.3,
        interrupt_grace_seconds=3,
        sweep_interval_seconds=0.2,
        live_check_seconds=0.2,
    )
    app, room = await make_room(server)  # replay off (the official default)
    url = server.urls.push_url(app, room)
    pub = await publish(url, seconds=60)
    await wait_status(server, room, LiveStatus.LIVE)
    await asyncio.sleep(1)
    assert await server.store.list_replays(room.roomid) == []

    await server.rooms.set_flag(app, room.roomid, "close_replay", 0)  # updatereplay
    await wait_replay(server.store, room.roomid, "recording", timeout=2)
    recorded = []
    for attempt in (1, 2):
        # The anchor's app dies (SIGKILL: no goodbye); the hub's grace ends its stream, the room's
        # grace still runs: it comes back once on a new stream, and each stretch is a replay segment.
        started = time.monotonic()
        await asyncio.sleep(3)
        pub.process.kill()
        await pub.process.wait()
        recorded.append(time.monotonic() - started)
        await wait_status(server, room, LiveStatus.INTERRUPTED)
        await wait_stream_gone(server, room.stream_name)
        if attempt == 1:
            pub = await publish(url, seconds=60)
            await wait_status(server, room, LiveStatus.LIVE)

    await wait_status(server, room, LiveStatus.ENDED, timeout=10)
    segments = await server.store.list_replays(room.roomid)
    assert [r.status for r in segments] == ["ready", "ready"], segments
    assert {r.session for r in segments} == {room.live_sessions + 1}, "one live session"
    for replay, seconds in zip(segments, recorded, strict=True):
        # From the GOP cache at the switch or the return (up to a GOP earlier) to the kill.
        assert seconds - 1.5 <= replay.duration <= seconds + 2, (replay.duration, seconds)
        base = f"http://127.0.0.1:{server.http_port}/replays/{replay.path}"
        await check_playable(base, replay.duration)
        playlist = (server.settings.data_dir / "replays" / replay.path / PLAYLIST).read_text()
        assert "#EXT-X-DISCONTINUITY" not in playlist, playlist
        assert_mp4_made_during_the_live(server.settings.data_dir / "replays" / replay.path, caplog)


@dataclass(slots=True)
class CliRoom:
    """A room (replay on) in the store of ``minilive serve`` processes that the test starts (and
    kills) itself, on fixed ports and a data folder."""

    store: RoomStore
    app: App
    room: Room
    urls: Urls
    data: Path
    http: int
    args: tuple[str, ...]
    servers: list[asyncio.subprocess.Process] = field(default_factory=list)

    async def serve(self) -> asyncio.subprocess.Process:
        """Start a server on the room's store and wait until it answers."""
        self.servers.append(await start_cli(*self.args))
        await wait_http(self.http, timeout=20)
        return self.servers[-1]


@contextlib.asynccontextmanager
async def cli_room(tmp_path: Path) -> AsyncIterator[CliRoom]:
    data = tmp_path / "data"
    rtmp, http = free_port(), free_port()
    store = open_store(data)
    await store.open()
    try:
        settings = RoomSettings()
        urls = Urls(settings, f"rtmp://127.0.0.1:{rtmp}", f"http://127.0.0.1:{http}")
        app = await Apps(store, settings).create_app("crash")
        now = time.time()
        for kind in ("cover", "share", "feeds"):
            media = Media(f"{kind}-{app.appid}", app.appid, "image", "image/png", 10, 1, 1, "x.png", now, now + 3600)
            await store.put_media(media)
        room = await Rooms(store, settings).create_room(app, official_room_body(app.appid, closeReplay=0))
        args = ("--host", "127.0.0.1", "--rtmp-port", str(rtmp), "--http-port", str(http), "--data-dir", str(data))
        served = CliRoom(store, app, room, urls, data, http, args)
        try:
            yield served
        finally:
            for process in served.servers:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
    finally:
        await store.close()


@pytest.mark.parametrize("video", ["h264", "hevc"])
async def test_server_killed_mid_recording_leaves_a_playable_replay(tmp_path, video, request):
    extension = {"h264": "ts", "hevc": "m4s"}[video]
    # HEVC: twelve seconds of it, published by our client (Debian's ffmpeg cannot publish HEVC).
    packets = hevc_packets(request.getfixturevalue("x265"), tmp_path / "hevc", seconds=12) if video == "hevc" else []
    pub = None
    async with cli_room(tmp_path) as served:
        store, app, room, urls = served.store, served.app, served.room, served.urls
        data, http = served.data, served.http
        try:
            first = await served.serve()
            if video == "h264":
                pub = await publish(urls.push_url(app, room), seconds=60)
            else:
                pub = await PacketPublisher.start(urls.push_url(app, room))
                pub.send_in_background(packets)
            recording = await wait_replay(store, room.roomid, "recording", timeout=10)
            started = time.monotonic()
            await asyncio.sleep(8)
            first.kill()  # SIGKILL mid-recording
            await first.wait()
            recorded = time.monotonic() - started
            await pub.stop()

            folder = data / "replays" / recording.path
            segments = sorted(folder.glob(f"seg*.{extension}"))
            assert segments, "segments are on disk as the live goes"
            assert "#EXT-X-ENDLIST" not in (folder / PLAYLIST).read_text()
            # A segment cut short (as a power cut could leave it) and a stray temporary file are dropped.
            torn = folder / f"seg{len(segments) + 1:05d}.{extension}"
            torn.write_bytes(segments[0].read_bytes()[: 188 * 20 + 100])
            (folder / f"seg99999.{extension}.tmp").write_bytes(b"\x47" * 1000)
            if video == "hevc":
                # So is an init segment cut short, with the segment after it that needs it.
                torn_init = folder / f"init{len(segments) + 2:05d}.mp4"
                torn_init.write_bytes((folder / "init00000.mp4").read_bytes()[:-1])
                needs_torn_init = folder / f"seg{len(segments) + 2:05d}.m4s"
                needs_torn_init.write_bytes(segments[-1].read_bytes())

            await served.serve()
            replay = await store.get_replay(recording.replay_id)
            assert replay is not None and replay.status == "ready", f"finalized before serving: {replay}"
            assert not torn.exists() and not list(folder.glob("*.tmp"))
            assert torn.name not in (folder / PLAYLIST).read_text()
            if video == "hevc":
                assert not torn_init.exists() and not needs_torn_init.exists()
                assert sorted(f.name for f in folder.glob("init*")) == ["init00000.mp4"]
            # At most the segment being written is lost.
            assert recorded - 4 - 1.5 <= replay.duration <= recorded + 1, (replay.duration, recorded)
            base = f"http://127.0.0.1:{http}/replays/{replay.path}"
            await check_playable(base, replay.duration, video)
            await decode_cleanly(f"{base}/replay.mp4")
        finally:
            if pub is not None:
                await pub.stop()


async def test_retention_deletes_expired_replays_only(make_server):
    server = await make_server(retention_interval_seconds=0.2)
    app, room = await make_room(server)
    root: Path = server.settings.data_dir / "replays"
    now = time.time()
    replays = {
        "old": Replay("old", room.roomid, app.appid, 1, "ready", now - 100, now - 10, f"{app.appid}/{room.roomid}/old"),
        "failed": Replay("failed", room.roomid, app.appid, 2, "failed", now - 50, now - 1, f"{app.appid}/9/failed"),
        "kept": Replay("kept", room.roomid, app.appid, 3, "ready", now, now + 3600, f"{app.appid}/{room.roomid}/kept"),
    }
    for replay in replays.values():
        (root / replay.path).mkdir(parents=True)
        (root / replay.path / PLAYLIST).write_text("#EXTM3U\n")
        await server.store.put_replay(replay)

    deadline = time.monotonic() + 5
    while [r.replay_id for r in await server.store.list_replays(room.roomid)] != ["kept"]:
        assert time.monotonic() < deadline, await server.store.list_replays(room.roomid)
        await asyncio.sleep(0.05)
    assert not (root / replays["old"].path).exists()
    assert not (root / app.appid / "9").exists(), "emptied parent folders go too"
    assert (root / replays["kept"].path / PLAYLIST).exists()


async def http_status(port: int, target: str) -> int:
    """Send ``target`` exactly as written (no client-side normalization or quoting)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    status_line = await reader.readline()
    writer.close()
    return int(status_line.split()[1])


async def test_nothing_outside_the_replays_folder_is_served(server):
    data: Path = server.settings.data_dir
    folder = data / "replays" / "wxapp" / "1" / "abc"
    folder.mkdir(parents=True)
    (folder / PLAYLIST).write_text("#EXTM3U\n")
    (folder / "notes.txt").write_text("not a replay file")
    secret = data / "secret.m3u8"  # a served type: only the folder check keeps it out
    secret.write_text("secret")
    (data / "replays" / "escape").symlink_to(data)
    (folder / "link.m3u8").symlink_to(secret)

    port = server.http_port
    assert await http_status(port, "/replays/wxapp/1/abc/index.m3u8") == 200
    attempts = [
        "/replays/../secret.m3u8",
        "/replays/%2e%2e/secret.m3u8",
        "/replays/%2E%2E%2Fsecret.m3u8",
        "/replays/..%2fsecret.m3u8",
        "/replays/wxapp/../../secret.m3u8",
        "/replays/wxapp/1/abc/..%2f..%2f..%2f..%2fsecret.m3u8",
        "/replays/wxapp/1/abc/%2e%2e/%2e%2e/%2e%2e/%2e%2e/secret.m3u8",
        "/replays/..%5csecret.m3u8",
        "/replays/..\\secret.m3u8",
        f"/replays/{secret}",
        f"/replays/%2f{str(secret).lstrip('/').replace('/', '%2f')}",
        "/replays/escape/secret.m3u8",
        "/replays/wxapp/1/abc/link.m3u8",
        "/replays/wxapp/1/abc/notes.txt",
        "/replays/wxapp/1/abc/index.m3u8%00.jpg",
        "/replays/wxapp/1/abc",
        "/replays/",
    ]
    for target in attempts:
        assert await http_status(port, target) == 404, target


def test_a_growing_segment_reader_waits_for_segments_and_ends_or_aborts(tmp_path: Path) -> None:
    first, second = tmp_path / "a.ts", tmp_path / "b.ts"
    first.write_bytes(b"1" * 300)
    second.write_bytes(b"2" * 100)
    reader = SegmentReader([first], growing=True)
    assert reader.read(200) == b"1" * 200
    assert reader.read() == b"1" * 100
    got: list[bytes] = []
    waiting = threading.Thread(target=lambda: got.append(reader.read(1000)))
    waiting.start()
    waiting.join(0.2)
    assert waiting.is_alive() and not got  # at the end of what exists: it waits
    reader.add(second)
    waiting.join(5)
    assert got == [b"2" * 100]
    reader.finish()
    assert reader.read(10) == b""  # the end
    assert not reader.seekable()

    aborted = SegmentReader([], growing=True)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            aborted.read(10)
        except Exception as exc:
            errors.append(exc)

    waiting = threading.Thread(target=read)
    waiting.start()
    aborted.abort()
    waiting.join(5)
    assert len(errors) == 1 and aborted.aborted


def test_a_segment_reader_reads_a_run_per_init_segment(tmp_path: Path) -> None:
    files = {name: tmp_path / name for name in ("init0.mp4", "a.m4s", "b.m4s", "init1.mp4", "c.m4s")}
    for name, path in files.items():
        path.write_bytes(name.encode())
    reader = SegmentReader(growing=True)
    reader.add(files["a.m4s"], files["init0.mp4"])
    reader.add(files["b.m4s"], files["init0.mp4"])
    assert reader.first_file() == files["init0.mp4"]
    assert reader.read() == b"init0.mp4a.m4sb.m4s", "the init segment once, then its segments"
    got: list[bool] = []
    waiting = threading.Thread(target=lambda: got.append(reader.next_run()))
    waiting.start()
    waiting.join(0.2)
    assert waiting.is_alive() and not got  # no next run yet: it waits
    reader.add(files["c.m4s"], files["init1.mp4"])
    waiting.join(5)
    assert got == [True] and reader.first_file() == files["init1.mp4"]
    assert reader.read(4) == b"init" and reader.read() == b"1.mp4c.m4s"
    reader.finish()
    assert reader.read() == b"" and not reader.next_run()


async def test_a_live_mp4_is_the_remux_of_its_segments_and_an_abort_leaves_nothing(tmp_path: Path) -> None:
    source = ["-f", "lavfi", "-i", "testsrc=size=160x120:rate=25", "-f", "lavfi", "-i", "sine=sample_rate=44100"]
    encode = ["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-c:a", "aac", "-t", "4"]
    segments = ["-f", "segment", "-segment_time", "1", "-segment_format", "mpegts", str(tmp_path / "seg%05d.ts")]
    code, _, err = await run(FFMPEG, "-v", "error", *source, *encode, *segments)
    assert code == 0, err.decode()
    paths = sorted(tmp_path.glob("seg*.ts"))
    assert len(paths) >= 3

    live = LiveMp4(tmp_path)
    for path in paths:
        live.add(path)
    live.finish()
    assert await asyncio.to_thread(live.result) == [p.name for p in paths]
    made = (tmp_path / MP4).read_bytes()
    remux(SegmentReader(paths), tmp_path / MP4)
    assert (tmp_path / MP4).read_bytes() == made

    (tmp_path / MP4).unlink()
    live = LiveMp4(tmp_path)  # the server stops during the live: no MP4, no temporary file
    live.add(paths[0])
    live.abort()
    assert await asyncio.to_thread(live.result) is None
    assert not list(tmp_path.glob("replay.mp4*"))


async def test_a_new_hevc_configuration_gets_a_new_init_segment_and_the_mp4_follows_it(tmp_path, x265, hevc_media):
    """The encoder restarts mid-live with another picture size (a new sequence header on the same
    stream): the recording goes on after a discontinuity and a new init segment, and the MP4 goes on
    in the same track, the new parameter sets in band, so that every frame decodes at its size."""
    first, _ = hevc_media
    smaller = hevc_packets(x265, tmp_path / "small", size="160x120")
    folder = tmp_path / "replay"
    folder.mkdir()
    with ThreadPoolExecutor(1) as writer:
        recording = Recording("r", folder, 2.0, writer)
        for packet in [*first, *(p if p.config else p.retimed(p.timestamp + 6100) for p in smaller)]:
            recording.feed(packet)
        await recording.close()
        assert recording.mp4 is not None
        recording.mp4.finish()
        result = await asyncio.to_thread(finalize, folder, recording.mp4)
    assert result.mp4_during_live and result.segments == 6
    assert abs(result.duration - 12) <= 0.15, result
    playlist = (folder / PLAYLIST).read_text()
    assert re.findall(r'#EXT-X-MAP:URI="([^"]+)"', playlist) == ["init00000.mp4", "init00003.mp4"]
    assert playlist.count("#EXT-X-DISCONTINUITY") == 1
    assert '#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI="init00003.mp4"\n#EXT-X-PROGRAM-DATE-TIME:' in playlist
    assert_mp4_is_the_remux_of_the_files(folder)

    mp4 = str(folder / MP4)
    await decode_cleanly(mp4)
    (video,) = [s for s in await probe_frames(mp4) if s["codec_type"] == "video"]
    assert (video["codec_name"], video["width"], video["height"]) == ("hevc", 320, 240), "the first sample entry"
    code, out, err = await run(FFPROBE, "-v", "error", "-show_entries", "frame=width,height", "-of", "csv=p=0", mp4)
    assert code == 0, err.decode()
    sizes = Counter(line.rstrip(",") for line in out.decode().split())  # keyframes end with a side data column
    assert sizes == {"320,240": 150, "160,120": 150}, sizes
