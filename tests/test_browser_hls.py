"""Browser playback of live HLS: hls.js (npm) in Debian's headless Chromium (driven by Playwright), plain HLS
and LL-HLS, and a master playlist's renditions."""

from __future__ import annotations

import asyncio
import statistics
from urllib.parse import quote

import aiohttp
import pytest

from tests.browser import wait_for
from tests.conftest import needs_ffmpeg, publish, rtmp_url, wait_live
from tests.test_hls import fetch, wait_segments

pytestmark = needs_ffmpeg

SNAPSHOT = "player.snapshot()"
# How far playback is behind real time, from the EXT-X-PROGRAM-DATE-TIME of the playing position.
BEHIND_REAL_TIME = "(Date.now() - hls.playingDate.getTime()) / 1000"


@pytest.mark.parametrize("low_latency", [True, False], ids=["ll-hls", "hls"])
async def test_hls_js_plays_live_hls_in_chromium(page, web_pages, make_server, low_latency):
    server = await make_server()
    pub = await publish(rtmp_url(server, "tv"), seconds=40, size="320x240", rate=25, gop=25)
    try:
        await wait_live(server, "tv")
        src = f"http://127.0.0.1:{server.http_port}/live/tv/index.m3u8"
        await page.goto(f"{web_pages}/hls.html?src={quote(src, safe='')}&lowLatency={int(low_latency)}")
        start = await wait_for(page, f"(s => s.currentTime > 0 && s)({SNAPSHOT})", timeout=20)
        until = start["currentTime"] + 3
        end = await wait_for(page, f"(s => s.currentTime >= {until} && s)({SNAPSHOT})", timeout=15)
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
    finally:
        await pub.stop()


def assert_no_stall_longer_than_a_part(snapshot: dict, since: float) -> None:
    """From ``since`` (the page's clock) on, playback never waited for data longer than a part (0.5 s),
    and no picture stayed on screen that long (what a switch to a picture that does not decode shows)."""
    stalls = [s for s in snapshot["stalls"] if s["start"] > since]
    assert all(s["ms"] <= 500 for s in stalls) and snapshot["ongoingStall"] is None, f"stalled: {stalls}, {snapshot}"
    frozen = [g for g in snapshot["frameGaps"] if g["t"] > since and g["ms"] > 500]
    assert not frozen, f"the picture stood still: {frozen}, {snapshot}"


@pytest.mark.serial  # a rendition switch follows measured bandwidth: a busy second core skews it
async def test_hls_js_switches_down_a_master_playlist_seamlessly_when_bandwidth_is_capped(page, web_pages, make_server):
    """hls.js plays the master playlist of a 480p30 stream of 2 Mbit/s with 360p and 240p renditions,
    from the top. The test caps the page's bandwidth at 1.2 Mbit/s: hls.js switches to a rendition, and
    the picture changes size without playback stalling longer than a part (0.5 s).

    Plain HLS, as the `video` component and most players play it: the player joins a stream already
    watched (its playlists list a few segments) three segments from the live edge. With LL-HLS, hls.js
    keeps 1.5 s of buffer, which the cap empties before its bandwidth estimate (seconds of history)
    follows: it stalls, then switches. Two renditions: hls.js's emergency switch (a segment loading
    too slowly is dropped for a lower level) never goes to the lowest level directly."""
    server = await make_server(renditions=["360p", {"name": "240p", "height": 240, "video_bitrate": 300}])
    pub = await publish(rtmp_url(server, "abr"), seconds=60, size="854x480", rate=30, gop=30, bitrate="2M")
    try:
        await wait_live(server, "abr")
        src = f"http://127.0.0.1:{server.http_port}/live/abr/master.m3u8"
        async with aiohttp.ClientSession() as session:
            assert (await fetch(session, src))[0] == 200
            await wait_segments(session, src.replace("master.m3u8", "index.m3u8"), 4)
        await page.goto(f"{web_pages}/abr.html?src={quote(src, safe='')}&lowLatency=0")
        playing = await wait_for(
            page,
            "(s => s.switched.length && s.level === s.levels.length - 1"
            " && s.currentTime > s.switched[0].currentTime + 2 && s)(abr.snapshot())",
            timeout=30,
        )
        assert [level["height"] for level in playing["levels"]] == [240, 360, 480], "sorted by bitrate"
        cdp = await page.context.new_cdp_session(page)  # Playwright has no bandwidth cap of its own
        await cdp.send("Network.enable")
        await cdp.send(
            "Network.emulateNetworkConditions",
            {"offline": False, "latency": 0, "downloadThroughput": 1_200_000 / 8, "uploadThroughput": -1},
        )
        capped = await page.evaluate("performance.now()")
        # A rendition reaches the screen, and playback goes on 4 s past it.
        end = await wait_for(
            page,
            f"""(s => {{
                const shown = s.resized.find(r => r.t > {capped} && r.height < 480);
                return shown && s.currentTime > shown.currentTime + 4 && s;
            }})(abr.snapshot())""",
            timeout=40,
        )
        switched = [s for s in end["switched"] if s["t"] > capped]
        assert switched and switched[0]["height"] < 480, end["switched"]
        assert_no_stall_longer_than_a_part(end, capped)
        assert not end["errors"], end["errors"]
    finally:
        await pub.stop()


@pytest.mark.serial  # a rendition switch follows measured bandwidth: a busy second core skews it
async def test_hls_js_switches_between_ll_hls_renditions_at_a_part_without_a_stall(page, web_pages, make_server):
    """LL-HLS: hls.js plays the master playlist of a 480p30 stream with 360p and 240p renditions near
    the live edge (1.5 s of buffer); the test switches it down to 240p, then up to 360p (``nextLevel``).
    hls.js asks for each new level's playlist at the part that the rendition reports of the playlist it
    plays name (a blocking reload), and the picture changes size without a stall longer than a part.

    (Not back to a level hls.js played before: hls.js 1.7 then waits, with or without aligned
    renditions, until the parts of the segment it came back in leave the playlist, about 2 s.)"""
    server = await make_server(renditions=["360p", {"name": "240p", "height": 240, "video_bitrate": 300}])
    pub = await publish(rtmp_url(server, "llabr"), seconds=60, size="854x480", rate=30, gop=30, bitrate="2M")
    try:
        await wait_live(server, "llabr")
        src = f"http://127.0.0.1:{server.http_port}/live/llabr/master.m3u8"
        await page.goto(f"{web_pages}/abr.html?src={quote(src, safe='')}&lowLatency=1")
        await wait_for(
            page,
            "(s => s.switched.length && s.currentTime > s.switched[0].currentTime + 2 && s)(abr.snapshot())",
            timeout=30,
        )
        started = await page.evaluate("performance.now()")
        for level, height in ((0, 240), (1, 360)):
            since = await page.evaluate(f"(hls.nextLevel = {level}, performance.now())")
            await wait_for(
                page,
                f"""(s => {{
                    const shown = s.resized.find(r => r.t > {since} && r.height === {height});
                    return shown && s.currentTime > shown.currentTime + 2;
                }})(abr.snapshot())""",
                timeout=20,
            )
            asked = await page.evaluate(f"abr.playlists.find(p => p.url && p.t > {since} && p.level === {level}).url")
            assert "_HLS_msn=" in asked and "_HLS_part=" in asked, f"not where the rendition report said: {asked}"
        end = await page.evaluate("abr.snapshot()")
        assert_no_stall_longer_than_a_part(end, started)
        assert not end["errors"], end["errors"]
    finally:
        await pub.stop()
