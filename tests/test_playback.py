"""End to end: Debian's ffmpeg publishes over RTMP; ffprobe, ffmpeg and HTTP clients play it back."""

from __future__ import annotations

import asyncio
import itertools
import time

import aiohttp
import pytest

from relay.formats import codecs, flv
from tests.conftest import (
    FFMPEG,
    flv_url,
    hub_stream,
    metric,
    needs_ffmpeg,
    probe_packets,
    probe_streams,
    publish,
    rtmp_url,
    run,
    wait_live,
)

pytestmark = needs_ffmpeg


class FlvClient:
    """An HTTP-FLV or WebSocket-FLV viewer that parses every tag and notes when it arrived."""

    def __init__(self) -> None:
        self.reader = flv.FlvReader()
        self.tags: list[tuple[float, flv.Tag]] = []
        self.ended = asyncio.Event()
        self.end_reason = ""
        self.status = 0
        self.headers: dict[str, str] = {}

    def feed(self, data: bytes) -> None:
        now = time.monotonic()
        self.tags.extend((now, tag) for tag in self.reader.feed(data))

    def video(self) -> list[flv.Tag]:
        return [t for _, t in self.tags if t.kind == flv.VIDEO]

    def audio(self) -> list[flv.Tag]:
        return [t for _, t in self.tags if t.kind == flv.AUDIO]

    async def wait_for(self, predicate, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; got {len(self.tags)} tags, ended={self.ended.is_set()}")
            await asyncio.sleep(0.05)


async def play_http(session: aiohttp.ClientSession, url: str, client: FlvClient) -> None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as response:
            client.status = response.status
            client.headers = dict(response.headers)
            if response.status != 200:
                client.end_reason = f"status {response.status}"
                return
            async for data in response.content.iter_any():
                client.feed(data)
            client.end_reason = "eof"
    except aiohttp.ClientError as exc:
        client.end_reason = f"error {exc!r}"
    finally:
        client.ended.set()


async def play_ws(session: aiohttp.ClientSession, url: str, client: FlvClient) -> None:
    try:
        async with session.ws_connect(url.replace("http://", "ws://")) as ws:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    client.feed(message.data)
            client.end_reason = "closed"
    finally:
        client.ended.set()


def assert_monotonic(tags: list[flv.Tag]) -> None:
    for kind in (flv.AUDIO, flv.VIDEO):
        stamps = [t.timestamp for t in tags if t.kind == kind]
        assert stamps == sorted(stamps), f"timestamps of type {kind} go backwards: {stamps[:50]}"


def first_media_is_keyframe(tags: list[flv.Tag]) -> bool:
    video = [t for t in tags if t.kind == flv.VIDEO and not codecs.video_info(t.payload).config]
    return bool(video) and codecs.video_info(video[0].payload).keyframe


async def test_rtmp_and_http_flv_playback_with_ffprobe(server):
    pub = await publish(rtmp_url(server, "cam"), size="320x240", rate=25)
    try:
        await wait_live(server, "cam")
        for url in (rtmp_url(server, "cam"), flv_url(server, "cam")):
            streams = await probe_streams(url)
            kinds = {s["codec_type"]: s for s in streams}
            assert set(kinds) == {"video", "audio"}, streams
            assert kinds["video"]["codec_name"] == "h264"
            assert (kinds["video"]["width"], kinds["video"]["height"]) == (320, 240)
            assert kinds["video"]["avg_frame_rate"] == "25/1"
            assert kinds["audio"]["codec_name"] == "aac"
            assert kinds["audio"]["sample_rate"] == "44100"
            packets = await probe_packets(url, seconds=3)
            for kind in ("video", "audio"):
                dts = [float(p["dts_time"]) for p in packets if p["codec_type"] == kind]
                assert len(dts) > 20, f"{url}: only {len(dts)} {kind} packets in 3 s"
                assert dts == sorted(dts), f"{url}: {kind} DTS go backwards"
            first_video = next(p for p in packets if p["codec_type"] == "video")
            assert "K" in first_video["flags"], "playback must start on a keyframe (GOP cache)"
    finally:
        await pub.stop()


async def test_ffmpeg_remuxes_rtmp_play_to_a_file(server, tmp_path):
    pub = await publish(rtmp_url(server, "rec"))
    try:
        await wait_live(server, "rec")
        out = tmp_path / "copy.mp4"
        code, _, err = await run(
            FFMPEG,
            "-v",
            "error",
            "-i",
            rtmp_url(server, "rec"),
            "-t",
            "3",
            "-c",
            "copy",
            str(out),
            timeout=20,
        )
        assert code == 0, err.decode()
        streams = await probe_streams(str(out))
        assert {s["codec_name"] for s in streams} == {"h264", "aac"}
        assert float(streams[0]["duration"]) > 2.0
    finally:
        await pub.stop()


async def test_http_flv_chunked_and_close_delimited(make_server):
    for chunked in (True, False):
        server = await make_server(http_flv_chunked=chunked)
        pub = await publish(rtmp_url(server, "s"))
        try:
            await wait_live(server, "s")
            async with aiohttp.ClientSession() as session:
                client = FlvClient()
                task = asyncio.create_task(play_http(session, flv_url(server, "s"), client))
                await client.wait_for(lambda c: len(c.video()) > 30)
                task.cancel()
            assert client.headers.get("Content-Type") == "video/x-flv"
            assert client.headers.get("Access-Control-Allow-Origin") == "*"
            assert ("Transfer-Encoding" in client.headers) == chunked
            assert "Content-Length" not in client.headers
            assert first_media_is_keyframe([t for _, t in client.tags])
            assert_monotonic([t for _, t in client.tags])
        finally:
            await pub.stop()


async def test_websocket_flv_starts_with_headers_then_keyframe(server):
    pub = await publish(rtmp_url(server, "ws"))
    try:
        await wait_live(server, "ws")
        async with aiohttp.ClientSession() as session:
            client = FlvClient()
            task = asyncio.create_task(play_ws(session, flv_url(server, "ws"), client))
            await client.wait_for(lambda c: len(c.video()) > 30 and len(c.audio()) > 30)
            assert hub_stream(server, "live", "ws").audience() == {"ws-flv": 1}
            task.cancel()
        tags = [t for _, t in client.tags]
        assert tags[0].kind == flv.SCRIPT and b"onMetaData" in tags[0].payload
        assert codecs.video_info(tags[1].payload).config, "AVC sequence header comes before frames"
        assert codecs.audio_info(tags[2].payload).config, "AAC sequence header comes before frames"
        assert first_media_is_keyframe(tags)
        assert_monotonic(tags)
    finally:
        await pub.stop()


async def test_unknown_stream_is_404_and_stream_not_found(server):
    async with aiohttp.ClientSession() as session, session.get(flv_url(server, "nobody")) as response:
        assert response.status == 404
        assert "no live stream" in await response.text()
    code, _, err = await run(FFMPEG, "-v", "error", "-i", rtmp_url(server, "nobody"), "-f", "null", "-", timeout=20)
    assert code != 0
    assert "StreamNotFound" in err.decode() or "no live stream" in err.decode(), err.decode()


async def test_api_lists_live_streams(server):
    pub = await publish(rtmp_url(server, "listed"), size="320x240")
    try:
        await wait_live(server, "listed")
        async with aiohttp.ClientSession() as session:
            client = FlvClient()
            task = asyncio.create_task(play_http(session, flv_url(server, "listed"), client))
            await client.wait_for(lambda c: len(c.video()) > 5)
            await asyncio.sleep(2.2)  # let the once-a-second rates settle
            async with session.get(f"http://127.0.0.1:{server.http_port}/api/v1/streams") as response:
                body = await response.json()
            async with session.get(f"http://127.0.0.1:{server.http_port}/metrics") as response:
                metrics = await response.text()
            task.cancel()
        (stream,) = body["streams"]
        assert stream["name"] == "listed" and stream["live"]
        assert stream["publisher"]["protocol"] == "rtmp"
        assert stream["video"]["codec"] == "h264"
        assert (stream["video"]["width"], stream["video"]["height"]) == (320, 240)
        assert 15 < stream["video"]["fps"] < 35
        assert stream["audio"]["codec"] == "aac" and stream["audio"]["sample_rate"] == 44100
        assert stream["bitrate_in"] > 10_000 and stream["bitrate_out"] > 10_000
        assert stream["viewers_by_protocol"] == {"http-flv": 1}
        assert stream["publisher"]["uptime"] > 2
        assert metric(metrics, "minilive_viewers", protocol="http-flv") == 1
    finally:
        await pub.stop()


async def test_viewers_survive_publisher_reconnect_with_monotonic_timestamps(make_server):
    server = await make_server(grace_seconds=10)
    pub = await publish(rtmp_url(server, "re"))
    await wait_live(server, "re")
    async with aiohttp.ClientSession() as session:
        clients = [FlvClient(), FlvClient()]
        tasks = [
            asyncio.create_task(play_http(session, flv_url(server, "re"), clients[0])),
            asyncio.create_task(play_ws(session, flv_url(server, "re"), clients[1])),
        ]
        try:
            for client in clients:
                await client.wait_for(lambda c: len(c.video()) > 25)
            await pub.stop()  # the anchor's network drops
            await asyncio.sleep(1.5)
            assert not any(c.ended.is_set() for c in clients), "viewers must stay during the grace period"
            before = [len(c.video()) for c in clients]
            pub = await publish(rtmp_url(server, "re"))
            for client, count in zip(clients, before, strict=True):
                await client.wait_for(lambda c, n=count: len(c.video()) > n + 40)
            stream = hub_stream(server, "live", "re")
            assert stream.publish_count == 2
        finally:
            await pub.stop()
            for task in tasks:
                task.cancel()
    for client in clients:
        tags = [t for _, t in client.tags]
        assert_monotonic(tags)
        video = [t.timestamp for t in tags if t.kind == flv.VIDEO]
        gaps = [b - a for a, b in itertools.pairwise(video)]
        assert max(gaps) >= 1000, "the reconnect gap shows in the timeline"
        assert max(gaps) < 10_000, "but no absurd jump"


async def test_viewers_get_a_clean_end_after_the_grace_period(make_server):
    server = await make_server(grace_seconds=1)
    pub = await publish(rtmp_url(server, "bye"))
    await wait_live(server, "bye")
    async with aiohttp.ClientSession() as session:
        http, ws = FlvClient(), FlvClient()
        tasks = [
            asyncio.create_task(play_http(session, flv_url(server, "bye"), http)),
            asyncio.create_task(play_ws(session, flv_url(server, "bye"), ws)),
        ]
        await http.wait_for(lambda c: len(c.video()) > 10)
        await ws.wait_for(lambda c: len(c.video()) > 10)
        await pub.stop()
        await asyncio.wait_for(http.ended.wait(), 10)
        await asyncio.wait_for(ws.ended.wait(), 10)
        await asyncio.gather(*tasks)
    assert http.end_reason == "eof", http.end_reason
    assert ws.end_reason == "closed"
    assert hub_stream(server, "live", "bye") is None


async def test_player_may_connect_before_the_anchor(make_server):
    server = await make_server(play_wait_seconds=15)
    async with aiohttp.ClientSession() as session:
        client = FlvClient()
        task = asyncio.create_task(play_http(session, flv_url(server, "early"), client))
        await asyncio.sleep(1)
        pub = await publish(rtmp_url(server, "early"))
        try:
            await client.wait_for(lambda c: len(c.video()) > 10, timeout=15)
        finally:
            await pub.stop()
            task.cancel()
    assert first_media_is_keyframe([t for _, t in client.tags])


async def test_second_publisher_takes_over(server):
    first = await publish(rtmp_url(server, "two"), size="320x240")
    try:
        await wait_live(server, "two")
        second = await publish(rtmp_url(server, "two"), size="160x120")
        try:
            code = await asyncio.wait_for(first.process.wait(), 10)
            assert code != 0, "the old publisher is disconnected"
            await asyncio.sleep(1.5)
            stream = hub_stream(server, "live", "two")
            assert stream.publisher is not None and stream.publish_count == 2
            streams = await probe_streams(flv_url(server, "two"))
            video = next(s for s in streams if s["codec_type"] == "video")
            assert (video["width"], video["height"]) == (160, 120), "the new publisher's picture is served"
        finally:
            await second.stop()
    finally:
        await first.stop()


async def test_second_publisher_is_refused_when_takeover_is_off(make_server):
    server = await make_server(publisher_takeover=False)
    first = await publish(rtmp_url(server, "two"))
    try:
        await wait_live(server, "two")
        second = await publish(rtmp_url(server, "two"))
        code = await asyncio.wait_for(second.process.wait(), 15)
        err = (await second.process.stderr.read()).decode()
        assert code != 0
        assert "already being published" in err or "BadName" in err, err
        assert first.process.returncode is None, "the first publisher keeps going"
        assert hub_stream(server, "live", "two").publish_count == 1
    finally:
        await first.stop()


@pytest.mark.parametrize("kind", ["audio", "video"])
async def test_single_track_streams(server, kind):
    pub = await publish(rtmp_url(server, kind), video=kind == "video", audio=kind == "audio")
    try:
        stream = None
        for _ in range(100):
            stream = hub_stream(server, "live", kind)
            if stream is not None and (stream.gop.packets or (kind == "audio" and stream.audio_frames > 5)):
                break
            await asyncio.sleep(0.1)
        for url in (rtmp_url(server, kind), flv_url(server, kind)):
            streams = await probe_streams(url)
            assert [s["codec_type"] for s in streams] == [kind], streams
            packets = await probe_packets(url, seconds=2)
            assert len(packets) > 20
    finally:
        await pub.stop()


async def test_publish_is_refused_without_anonymous_mode(make_server):
    server = await make_server(allow_anonymous_publish=False)
    pub = await publish(rtmp_url(server, "nope"))
    code = await asyncio.wait_for(pub.process.wait(), 15)
    err = (await pub.process.stderr.read()).decode()
    assert code != 0
    assert "--allow-anonymous-publish" in err, err
    assert hub_stream(server, "live", "nope") is None
