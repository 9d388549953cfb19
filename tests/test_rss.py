"""The soak's RSS growth (issue 16, rss): the debug endpoint's memory listings that found it, and the
fix's regression test."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import time
import tracemalloc
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest

from api.config import ConfigError, Settings, load
from api.console.sessions import admin_token
from recorder.recording import Recording
from relay.formats.hls import HlsSettings
from relay.formats.packet import AUDIO, Packet
from relay.http.hls import _Packager
from tests.conftest import flv_url, publish, rtmp_url, wait_live
from tests.test_hostile import until


async def _runtime(server, query: str) -> tuple[int, dict]:
    url = f"http://127.0.0.1:{server.http_port}/api/v1/debug/runtime?{query}"
    headers = {"Authorization": f"Bearer {admin_token(server.settings.data_dir)}"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, await response.json()


def _five_megabytes() -> list[bytes]:
    return [bytes(100_000) for _ in range(50)]


ALLOCATING_LINE = f"{__file__}:{_five_megabytes.__code__.co_firstlineno + 1}"


async def test_runtime_malloc_without_tracing_gives_glibc_and_a_hint(make_server) -> None:
    server = await make_server()
    assert not tracemalloc.is_tracing()
    status, body = await _runtime(server, "malloc=5")
    assert status == 200
    malloc = body["malloc"]
    assert malloc["tracing"] is False and "PYTHONTRACEMALLOC=1" in malloc["hint"] and "top" not in malloc
    glibc = malloc["glibc"]
    assert glibc["heap"] > 0 and 0 < glibc["in_use"] <= glibc["heap"] and glibc["free"] >= 0
    status, body = await _runtime(server, "malloc=lots")
    assert status == 400 and "malloc=N" in body["error"]["message"]


async def test_runtime_malloc_lists_lines_and_what_grew_since_the_last_call(make_server) -> None:
    server = await make_server()
    tracemalloc.start()
    try:
        _, first = await _runtime(server, "malloc=3")
        kept = _five_megabytes()  # alive until the second call
        _, second = await _runtime(server, "malloc=3")
    finally:
        tracemalloc.stop()
    assert "grown" not in first["malloc"] and len(first["malloc"]["top"]) == 3
    malloc = second["malloc"]
    assert malloc["tracing"] is True and malloc["traced"]["current"] >= 5_000_000
    assert malloc["top"][0]["at"] == ALLOCATING_LINE and len(kept) == 50
    assert malloc["grown"][0]["at"] == ALLOCATING_LINE and malloc["grown"][0]["size"] >= 5_000_000


async def test_runtime_buffers_counts_bytes_the_collector_does_not_track(make_server) -> None:
    server = await make_server()
    held = {"payloads": [bytes(1_000_000) for _ in range(8)]}
    _, body = await _runtime(server, "buffers=3")
    assert body["buffers"]["bytes"]["size"] >= 8_000_000 and body["buffers"]["bytes"]["count"] >= 8
    assert body["buffers"]["holders"]["list"] >= 8_000_000 and len(held["payloads"]) == 8


def _audio(seconds: int) -> Iterator[Packet]:
    """AAC config, then ``seconds`` of 100 ms audio frames of 2 KB (segments and parts to keep)."""
    yield Packet(AUDIO, 0, b"\xaf\x00\x12\x10", config=True)
    for i in range(seconds * 10):
        yield Packet(AUDIO, i * 100, b"\xaf\x01" + bytes(2000))


@contextmanager
def _no_collector() -> Iterator[None]:
    """As on the server, where ``gc.freeze`` and high thresholds make full collections rare: what
    reference counting does not free stays."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_a_stopped_hls_packager_and_its_window_go_without_a_full_collection() -> None:
    """A packager's playlist and its segmenter held each other (the segmenter calls the playlist's
    bound methods), so every stopped packager kept its window of parts (11 segments, megabytes at a
    real bitrate) until a full collection."""
    with _no_collector():
        packager = _Packager(HlsSettings(segment_seconds=1, part_seconds=0.5), "live", "gone")
        for packet in _audio(20):
            packager.feed(packet)
        playlist = weakref.ref(packager.playlist)
        segment = packager.playlist.segments[-1]
        assert len(packager.playlist.segments) == 11 and segment.parts
        packager.end()
        packager.stop()
        del packager, segment
        assert playlist() is None, "the stopped packager's playlist (and its parts) is still alive"


