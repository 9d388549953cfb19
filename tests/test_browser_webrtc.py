"""WebRTC in a real browser: headless Chromium (driven by Playwright) publishes its fake camera and microphone
with WHIP (H.264 + Opus) and a second page plays the stream with WHEP; the same stream plays over HTTP-FLV."""

from __future__ import annotations

from urllib.parse import quote

from signaling.ice import IceSettings
from signaling.sessions import WebRtcSettings
from tests.browser import wait_for
from tests.conftest import flv_url, hub_stream, needs_ffmpeg, probe_streams, wait_live

pytestmark = needs_ffmpeg

STATS = "window.rtc.stats()"


async def open_page(new_page, web_pages: str, page: str, url: str):  # type: ignore[no-untyped-def]
    tab = await new_page(f"{web_pages}/{page}?url={quote(url, safe='')}")
    await wait_for(tab, "window.rtc.state === 'connected' || window.rtc.errors.length", timeout=15)
    assert await tab.evaluate("window.rtc.state") == "connected", await tab.evaluate("window.rtc.errors")
    return tab


async def rising(tab, key: str, counter: str, by: float, seconds: float = 3) -> dict:  # type: ignore[no-untyped-def]
    """The stats entry ``key`` once its ``counter`` grew by ``by`` within ``seconds``."""
    start = (await tab.evaluate(STATS)).get(key, {}).get(counter, 0)
    until = f"(s => s[{key!r}] && s[{key!r}].{counter} >= {start + by} && s[{key!r}])(await {STATS})"
    return await wait_for(tab, f"(async () => {until})()", timeout=seconds)


async def test_chromium_publishes_with_whip_and_plays_with_whep(new_page, web_pages, make_server) -> None:  # type: ignore[no-untyped-def]
    server = await make_server(webrtc=WebRtcSettings(ice=IceSettings(addresses=["127.0.0.1"])))
    base = f"http://127.0.0.1:{server.http_port}"

    publisher = await open_page(new_page, web_pages, "whip.html", f"{base}/whip/cam")
    sent = await rising(publisher, "outbound-rtp video", "framesEncoded", 15)
    assert sent["mimeType"] == "video/H264", sent
    await wait_live(server, "cam", timeout=10)
    assert hub_stream(server, "live", "cam").publisher.protocol == "whip"

    codecs = {s["codec_type"]: s["codec_name"] for s in await probe_streams(flv_url(server, "cam"))}
    assert codecs == {"video": "h264", "audio": "aac"}

    viewer = await open_page(new_page, web_pages, "whep.html", f"{base}/whep/cam")
    video = await rising(viewer, "inbound-rtp video", "framesDecoded", 30, seconds=10)
    assert video["mimeType"] == "video/H264", video
    audio = await rising(viewer, "inbound-rtp audio", "totalSamplesReceived", 48000, seconds=5)
    assert audio["mimeType"] == "audio/opus" and audio["packetsReceived"] > 0, audio
    shown = await viewer.evaluate("window.player.snapshot()")
    await wait_for(viewer, f"window.player.snapshot().callbackFrames >= {shown['callbackFrames'] + 15}", timeout=5)
    assert shown["videoWidth"] > 0 and shown["videoHeight"] > 0, shown

    for tab in (publisher, viewer):
        assert not await tab.evaluate("window.rtc.errors")
    # Both pages end their sessions with a cross-origin DELETE of the resource URL.
    for tab in (viewer, publisher):
        assert await tab.evaluate("window.rtc.stop()") == 200
    assert not server.webrtc.registry.sessions
    assert hub_stream(server, "live", "cam").publisher is None
