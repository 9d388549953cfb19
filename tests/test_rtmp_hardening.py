"""The RTMP limits of issue 16 against a real server, each next to a healthy ffmpeg publisher.

Findings #1 (AMF bomb before connect), #2 (unfinished-message memory), #7 (commands pipelined behind
connect) and the handshake/connect deadlines and connection caps. Each test checks the hostile side
(closed, counted, logged at INFO/WARNING without a traceback) and that the healthy stream still plays.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from api.config import ConfigError, load
from api.server import Server
from ingest.heap import MIN_INTERVAL, HeapTrim
from ingest.rtmp import amf, messages
from relay.formats.flv import FlvReader, Tag
from relay.formats.rtmp_chunk import ChunkReader, encode_message
from tests.conftest import FFMPEG, flv_url, metric, needs_ffmpeg, probe_streams, publish, rtmp_url, run, wait_live
from tests.test_hostile import Guarded, Raw, command, connected, handshaken, open_raw, status_code, until

pytestmark = needs_ffmpeg

HUGE_CHUNKS = messages.set_chunk_size(0x7FFFFFFF)


@pytest.fixture
async def guard(
    make_server: Callable[..., Awaitable[Server]], caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Callable[..., Awaitable[Guarded]]]:
    """Start a server with short deadlines (and ``overrides``) and a healthy publisher on it."""
    caplog.set_level(logging.INFO)
    publishers = []

    async def start(**overrides: Any) -> Guarded:
        server = await make_server(**{"handshake_timeout": 1.0, "setup_timeout": 2.0, **overrides})
        publisher = await publish(rtmp_url(server, "healthy"), seconds=120)
        publishers.append(publisher)
        await wait_live(server, "healthy")
        return Guarded(server, publisher, caplog)

    yield start
    for publisher in publishers:
        await publisher.stop()


async def get(server: Server, path: str) -> tuple[int, str, float]:
    """Status, body and seconds taken of a GET on the server's HTTP port."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{server.http_port}{path}") as r:
        return r.status, await r.text(), loop.time() - started


def no_traceback(guarded: Guarded) -> None:
    assert "Traceback" not in guarded.caplog.text
    assert not any(r.exc_info for r in guarded.caplog.records)


def nested_bomb(arrays: int) -> bytes:
    """The probe's command (scaled down from 65,536 arrays): "connect", 0, arrays of 250 nulls."""
    inner = b"\x0a" + struct.pack(">I", 250) + b"\x05" * 250
    return amf.encode("connect", 0) + b"\x0a" + struct.pack(">I", arrays) + inner * arrays


async def test_amf_bomb_is_refused_on_its_header(guard: Callable[..., Awaitable[Guarded]]) -> None:
    """Finding #1: big command messages are refused by their declared size, before and after connect,
    so nothing is decoded: /healthz and the healthy viewer stay responsive meanwhile."""
    guarded = await guard()
    server = guarded.server
    bomb = encode_message(3, 0, messages.COMMAND_AMF0, 0, nested_bomb(2000), 0x7FFFFFFF)  # 510 KB
    raws = []
    for _ in range(4):
        raw = await handshaken(server)
        raw.write(HUGE_CHUNKS + bomb)
        raws.append(raw)
    after_connect, _ = await connected(server)
    after_connect.write(HUGE_CHUNKS + bomb)
    status, _, took = await get(server, "/healthz")
    assert status == 200
    assert took < 1.0, f"/healthz took {took:.1f} s"
    await asyncio.gather(*(raw.wait_closed(5) for raw in [*raws, after_connect]))
    assert server.rtmp.counters["protocol_errors"] == 5
    assert guarded.caplog.text.count("exceeds the 4096 byte limit") == 4
    assert guarded.caplog.text.count("exceeds the 65536 byte limit") == 1
    await guarded.check()
    _, text, _ = await get(server, "/metrics")
    assert metric(text, "minilive_rtmp_protocol_errors_total") == 5
    no_traceback(guarded)


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


