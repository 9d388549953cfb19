"""The soak's pieces (issue 16): the runtime endpoint it samples, and its growth verdict and plot.

The soak itself (bench/soak.py) runs for minutes to hours; these check in seconds what it relies on.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import subprocess
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from api.console.sessions import admin_token
from bench import soak
from recorder.mp4 import MP4, SegmentReader, remux
from tests.conftest import FFMPEG, needs_ffmpeg, publish, rtmp_url, run, wait_live
from tests.test_webrtc import live_objects, recvonly_offer, webrtc_settings


async def test_runtime_endpoint_needs_the_admin_token(make_server) -> None:
    server = await make_server()
    url = f"http://127.0.0.1:{server.http_port}/api/v1/debug/runtime"
    async with aiohttp.ClientSession() as session:
        # No admin token made yet: an empty Bearer must not match the empty token.
        async with session.get(url, headers={"Authorization": "Bearer "}) as response:
            assert response.status == 401
            assert "minilive admin token" in (await response.json())["error"]["message"]
        token = admin_token(server.settings.data_dir)
        async with session.get(url, headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200
            body = await response.json()
        async with session.get(url + "?types=5", headers={"Authorization": f"Bearer {token}"}) as response:
            types = (await response.json())["types"]
        async with session.get(url + "?types=many", headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 400 and "1 to 1000" in (await response.json())["error"]["message"]
    assert body["tasks"] >= 1 and body["threads"] >= 1 and body["pid"] > 0 and "types" not in body
    assert len(types) == 5 and "dict" in types and all(n > 0 for n in types.values())


def _series(rss: list[float]) -> list[dict]:
    return [{"t": 10.0 * i, "rss_mb": v, "fds": 200, "tasks": 300, "threads": 40} for i, v in enumerate(rss)]


def _report(series: list[dict]) -> dict:
    report = {
        "started": "2026-12-03T20:00:00",
        "minutes": series[-1]["t"] / 60,
        "tracebacks": 0,
        "server_alive": True,
        "counts": {"status_mismatches": [], "replays_unplayable": [], "replays_not_gone": [], "replays_checked": 3},
        "series": series,
    }
    report["growth"] = {key: soak.growth(series, key) for key in ("rss_mb", "fds", "tasks", "threads")}
    report["verdict"] = soak.verdict(report)
    return report


def test_flat_run_passes_and_a_leak_fails(tmp_path: Path) -> None:
    # 20 minutes, sampled every 10 s: flat with noise after a warm-up.
    flat = _report(_series([100 + min(i, 30) * 5 + (i % 3) for i in range(120)]))
    assert flat["verdict"] == {"pass": True, "failures": []}
    assert abs(flat["growth"]["rss_mb"]["slope_per_hour"]) < 10
    # The same warm-up, then 5 MB a minute.
    leak = _report(_series([100 + min(i, 30) * 5 + max(0, i - 30) * 5 / 6 for i in range(120)]))
    assert not leak["verdict"]["pass"] and "rss_mb grew" in leak["verdict"]["failures"][0]
    assert 280 < leak["growth"]["rss_mb"]["slope_per_hour"] < 320
    path = tmp_path / "soak.png"
    soak.plot(leak, path)
    with Image.open(path) as image:
        assert image.size[0] == 1000 and image.getcolors(100_000) and len(image.getcolors(100_000)) > 3


@pytest.mark.parametrize("websocket", [False, True])
async def test_flv_viewer_gone_before_the_stream_starts_is_no_traceback(make_server, caplog, websocket) -> None:
    """Found by the soak: a viewer that waits for a stream (play_wait_seconds) and leaves before it
    starts made aiohttp log "Error handling request" with a traceback when its headers went out."""
    caplog.set_level(logging.WARNING)
    server = await make_server(play_wait_seconds=15)
    upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    head = f"GET /live/late.flv HTTP/1.1\r\nHost: x\r\n{upgrade if websocket else ''}Sec-WebSocket-Version: 13\r\n\r\n"
    _, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
    writer.write(head.encode())
    await writer.drain()
    await asyncio.sleep(0.3)  # the server is waiting for the stream
    writer.close()
    publisher = await publish(rtmp_url(server, "late"))
    try:
        await wait_live(server, "late")
        await asyncio.sleep(0.5)  # the waiting handler wakes and answers the viewer that left
    finally:
        await publisher.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]


@needs_ffmpeg
async def test_closed_whep_feeds_are_freed_without_a_full_collection(make_server) -> None:
    """Found by the soak: the server's threads grew by about 4 for each WHEP feed ever opened (its
    AAC-to-Opus transcoder's FFmpeg workers), because a closed ``WhepFeed`` and its hub subscription
    held each other, waiting for a full collection, which the server's GC thresholds make rare."""
    server = await make_server(webrtc=webrtc_settings(connect_timeout=0.5))
    publisher = await publish(rtmp_url(server, "feeds"), seconds=30)
    try:
        await wait_live(server, "feeds")
        offer = await recvonly_offer()
        url = f"http://127.0.0.1:{server.http_port}/whep/feeds"
        gc.collect()
        gc.disable()
        try:
            start = live_objects("WhepFeed"), live_objects("AacToOpus")
            async with aiohttp.ClientSession() as http:
                for _ in range(3):  # each an offer never connected: the ICE deadline closes it, and its feed
                    async with http.post(url, data=offer, headers={"Content-Type": "application/sdp"}) as response:
                        assert response.status == 201
                    for _ in range(50):
                        await asyncio.sleep(0.1)
                        if not server.webrtc.registry.sessions and not server.webrtc.whep.feeds:
                            break
                    assert not server.webrtc.whep.feeds, "the feed closed with its last session"
            await asyncio.sleep(0.3)  # the transcoding thread lets go of the feed
            assert live_objects("WhepFeed") <= start[0], "closed feeds freed by reference counting"
            assert live_objects("AacToOpus") <= start[1]
        finally:
            gc.enable()
    finally:
        await publisher.stop()


