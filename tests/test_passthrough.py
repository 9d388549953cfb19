"""Codecs the hub relays without knowing them (Enhanced RTMP, legacy HEVC), and publisher liveness.

The publisher here is our RTMP client sending hand-made tag bodies, because Debian's ffmpeg 5.1
cannot publish Enhanced RTMP; the bytes must come out of HTTP-FLV and RTMP play unchanged.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from ingest.rtmp.client import RtmpClientError, connect
from relay.formats import flv
from tests.conftest import flv_url, hub_stream, rtmp_url
from tests.test_playback import FlvClient, play_http

AUDIO, VIDEO = flv.AUDIO, flv.VIDEO


def ex_video(frame_type: int, packet_type: int, fourcc: bytes, body: bytes) -> bytes:
    """Enhanced RTMP ExVideoTagHeader: IsExHeader | FrameType | PacketType, FourCC, body."""
    return bytes((0x80 | (frame_type << 4) | packet_type,)) + fourcc + body


def ex_audio(packet_type: int, fourcc: bytes, body: bytes) -> bytes:
    return bytes((0x90 | packet_type,)) + fourcc + body


def legacy_hevc(keyframe: bool, packet_type: int, body: bytes) -> bytes:
    return bytes(((1 if keyframe else 2) << 4 | 12, packet_type, 0, 0, 0)) + body


CODECS = {
    # name: (sequence header, keyframe, inter frame, expected codec name)
    "hvc1": (
        ex_video(1, 0, b"hvc1", b"HEVC-CONFIG"),
        ex_video(1, 1, b"hvc1", b"\x00\x00\x00" + b"IDR" * 50),
        ex_video(2, 3, b"hvc1", b"P" * 40),
        "hevc",
    ),
    "av01": (
        ex_video(1, 0, b"av01", b"AV1-CONFIG"),
        ex_video(1, 1, b"av01", b"KEY" * 50),
        ex_video(2, 1, b"av01", b"D" * 40),
        "av1",
    ),
    "vp09": (
        ex_video(1, 0, b"vp09", b"VP9-CONFIG"),
        ex_video(1, 1, b"vp09", b"KEY" * 50),
        ex_video(2, 1, b"vp09", b"D" * 40),
        "vp9",
    ),
    "hevc12": (
        legacy_hevc(True, 0, b"HEVC-CONFIG"),
        legacy_hevc(True, 1, b"IDR" * 50),
        legacy_hevc(False, 1, b"P" * 40),
        "hevc",
    ),
}
OPUS_HEADER = ex_audio(0, b"Opus", b"OpusHead-config")
OPUS_FRAME = ex_audio(1, b"Opus", b"opus-frame")


async def publish_frames(client, codec: str, frames: int, start: int = 0) -> None:
    config, key, inter, _ = CODECS[codec]
    if start == 0:
        client.send_media(VIDEO, 0, config)
        client.send_media(AUDIO, 0, OPUS_HEADER)
    for i in range(frames):
        ts = start + i * 40
        client.send_media(VIDEO, ts, key if i % 10 == 0 else inter)
        client.send_media(AUDIO, ts, OPUS_FRAME)
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("codec", sorted(CODECS))
async def test_codecs_pass_through_unchanged(server, codec):
    config, key, inter, name = CODECS[codec]
    publisher = await connect(f"rtmp://127.0.0.1:{server.rtmp_port}/live")
    await publisher.publish(codec)
    await publish_frames(publisher, codec, 25)
    stream = hub_stream(server, "live", codec)
    async with aiohttp.ClientSession() as session:
        viewer = FlvClient()
        task = asyncio.create_task(play_http(session, flv_url(server, codec), viewer))
        rtmp_viewer = await connect(rtmp_url(server, codec).rsplit("/", 1)[0])
        received: list[tuple[int, bytes]] = []
        rtmp_viewer.on_message = lambda m: received.append((m.type_id, m.payload))
        await rtmp_viewer.play(codec)
        await viewer.wait_for(lambda c: len(c.video()) >= 1)
        await publish_frames(publisher, codec, 20, start=2000)
        await viewer.wait_for(lambda c: len(c.video()) >= 1 + 1 + 20)
        task.cancel()
    video = [t.payload for t in viewer.video()]
    audio = [t.payload for t in viewer.audio()]
    # Joined from the GOP cache: config, then the last keyframe, then live frames, byte for byte.
    assert video[0] == config
    assert video[1] == key
    assert set(video[2:]) <= {key, inter}
    assert audio[0] == OPUS_HEADER and OPUS_FRAME in audio
    rtmp_video = [p for t, p in received if t == VIDEO]
    assert rtmp_video[:2] == [config, key]
    assert stream.tracks.video_codec == name and stream.tracks.audio_codec == "opus"
    publisher.close()
    rtmp_viewer.close()


async def test_silent_publisher_is_dropped_but_a_trickle_is_not(make_server):
    server = await make_server(publisher_idle_timeout=1.5, grace_seconds=0)
    silent = await connect(f"rtmp://127.0.0.1:{server.rtmp_port}/live")
    await silent.publish("silent")
    trickle = await connect(f"rtmp://127.0.0.1:{server.rtmp_port}/live")
    await trickle.publish("trickle")
    await publish_frames(silent, "hevc12", 5)
    await publish_frames(trickle, "hevc12", 5)
    started = time.monotonic()
    # The silent publisher's TCP connection stays open but sends nothing (a stalled network);
    # the trickle sends one tiny frame every 0.8 s, like live-pusher's background "waiting image".
    ts = 1000
    while time.monotonic() - started < 4.5:
        trickle.send_media(VIDEO, ts, CODECS["hevc12"][2])
        ts += 800
        await asyncio.sleep(0.8)
    assert hub_stream(server, "live", "silent") is None, "a publisher that sends nothing is gone within seconds"
    assert hub_stream(server, "live", "trickle").publisher is not None
    trickle.close()
    silent.close()


async def test_republish_takes_over_a_half_dead_connection(make_server):
    server = await make_server(publisher_idle_timeout=60)
    old = await connect(f"rtmp://127.0.0.1:{server.rtmp_port}/live")
    await old.publish("anchor")
    await publish_frames(old, "hvc1", 5)
    # The anchor's network dropped without a FIN: the old connection looks alive to the server.
    new = await connect(f"rtmp://127.0.0.1:{server.rtmp_port}/live")
    await new.publish("anchor")
    await publish_frames(new, "hvc1", 5)
    stream = hub_stream(server, "live", "anchor")
    assert stream.publish_count == 2 and stream.publisher is not None
    await asyncio.sleep(0.2)
    assert old.closed.done(), "the old connection is closed by the takeover"
    new.close()


async def test_unknown_app_is_rejected_at_connect_with_a_reason(server):
    rejected = r"NetConnection\.Connect\.Rejected.*unknown application 'other'"
    with pytest.raises(RtmpClientError, match=rejected):
        await connect(f"rtmp://127.0.0.1:{server.rtmp_port}/other")


async def test_anonymous_publish_is_limited_to_app_live(make_server):
    server = await make_server(apps=["live", "other"])
    client = await connect(f"rtmp://127.0.0.1:{server.rtmp_port}/other")
    with pytest.raises(RtmpClientError, match="only allowed under app 'live'"):
        await client.publish("x")
    client.close()