async def test_unfinished_messages_are_bounded(guard: Callable[..., Awaitable[Guarded]]) -> None:
    """Finding #2: one connection cannot park more than prepublish_buffer of a declared 8 MiB video
    message, and 30 together cannot pass pending_budget (the ones that would are dropped)."""
    guarded = await guard(prepublish_buffer=512 * 1024, pending_budget=2 * 1024 * 1024)
    server = guarded.server
    rtmp = server.rtmp
    declared = HUGE_CHUNKS + encode_message(6, 0, messages.VIDEO, 1, bytes(8 << 20), 0x7FFFFFFF)[:1_500_000]
    rss_before = rss()

    greedy, _ = await connected(server)
    greedy.write(declared)
    await greedy.wait_closed(5)
    assert "the limit is 524288" in guarded.caplog.text

    crowd: list[Raw] = []
    peak = refused = 0
    for _ in range(30):
        try:
            raw, _ = await connected(server)
        except ConnectionError:  # refused while the budget is spent: also what the limit is for
            refused += 1
            continue
        raw.write(declared[:400_000])  # each within prepublish_buffer, together 12 MB
        crowd.append(raw)
        await asyncio.sleep(0.02)
        peak = max(peak, rtmp.budget.held)
    await until(lambda: refused + sum(r.closed.done() for r in crowd) >= 20, 10, "the crowd over budget dropped")
    assert peak <= 2 * 1024 * 1024 + 512 * 1024, peak
    assert "budget of 2097152 bytes for unfinished messages is spent" in guarded.caplog.text
    _, text, _ = await get(server, "/metrics")
    assert any(line.startswith("minilive_rtmp_pending_bytes ") for line in text.splitlines())
    assert rss() - rss_before < 64 << 20, "RSS grew by more than 64 MB"  # 30 x 1.5 MB unbounded: 45 MB

    for raw in crowd:
        raw.close()
    await guarded.check()
    # What remains is the healthy publisher's unfinished frames at most.
    await until(lambda: rtmp.budget.held < 1 << 20, 5, f"budget given back, {rtmp.budget.held} held")
    no_traceback(guarded)


async def test_memory_of_a_flood_goes_back_to_the_system(guard: Callable[..., Awaitable[Guarded]]) -> None:
    """Finding #2's last part: 40 connections each park 3 MB of a video message in 4 KiB chunks, then
    vanish. The chunks are freed into holes of the heap that glibc keeps resident (without the trim this
    process stayed at its peak, 115 MB up); once the closed connections gave back trim_after_bytes, the
    server trims the heap and RSS returns near where it was."""
    guarded = await guard(trim_after_bytes=8 << 20)
    server = guarded.server
    parked = (
        encode_message(2, 0, messages.SET_CHUNK_SIZE, 0, struct.pack(">I", 4096), 128)
        + encode_message(6, 0, messages.VIDEO, 1, bytes(4 << 20), 4096)[: 3 << 20]
    )
    before = rss()
    flood = [(await connected(server))[0] for _ in range(40)]
    for raw in flood:
        for i in range(0, len(parked), 1 << 16):
            raw.write(parked[i : i + (1 << 16)])
    await until(lambda: server.rtmp.budget.held > 100 << 20, 10, "the flood's 120 MB parked")
    for raw in flood:
        raw.close()
    await until(lambda: "malloc_trim took" in guarded.caplog.text, 5, "the heap trimmed")
    assert server.rtmp.heap.trims == 1
    assert rss() - before < 12 << 20, f"RSS {before >> 20} MB before, {rss() >> 20} MB after"
    _, text, _ = await get(server, "/metrics")
    assert metric(text, "minilive_rtmp_heap_trims_total") == 1
    await guarded.check()
    no_traceback(guarded)


async def flv_tags(seconds: int) -> list[Tag]:
    code, out, err = await run(
        FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=440", "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast",
        "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "flv", "-",
    )  # fmt: skip
    assert code == 0, err.decode()
    return [tag for tag in FlvReader().feed(out) if tag.kind in (messages.AUDIO, messages.VIDEO)]


async def pump(raw: Raw, tags: list[Tag], stream_id: int) -> None:
    """Send ``tags`` over and over in real time, the sequence headers only once."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    offset = 0
    span = tags[-1].timestamp + 40
    for round_ in range(1000):
        for tag in tags:
            if round_ and tag.payload[1] == 0:  # AVC / AAC sequence header
                continue
            delay = started + (offset + tag.timestamp) / 1000 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            csid = 6 if tag.kind == messages.VIDEO else 4
            raw.write(encode_message(csid, offset + tag.timestamp, tag.kind, stream_id, tag.payload, 128))
        offset += span


async def test_connect_create_stream_publish_in_one_write(guard: Callable[..., Awaitable[Guarded]]) -> None:
    """Finding #7: an SDK that pipelines connect + createStream + publish in one write publishes."""
    guarded = await guard()
    server = guarded.server
    tags = await flv_tags(2)
    raw = await handshaken(server)
    tc_url = f"rtmp://127.0.0.1:{server.rtmp_port}/live"
    raw.write(
        command("connect", 1, {"app": "live", "tcUrl": tc_url})
        + command("createStream", 2, None)
        + command("publish", 3, None, "pipe", "live", stream_id=1)
    )
    await raw.messages(ChunkReader(), status_code("NetStream.Publish.Start"))
    sender = asyncio.create_task(pump(raw, tags, 1))
    try:
        streams = await probe_streams(flv_url(server, "pipe"))
        assert sorted(s["codec_name"] for s in streams) == ["aac", "h264"]
        assert not raw.closed.done()
    finally:
        sender.cancel()
        raw.close()
    assert "before connect" not in guarded.caplog.text
    no_traceback(guarded)