def _pes_timestamp(data: bytearray, at: int) -> int:
    b = data[at : at + 5]
    return ((b[0] >> 1) & 7) << 30 | b[1] << 22 | (b[2] >> 1) << 15 | b[3] << 7 | b[4] >> 1


def _set_pes_timestamp(data: bytearray, at: int, value: int) -> None:
    prefix = data[at] & 0xF0
    high, low = prefix | ((value >> 29) & 0x0E) | 1, ((value << 1) & 0xFE) | 1
    data[at : at + 5] = bytes([high, (value >> 22) & 0xFF, ((value >> 14) & 0xFE) | 1, (value >> 7) & 0xFF, low])


def _stall_timestamps(path: Path, stream_id: int, first: int, count: int) -> None:
    """Put ``count`` PES of ``stream_id`` (from the ``first``-th) on the timestamp of the one before them,
    in place: what the soak found in a recording's first segment."""
    data = bytearray(path.read_bytes())
    seen, held = 0, None
    for start in range(0, len(data) - 187, 188):
        if not data[start + 1] & 0x40:  # not the start of a PES
            continue
        payload = start + 4 + (data[start + 4] + 1 if data[start + 3] & 0x20 else 0)
        if data[payload : payload + 3] != b"\0\0\1" or data[payload + 3] != stream_id:
            continue
        flags, pts = data[payload + 7] >> 6, payload + 9
        if seen == first - 1:
            held = _pes_timestamp(data, pts)
        elif first <= seen < first + count:
            _set_pes_timestamp(data, pts, held)
            if flags == 3:  # a DTS too
                _set_pes_timestamp(data, pts + 5, held)
        seen += 1
    assert seen >= first + count, f"only {seen} PES of stream {stream_id:#x}"
    path.write_bytes(data)


@needs_ffmpeg
async def test_frames_whose_timestamps_stall_still_make_the_replay_mp4(tmp_path: Path, caplog) -> None:
    """Found by the soak: a recording's first segment held a hundred video frames on one DTS and audio
    going back, and the MP4 muxer's EINVAL failed the whole replay, live MP4 and remux alike."""
    source = ["-f", "lavfi", "-i", "testsrc=size=160x120:rate=25", "-f", "lavfi", "-i", "sine=sample_rate=44100"]
    encode = ["-c:v", "libx264", "-preset", "ultrafast", "-bf", "0", "-g", "25", "-c:a", "aac", "-t", "3"]
    segments = ["-f", "segment", "-segment_time", "1", "-segment_format", "mpegts", str(tmp_path / "seg%05d.ts")]
    code, _, err = await run(FFMPEG, "-v", "error", *source, *encode, *segments)
    assert code == 0, err.decode()
    paths = sorted(tmp_path.glob("seg*.ts"))
    _stall_timestamps(paths[0], 0xE0, 2, 10)  # video frames 2..11 on frame 1's time
    _stall_timestamps(paths[0], 0xC0, 2, 1)  # audio going back (a PES holds several AAC frames)
    await asyncio.to_thread(remux, SegmentReader(paths), tmp_path / MP4)
    frames = await asyncio.to_thread(probe_frames, tmp_path / MP4)
    assert frames["video"] == 75, "every frame is kept"
    assert "frames whose DTS did not go forward were moved" in caplog.text, "and the fault upstream is logged"
    assert frames["audio"] >= 125


def probe_frames(path: Path) -> dict[str, int]:
    """Frames per stream type that ffprobe reads from ``path``."""
    entries = ["-show_entries", "stream=codec_type,nb_read_frames"]
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", *entries, "-of", "json", str(path)],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    return {s["codec_type"]: int(s["nb_read_frames"]) for s in json.loads(out)["streams"]}


async def test_the_driver_gets_a_new_access_token_when_its_own_expires(make_server) -> None:
    """The 120-minute soak died in its end-of-run check: its access token had lived the official
    7200 s and the server answered 42001, as it should. The driver now renews it as a back end does."""
    server = await make_server(token_ttl_seconds=1)
    app = await server.apps.create_app("soak")
    credentials = {"appid": app.appid, "secret": app.secret}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as session:
        api = soak.Api(session, credentials, "", soak.Counts())
        await api.renew()
        assert (await api.call("GET", "/api/v1/rooms"))["rooms"] == []
        await asyncio.sleep(2.1)
        assert (await api.call("GET", "/api/v1/rooms"))["rooms"] == []
        assert api.renewals == 2 and api.counts.api_errors == 0
        api.app = {"appid": app.appid, "secret": "wrong"}
        await asyncio.sleep(2.1)
        with pytest.raises(RuntimeError, match=r"cgi-bin/token.*40125"):
            await api.call("GET", "/api/v1/rooms")
        assert api.counts.api_errors == 1