async def test_a_closed_recording_goes_without_a_full_collection(tmp_path) -> None:
    """The same cycle through a recording's segmenter: the soak's server held 8 closed recordings
    (2 rooms recorded at a time) at minute 8."""
    with ThreadPoolExecutor(1) as writer, _no_collector():
        recording = Recording("r", tmp_path, 1.0, writer, mp4=False)
        for packet in _audio(5):
            recording.feed(packet)
        await recording.close()
        assert len(recording.entries) >= 4
        segmenter = weakref.ref(recording.segmenter)
        del recording
        assert segmenter() is None, "the closed recording and its segmenter are still alive"


# Big buffers freed while small objects allocated after them live on, as HLS parts and viewers' start
# bytes are on the server; first a 4 MB block freed, which raises glibc's own mmap threshold above them.
_CHURN = """
import sys
from api.memstats import glibc_heap
from ingest.heap import set_mmap_threshold
if sys.argv[1] != "0":
    assert set_mmap_threshold(int(sys.argv[1]))
big = bytes(4 << 20)
del big
kept, parts = [], []
for i in range(200):
    parts.append(bytes(300_000 + i))
    kept.append(bytes(1000))
parts.clear()
print(glibc_heap()["free"])
"""


ROOT = Path(__file__).resolve().parent.parent


def _heap_free_after_churn(threshold: int) -> int:
    argv = [sys.executable, "-c", _CHURN, str(threshold)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT)
    return int(done.stdout)


def test_a_fixed_mmap_threshold_gives_big_buffers_back_as_they_are_freed() -> None:
    """The soak's RSS: with glibc's own threshold the 60 MB of parts freed stay in the heap as holes
    (RSS), with the server's (``malloc_mmap_threshold``, 128 KiB) they went back to the system."""
    assert _heap_free_after_churn(0) > 50_000_000, "glibc's own threshold kept the freed parts"
    assert _heap_free_after_churn(Settings().malloc_mmap_threshold) < 5_000_000


def test_malloc_mmap_threshold_is_checked(tmp_path) -> None:
    config = tmp_path / "minilive.toml"
    config.write_text("malloc_mmap_threshold = 67108864\n")
    with pytest.raises(ConfigError, match="malloc_mmap_threshold must be 0"):
        load(config, {})
    config.write_text("malloc_mmap_threshold = 0\n")
    assert load(config, {}).malloc_mmap_threshold == 0


async def test_an_ended_stream_goes_without_a_full_collection(make_server) -> None:
    """The soak's server held every ended stream (LiveStream, its HLS packager and the packager's
    window of parts: about 10 MB at 2 Mbit/s) until a full collection: a packager and its
    subscription held each other, and the subscription held the stream. Here: an HLS packager, an
    HTTP-FLV viewer and a recording on one stream, which then ends, with the collector off."""
    server = await make_server(grace_seconds=0.5)
    publisher = await publish(rtmp_url(server, "gone"), seconds=30)
    await wait_live(server, "gone")
    stream = weakref.ref(server.hub._streams["live/gone"])
    assert server.recorder.start("live", "gone", "replay-gone", "gone/replay-gone")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{server.http_port}/live/gone/index.m3u8") as response:
            assert response.status == 200
        async with session.get(flv_url(server, "gone")) as response:
            assert len(await response.content.readexactly(50_000)) == 50_000
    packager = weakref.ref(server.hls.packagers["live/gone"])
    with _no_collector():
        await publisher.stop()
        await until(lambda: "live/gone" not in server.hub._streams, 30, "the stream ends after its grace")
        server.hls.sweep(time.monotonic())  # as the sweeper does within 5 s: the ended stream's packager stops
        assert "live/gone" not in server.hls.packagers
        server.recorder.stop("replay-gone")
        assert await server.recorder.finish("replay-gone") is not None
        await asyncio.sleep(1.5)  # the hub's next check of its streams
        assert packager() is None, "the stopped packager (and its window of parts) is still alive"
        assert stream() is None, "the ended stream is still alive"