async def test_idle_sockets_are_closed_by_the_deadlines(guard: Callable[..., Awaitable[Guarded]]) -> None:
    """300 sockets that never handshake and 20 that never connect are closed by handshake_timeout and
    connect_timeout, while a healthy publish plays (the issue's 1,500 scaled down)."""
    guarded = await guard(connect_timeout=1.0, max_connections_per_address=400)
    server = guarded.server
    idle = [await open_raw(server) for _ in range(300)]
    silent = [await handshaken(server) for _ in range(20)]
    viewer = asyncio.create_task(probe_streams(flv_url(server, "healthy")))
    closed = await asyncio.gather(*(raw.wait_closed(10) for raw in idle))
    assert max(closed) < 1.0 + 2.5  # the ticker runs once a second
    await asyncio.gather(*(raw.wait_closed(10) for raw in silent))
    assert "no connect command in time (connect_timeout)" in guarded.caplog.text
    assert sorted(s["codec_name"] for s in await viewer) == ["aac", "h264"]
    assert server.rtmp.counters["timeouts"] >= 320
    await guarded.check()
    no_traceback(guarded)


@pytest.mark.parametrize(
    ("setting", "counter", "logged"),
    [
        ("max_connections_per_address", "refused_address", "connections from one address is the limit"),
        ("max_connections", "refused_total", "connections is the limit (max_connections)"),
    ],
)
async def test_connection_caps(
    guard: Callable[..., Awaitable[Guarded]], setting: str, counter: str, logged: str
) -> None:
    """With a cap of 5 (the healthy publisher is one), the 6th connection is refused at once, counted,
    logged; after one leaves, a new one is let in again."""
    guarded = await guard(**{setting: 5, "address_cap_exempt": []})  # loopback is exempt by default
    server = guarded.server
    others = [await handshaken(server) for _ in range(4)]
    refused = await open_raw(server)
    await refused.wait_closed(5)
    assert server.rtmp.counters[counter] == 1
    assert logged in guarded.caplog.text
    others.pop().close()
    await until(lambda: len(server.rtmp.connections) == 4, 5, "the closed connection forgotten")
    others.append(await handshaken(server))  # admitted: the handshake is answered
    assert server.rtmp.counters[counter] == 1
    for raw in others:
        raw.close()
    await guarded.check()
    no_traceback(guarded)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("connect_timeout = 0", "connect_timeout must be more than 0"),
        ("max_connections_per_address = 0", "max_connections_per_address must be at least 1"),
        ("connect_message_size = 100", "need 512 <= connect_message_size"),
        ("prepublish_buffer = 999999999999", "need 0 < prepublish_buffer"),
        ('address_cap_exempt = ["10.0.0.300"]', "'10.0.0.300' is not an IP address or network"),
        ("trim_after_bytes = -1", "trim_after_bytes must be 0"),
    ],
)
def test_rtmp_limits_are_validated(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "minilive.toml"
    path.write_text(f"[rtmp]\n{table}\n")
    with pytest.raises(ConfigError, match=message):
        load(path, {})


async def test_the_heap_trim_waits_for_enough_bytes_and_runs_at_most_every_ten_seconds() -> None:
    trim = HeapTrim(after_bytes=1000)
    assert not trim.check(freed=999, now=100.0)
    assert trim.check(freed=1000, now=100.0)
    for _ in range(100):  # it runs on a thread; another cannot start meanwhile
        if not trim._running:
            break
        await asyncio.sleep(0.01)
    assert not trim.check(freed=5000, now=100.0 + MIN_INTERVAL - 1), "too soon"
    assert not trim.check(freed=1500, now=200.0), "only 500 more bytes since the last"
    assert trim.check(freed=5000, now=200.0)
    assert trim.trims == 2
    assert not HeapTrim(after_bytes=0).check(freed=1 << 40, now=1e9), "0: never"
