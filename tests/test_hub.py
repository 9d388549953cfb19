"""The hub's contract with sinks: a sink that fails is detached and told, and viewers never notice."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from ingest.rtmp.client import connect
from relay.formats.packet import VIDEO, Packet
from tests.conftest import flv_url, hub_stream, metric, needs_ffmpeg, wait_live
from tests.test_hls import fetch, hls_url
from tests.test_mpegts import make_flv
from tests.test_playback import FlvClient, play_http

pytestmark = needs_ffmpeg

# A truncated AVC sequence header (AVCDecoderConfigurationRecord cut in its SPS) and an HEVC one of
# garbage after a plausible start: what a broken or hostile encoder may send mid-stream.
TRUNCATED_AVC_CONFIG = b"\x17\x00\x00\x00\x00\x01\x64\x00\x1f\xff\xe1\x00\x40\x67\x64"
GARBAGE_HEVC_CONFIG = b"\x1c\x00\x00\x00\x00\x01" + bytes(range(200, 256)) * 3


class BrokenSink:
    """A sink with a bug: it raises on its ``fail_at``-th packet."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at = fail_at
        self.fed = 0
        self.failure: Exception | None = None
        self.ended = False

    def feed(self, packet: Packet) -> None:
        self.fed += 1
        if self.fed == self.fail_at:
            raise IndexError("a bug in this sink")

    def new_publisher(self) -> None:
        pass

    def end(self) -> None:
        self.ended = True

    def failed(self, error: Exception) -> None:
        self.failure = error


async def send(publisher, packets: list[Packet], realtime: bool = True) -> None:  # type: ignore[no-untyped-def]
    start = asyncio.get_running_loop().time()
    first = packets[0].timestamp if packets else 0
    for packet in packets:
        if realtime:
            delay = (packet.timestamp - first) / 1000 - (asyncio.get_running_loop().time() - start)
            if delay > 0:
                await asyncio.sleep(delay)
        publisher.send_media(packet.kind, packet.timestamp, packet.payload)


async def test_a_failing_sink_is_detached_and_told_while_viewers_go_on(server, tmp_path, caplog) -> None:
    packets = await make_flv(tmp_path / "a.flv", seconds=4)
    publisher = await connect(f"rtmp://127.0.0.1:{server.rtmp_port}/live")
    await publisher.publish("sink")
    try:
        await send(publisher, packets[:30], realtime=False)
        await wait_live(server, "sink")
        broken = BrokenSink(fail_at=40)
        subscription = server.hub.add_sink("live", "sink", broken)
        assert subscription is not None
        async with aiohttp.ClientSession() as session:
            viewer = FlvClient()
            task = asyncio.create_task(play_http(session, flv_url(server, "sink"), viewer))
            await viewer.wait_for(lambda c: c.video())
            with caplog.at_level(logging.INFO):
                await send(publisher, packets[30:])
            await viewer.wait_for(lambda c: len(c.video()) >= len([p for p in packets if p.kind == VIDEO]) - 30)
            task.cancel()
        assert isinstance(broken.failure, IndexError), "the sink's owner is told why"
        assert broken.fed == 40, "no packet is fed to a detached sink"
        assert not broken.ended
        stats = server.hub.stats("live", "sink")
        assert stats is not None and stats["sink_failures"] == 1
        assert hub_stream(server, "live", "sink").sinks == []
        warnings = [r for r in caplog.records if "BrokenSink detached" in r.getMessage()]
        assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING and not warnings[0].exc_info
    finally:
        publisher.close()


async def recorded_to_half(server, tmp_path, name: str, seconds: int, from_ms: int):  # type: ignore[no-untyped-def]
    """A live stream ``name`` that is recorded, published up to its first keyframe from ``from_ms`` on:
    (the publisher, the media packets, the index of that keyframe)."""
    packets = await make_flv(tmp_path / "a.flv", seconds=seconds)
    config, media = packets[:2], packets[2:]
    publisher = await connect(f"rtmp://127.0.0.1:{server.rtmp_port}/live")
    await publisher.publish(name)
    try:
        half = next(i for i, p in enumerate(media) if p.kind == VIDEO and p.keyframe and p.timestamp >= from_ms)
        await send(publisher, config + media[:half], realtime=False)
        await wait_live(server, name)
        assert server.recorder.start("live", name, f"replay-{name}", f"{name}/replay-{name}")
    except BaseException:
        publisher.close()
        raise
    return publisher, media, half


