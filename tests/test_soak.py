"""The soak's pieces (issue 16): the runtime endpoint it samples, and its growth verdict and plot.

The soak itself (bench/soak.py) runs for minutes to hours; these check in seconds what it relies on.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from api.console.sessions import admin_token
from bench import soak
from tests.conftest import needs_ffmpeg, publish, rtmp_url, wait_live
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
    assert body["tasks"] >= 1 and body["threads"] >= 1 and body["pid"] > 0


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
