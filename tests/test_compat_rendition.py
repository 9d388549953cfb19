"""Any codec in, H.264 + AAC out: a stream in a codec live-player cannot play gets the H.264 rendition
``STREAM_h264``, made by a real worker process, and bad input never reaches the source's viewers.

The source here is HEVC from libx265 (``hevc_media``) published by the project's RTMP client as
Enhanced RTMP ``hvc1``, as OBS and FFmpeg 7 send it; ffprobe and our FLV client read the renditions.
(A WHIP publisher's VP8 is in tests/test_webrtc.py.)
"""

from __future__ import annotations

import asyncio

import aiohttp

from ingest.rtmp import amf
from ingest.rtmp.client import connect
from relay.formats.packet import DATA, VIDEO, Packet
from tests.conftest import flv_url, hub_stream, probe_frames, wait_live
from tests.hevc import PacketPublisher, enhanced
from tests.test_playback import FlvClient, play_http


async def assert_plays_h264_and_aac(url: str, size: tuple[int, int], frames: int, seconds: float = 3) -> None:
    """ffprobe decodes the first ``seconds`` of live ``url``: H.264 of ``size``, at least ``frames``
    pictures of it, and AAC."""
    streams = await probe_frames(url, seconds=seconds)
    video = next(s for s in streams if s["codec_type"] == "video")
    audio = next(s for s in streams if s["codec_type"] == "audio")
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", *size)
    assert int(video["nb_read_frames"]) >= frames
    assert audio["codec_name"] == "aac" and int(audio["nb_read_frames"]) > 0


async def test_enhanced_rtmp_hevc_is_played_as_h264_over_http_flv(make_server, hevc_media) -> None:
    server = await make_server(workers=1)
    packets = enhanced(hevc_media[0])
    publisher = await PacketPublisher.start(f"rtmp://127.0.0.1:{server.rtmp_port}/live/cam")
    publisher.send_in_background(packets)
    try:
        await wait_live(server, "cam")
        assert server.hub.stats("live", "cam")["video"]["codec"] == "hevc"
        # 3 s at 25 fps, from the cached keyframe on.
        await assert_plays_h264_and_aac(flv_url(server, "cam_h264"), (320, 240), frames=50)
    finally:
        await publisher.stop()


async def test_corrupt_frames_skip_the_rendition_to_the_next_keyframe_and_spare_the_source(
    make_server, hevc_media
) -> None:
    """Frames cut short in the second GOP: the source's own viewer gets every frame as it was sent,
    the H.264 rendition leaves out the rest of that GOP and resumes at the next keyframe, and the
    decoding errors are counted in /api/v1/streams."""
    # A worker that falls behind real time drops pictures on purpose: not what this test is about.
    server = await make_server(workers=1, max_delay_ms=10_000)
    packets = enhanced(hevc_media[0])
    frames = [i for i, p in enumerate(packets) if p.kind == VIDEO and not p.config]
    keyframes = [packets[i].timestamp for i in frames if packets[i].keyframe]
    damaged = [packets[i].timestamp for i in frames if keyframes[1] < packets[i].timestamp < keyframes[2]][10:13]
    for i in frames:
        if packets[i].timestamp in damaged:
            packets[i] = Packet(VIDEO, packets[i].timestamp, packets[i].payload[: len(packets[i].payload) // 3])
    first_gop = [p for p in packets if p.timestamp < keyframes[1]]
    publisher = await PacketPublisher.start(f"rtmp://127.0.0.1:{server.rtmp_port}/live/cam")
    source, rendition = FlvClient(), FlvClient()
    async with aiohttp.ClientSession() as session:
        try:
            await publisher.send(first_gop)
            await wait_live(server, "cam")
            tasks = [
                asyncio.create_task(play_http(session, flv_url(server, "cam"), source)),
                asyncio.create_task(play_http(session, flv_url(server, "cam_h264"), rendition)),
            ]
            await rendition.wait_for(lambda c: len(c.video()) > 1)
            await publisher.send(packets[len(first_gop) :])
            last = packets[frames[-1]].timestamp
            await source.wait_for(lambda c: any(t.timestamp == last for t in c.video()))
            await rendition.wait_for(lambda c: any(t.timestamp >= keyframes[3] for t in c.video()))
            errors = await decode_errors(session, server)
        finally:
            await publisher.stop()
        for task in tasks:
            task.cancel()
    sent = [packets[i].payload for i in frames]
    assert [t.payload for t in source.video()[1:]] == sent, "the source's viewer: every frame, byte for byte"
    made = {t.timestamp: t for t in rendition.video() if t.payload[1] == 1}  # coded frames, by time

    def gop(start: int, end: int) -> list[int]:
        return [packets[i].timestamp for i in frames if start <= packets[i].timestamp < end]

    assert all(t in made for t in gop(keyframes[1], damaged[0])), "made up to the damage"
    assert not [t for t in made if damaged[0] <= t < keyframes[2]], "the rest of the damaged GOP is left out"
    assert made[keyframes[2]].payload[0] >> 4 == 1, "resumed on the next keyframe"
    assert all(t in made for t in gop(keyframes[2], keyframes[3])), "and every picture from there on"
    assert errors >= 1
    assert hub_stream(server, "live", "cam").sink_failures == 0


async def test_no_h264_rendition_of_video_that_nothing_here_decodes(make_server) -> None:
    """Legacy FLV VP6, its size in onMetaData: a rendition would have no video, so there is none (404)."""
    server = await make_server(workers=1)
    publisher = await connect(f"rtmp://127.0.0.1:{server.rtmp_port}/live")
    await publisher.publish("flash")
    publisher.send_media(DATA, 0, amf.encode("onMetaData", {"width": 320.0, "height": 240.0, "videocodecid": 4.0}))
    for i in range(10):
        publisher.send_media(VIDEO, i * 40, bytes((0x14 if i == 0 else 0x24, 0)) + b"vp6 frame")
    await wait_live(server, "flash")
    video = server.hub.stats("live", "flash")["video"]
    assert (video["codec"], video["width"], video["height"]) == ("vp6", 320, 240)
    async with aiohttp.ClientSession() as session:
        async with session.get(flv_url(server, "flash_h264")) as response:
            assert response.status == 404
        source = FlvClient()
        task = asyncio.create_task(play_http(session, flv_url(server, "flash"), source))
        await source.wait_for(lambda c: len(c.video()) == 10)
        task.cancel()
    assert not server.renditions.jobs
    publisher.close()


async def decode_errors(session: aiohttp.ClientSession, server, timeout: float = 5) -> int:  # type: ignore[no-untyped-def]
    """The decoding errors that /api/v1/streams reports, once the worker has reported any (every second)."""
    url = f"http://127.0.0.1:{server.http_port}/api/v1/streams"
    for _ in range(int(timeout * 10)):
        async with session.get(url) as response:
            errors = (await response.json())["transcode"]["decode_errors"]
        if errors:
            return errors
        await asyncio.sleep(0.1)
    return 0
