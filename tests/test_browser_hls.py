"""Browser playback of live HLS: hls.js (npm) in Debian's headless Chromium, plain HLS and LL-HLS."""

from __future__ import annotations

import asyncio
import statistics
from urllib.parse import quote

import pytest

from tests.conftest import needs_ffmpeg, publish, rtmp_url, wait_live

pytestmark = needs_ffmpeg

SNAPSHOT = "player.snapshot()"
# How far playback is behind real time, from the EXT-X-PROGRAM-DATE-TIME of the playing position.
BEHIND_REAL_TIME = "(Date.now() - hls.playingDate.getTime()) / 1000"


@pytest.mark.parametrize("low_latency", [True, False], ids=["ll-hls", "hls"])
async def test_hls_js_plays_live_hls_in_chromium(browser, web_pages, make_server, low_latency):
    server = await make_server()
    pub = await publish(rtmp_url(server, "tv"), seconds=40, size="320x240", rate=25, gop=25)
    try:
        await wait_live(server, "tv")
        src = f"http://127.0.0.1:{server.http_port}/live/tv/index.m3u8"
        page = await browser.new_page(f"{web_pages}/hls.html?src={quote(src, safe='')}&lowLatency={int(low_latency)}")
        start = await page.wait_for(f"(s => s.currentTime > 0 && s)({SNAPSHOT})", timeout=20)
        until = start["currentTime"] + 3
        end = await page.wait_for(f"(s => s.currentTime >= {until} && s)({SNAPSHOT})", timeout=15)
        assert (end["videoWidth"], end["videoHeight"]) == (320, 240)
        assert end["totalVideoFrames"] - start["totalVideoFrames"] >= 50, (start, end)
        assert not end["errors"], end["errors"]
        if low_latency:
            # Playback sits within 3 s of real time (the median of samples over 4.5 s, during which the
            # player catches up after a stall of a loaded machine; falling back to whole segments
            # would put it 6 s or more behind for good).
            samples = []
            for _ in range(9):
                samples.append(await page.evaluate(BEHIND_REAL_TIME))
                await asyncio.sleep(0.5)
            behind = statistics.median(samples)
            assert behind < 3.0, f"LL-HLS playback is {behind:.2f} s behind real time: {samples}"
            assert await page.evaluate("player.snapshot().parts") > 0, "hls.js loaded partial segments"
        assert not page.errors, page.errors
    finally:
        await pub.stop()
