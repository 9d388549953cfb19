"""Slow viewers: memory stays bounded, they skip to keyframes or are dropped, and nobody else notices."""

from __future__ import annotations

import asyncio
import itertools
import socket

import aiohttp

from relay.formats import codecs, flv
from tests.conftest import flv_url, hub_stream, needs_ffmpeg, publish, rtmp_url, wait_live
from tests.test_playback import FlvClient, play_http

pytestmark = needs_ffmpeg


async def open_tiny_window(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An HTTP connection with a tiny receive buffer, so that not reading backs up the server fast."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def test_stalled_viewer_is_bounded_then_dropped_and_others_unaffected(make_server):
    high = 256 * 1024
    server = await make_server(viewer_high_water=high, viewer_low_water=64 * 1024, max_behind_seconds=2)
    pub = await publish(rtmp_url(server, "fat"), size="640x360", noise=True)
    try:
        await wait_live(server, "fat")
        stream = hub_stream(server, "live", "fat")
        _, stalled = await open_tiny_window(server.http_port, "/live/fat.flv")
        async with aiohttp.ClientSession() as session:
            healthy = FlvClient()
            task = asyncio.create_task(play_http(session, flv_url(server, "fat"), healthy))
            await healthy.wait_for(lambda c: len(c.video()) > 5)
            slow_viewer = None
            peak = 0
            bytes_in_before = stream.bytes_in
            for _ in range(150):  # up to 15 s
                await asyncio.sleep(0.1)
                http_viewers = [v for v in stream.viewers() if v.skips or v.transport.get_write_buffer_size()]
                if slow_viewer is None and http_viewers:
                    slow_viewer = http_viewers[0]
                if slow_viewer is not None:
                    peak = max(peak, slow_viewer.transport.get_write_buffer_size())
                    if slow_viewer.done.done():
                        break
            assert slow_viewer is not None, "the stalled viewer never backed up"
            assert slow_viewer.done.done() and slow_viewer.done.result() == "too slow"
            assert slow_viewer.skips >= 1
            # Bounded: the high-water mark plus one merged batch, however much the publisher sent.
            assert peak < high + 512 * 1024, f"stalled viewer buffered {peak} bytes"
            assert stream.bytes_in - bytes_in_before > 4 * (high + 512 * 1024)
            assert stream.dropped_slow == 1
            # The healthy viewer never skipped and kept receiving the whole time.
            count = len(healthy.video())
            await healthy.wait_for(lambda c: len(c.video()) > count + 25)
            (healthy_viewer,) = stream.viewers()
            assert healthy_viewer.skips == 0
            task.cancel()
        stalled.close()
    finally:
        await pub.stop()


async def test_viewer_that_pauses_skips_to_a_keyframe_and_resumes(make_server):
    server = await make_server(viewer_high_water=128 * 1024, viewer_low_water=32 * 1024, max_behind_seconds=30)
    pub = await publish(rtmp_url(server, "pause"), size="640x360", noise=True, gop=10)
    try:
        await wait_live(server, "pause")
        reader, writer = await open_tiny_window(server.http_port, "/live/pause.flv")
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"200 OK" in head
        parser = flv.FlvReader()
        tags: list[flv.Tag] = []

        async def read_for(seconds: float) -> None:
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            while loop.time() < end:
                try:
                    data = await asyncio.wait_for(reader.read(65536), 0.2)
                except TimeoutError:
                    continue
                tags.extend(parser.feed(dechunk.feed(data)))

        dechunk = Dechunker()
        await read_for(1.5)
        stream = hub_stream(server, "live", "pause")
        (viewer,) = stream.viewers()
        await asyncio.sleep(4)  # stop reading: the viewer falls behind
        assert viewer.skips >= 1, "a viewer that stops reading must be marked behind"
        before = len(tags)
        await read_for(4)
        assert not viewer.done.done(), "a viewer that catches up again is kept"
        assert viewer.waiting is False
        resumed = [t for t in tags[before:] if t.kind == flv.VIDEO]
        # Find where the skip happened: the first video tag after the largest timestamp jump.
        video = [t for t in tags if t.kind == flv.VIDEO]
        jumps = [(b.timestamp - a.timestamp, i + 1) for i, (a, b) in enumerate(itertools.pairwise(video))]
        gap, index = max(jumps)
        assert gap > 500, "frames were skipped"
        assert codecs.video_info(video[index].payload).keyframe, "after a skip, playback resumes on a keyframe"
        assert resumed
        writer.close()
    finally:
        await pub.stop()


class Dechunker:
    """Undo HTTP/1.1 chunked transfer coding on a byte stream."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.need = 0

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = bytearray()
        while True:
            if self.need:
                if len(self.buf) < self.need + 2:
                    break
                out += self.buf[: self.need]
                del self.buf[: self.need + 2]
                self.need = 0
            line_end = self.buf.find(b"\r\n")
            if line_end < 0:
                break
            self.need = int(self.buf[:line_end], 16)
            del self.buf[: line_end + 2]
            if self.need == 0:
                break
        return bytes(out)
