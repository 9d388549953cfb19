"""Browser playback: mpegts.js (npm) in Debian's headless Chromium (driven by Playwright) plays HTTP-FLV and
WebSocket-FLV."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.browser import wait_for
from tests.conftest import flv_url, needs_ffmpeg, publish, rtmp_url, wait_live

pytestmark = needs_ffmpeg

SNAPSHOT = "player.snapshot()"


@pytest.mark.parametrize("scheme", ["http", "ws"])
async def test_mpegts_js_plays_flv_in_chromium(page, web_pages, make_server, scheme):
    server = await make_server()
    pub = await publish(rtmp_url(server, "cam"), seconds=25, size="320x240", rate=25)
    try:
        await wait_live(server, "cam")
        src = flv_url(server, "cam").replace("http://", f"{scheme}://")
        await page.goto(f"{web_pages}/flv.html?src={quote(src, safe='')}")

        # mpegts.js got the stream and demuxed it: the codecs and size ffmpeg published.
        info = await wait_for(page, f"{SNAPSHOT}.mediaInfo", timeout=10)
        assert info["videoCodec"].startswith("avc1."), info
        assert info["audioCodec"] == "mp4a.40.2", info
        assert (info["width"], info["height"]) == (320, 240), info
        mime = f'video/mp4; codecs="{info["videoCodec"]},{info["audioCodec"]}"'  # what mpegts.js feeds MSE
        assert await page.evaluate(f"MediaSource.isTypeSupported({mime!r})"), f"this Chromium's MSE lacks {mime}"

        # The video element plays: its clock runs for 2 s and frames are decoded and presented.
        start = await wait_for(page, f"(s => s.currentTime > 0 && s)({SNAPSHOT})", timeout=10)
        until = start["currentTime"] + 2
        end = await wait_for(page, f"(s => s.currentTime >= {until} && s)({SNAPSHOT})", timeout=10)
        assert (end["videoWidth"], end["videoHeight"]) == (320, 240)
        assert end["totalVideoFrames"] - start["totalVideoFrames"] >= 25, (start, end)
        assert end["callbackFrames"] > start["callbackFrames"], (start, end)
        assert end["statistics"]["decodedFrames"] > 0, end["statistics"]
        assert not end["errors"], end["errors"]
    finally:
        await pub.stop()