@pytest.mark.parametrize(
    "bad_config", [TRUNCATED_AVC_CONFIG, GARBAGE_HEVC_CONFIG], ids=["truncated-avc", "hevc-garbage"]
)
async def test_bad_sequence_headers_with_hls_and_recording_on_never_stop_viewers(
    server, tmp_path, caplog, bad_config: bytes
) -> None:
    publisher, media, half = await recorded_to_half(server, tmp_path, "bad", 6, 2000)
    try:
        async with aiohttp.ClientSession() as session:
            viewer = FlvClient()
            task = asyncio.create_task(play_http(session, flv_url(server, "bad"), viewer))
            await viewer.wait_for(lambda c: c.video())
            first_playlist = asyncio.create_task(fetch(session, hls_url(server, "bad")))
            with caplog.at_level(logging.INFO):
                publisher.send_media(VIDEO, media[half].timestamp, bad_config)
                rest = [p for p in media[half:] if not p.config]
                before = len(viewer.video())
                await send(publisher, rest)
                await viewer.wait_for(lambda c: len(c.video()) >= before + len([p for p in rest if p.kind == VIDEO]))
                status, _, _ = await first_playlist
                assert status in (200, 503), "HLS answers (or refuses with a reason); it never fails with 500"
                await fetch(session, hls_url(server, "bad"))
            assert viewer.status == 200 and not viewer.ended.is_set(), "the FLV viewer stays connected"
            assert [t for t in viewer.video() if t.payload == bad_config], "viewers get what the publisher sent"
            task.cancel()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], "no error, no traceback"
    finally:
        publisher.close()


async def test_sink_failures_of_a_stream_log_one_warning_a_minute_and_count_every_one(server, tmp_path, caplog) -> None:
    """Issue 16, finding #3: failures that repeat (sinks attached again and again to a stream whose
    headers they cannot take) are one WARNING line a minute, never a traceback; the counter has them all."""
    packets = await make_flv(tmp_path / "a.flv", seconds=2)
    publisher = await connect(f"rtmp://127.0.0.1:{server.rtmp_port}/live")
    await publisher.publish("flood")
    try:
        await send(publisher, packets, realtime=False)
        await wait_live(server, "flood")
        sinks = [BrokenSink(fail_at=1) for _ in range(50)]
        with caplog.at_level(logging.DEBUG, logger="minilive.relay"):
            for sink in sinks:
                server.hub.add_sink("live", "flood", sink)
        assert all(isinstance(s.failure, IndexError) for s in sinks), "each sink is told"
        warnings = [r for r in caplog.records if "detached" in r.getMessage() and r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and not warnings[0].exc_info
        assert len([r for r in caplog.records if "detached" in r.getMessage()]) == 50, "the rest at DEBUG"
        stats = server.hub.stats("live", "flood")
        assert stats is not None and stats["sink_failures"] == 50
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{server.http_port}/metrics") as response,
        ):
            metrics = await response.text()
        assert metric(metrics, "minilive_sink_failures_total") == 50
    finally:
        publisher.close()


async def test_bad_sequence_header_with_the_recorder_alone_keeps_the_publisher_when_the_last_viewer_leaves(
    server, tmp_path, caplog
) -> None:
    """Issue 16, finding #3: with a recording as the only sink (a room with replays on), a truncated AVC
    header once stopped the viewers, and the publisher was killed ("Fatal error on transport") when the
    last viewer left. It stays, and its packets keep reaching the stream."""
    publisher, media, half = await recorded_to_half(server, tmp_path, "alone", 4, 1000)
    try:
        with caplog.at_level(logging.INFO):
            async with aiohttp.ClientSession() as session:
                viewer = FlvClient()
                task = asyncio.create_task(play_http(session, flv_url(server, "alone"), viewer))
                await viewer.wait_for(lambda c: c.video())
                publisher.send_media(VIDEO, media[half].timestamp, TRUNCATED_AVC_CONFIG)
                await viewer.wait_for(lambda c: any(t.payload == TRUNCATED_AVC_CONFIG for t in c.video()))
                task.cancel()
            for _ in range(50):  # the last viewer is gone
                if not hub_stream(server, "live", "alone").viewer_count:
                    break
                await asyncio.sleep(0.05)
            stream = hub_stream(server, "live", "alone")
            before = stream.video_frames
            rest = [p for p in media[half:] if not p.config]
            await send(publisher, rest, realtime=False)
            for _ in range(100):
                if stream.video_frames >= before + len([p for p in rest if p.kind == VIDEO]):
                    break
                await asyncio.sleep(0.05)
        assert stream.video_frames >= before + len([p for p in rest if p.kind == VIDEO]), "the publisher goes on"
        stats = server.hub.stats("live", "alone")
        assert stats is not None and stats["live"] and stats["publish_count"] == 1
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], "no error, no traceback"
        assert not [r for r in caplog.records if "Fatal error" in r.getMessage()]
    finally:
        publisher.close()
