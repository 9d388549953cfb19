"""Load generator: one uvloop process playing one role in a benchmark run, driven by a JSON plan.

    python -m bench.load PLAN.json RESULT.json    # writes RESULT.json once the plan's end time is reached

A plan names publishers (each sends the fixture paced in real time, looping it with increasing
timestamps), viewers (RTMP or HTTP-FLV) and HLS clients (bench.hls_client). Times in the plan are
``time.monotonic()`` values, which are system-wide on Linux, so ``bench.run`` can line up several of
these processes on one timeline.

Viewers come in two kinds. A bulk viewer parses the stream only until its first video keyframe, then
counts bytes and nothing else (an RTMP viewer still acknowledges them), so a thousand of them fit in
one or two processes. A sampled viewer parses every message and measures, per video frame, the time
from the publisher's send to its arrival; it lives in the publisher's process, which keeps each sent
frame's time under a key made of its length and CRC-32. HLS clients that measure latency live there
too, and look sent frames up by their RTMP timestamp.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import resource
import socket
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
import uvloop

from bench.hls_client import HlsClient
from ingest.rtmp.client import RtmpClient, connect
from relay.formats.flv import AUDIO, SCRIPT, VIDEO, FlvReader, Tag
from relay.formats.rtmp_chunk import Message

FRAME_GAP_MS = 33  # between the fixture's last frame and the first of its next loop
READ_BUFFER_SIZE = 64 * 1024
# A publisher whose unsent bytes pass this (about 4 s of the fixture) is not keeping up with real time.
PUBLISHER_BEHIND_BYTES = 1024 * 1024

# Publishers go on this long after the window closes, so that no viewer, in this process or another,
# sees its stream end before it has taken its byte count.
PUBLISH_GRACE = 1.0

FrameKey = tuple[int, int]


def frame_key(payload: bytes) -> FrameKey:
    return len(payload), zlib.crc32(payload)


def is_keyframe(payload: bytes) -> bool:
    """An AVC/HEVC key frame that carries pictures (frame type 1, not a sequence header)."""
    return len(payload) > 1 and payload[0] >> 4 == 1 and payload[1] == 1


def is_config(tag: Tag) -> bool:
    """Metadata and sequence headers: sent once, before the media loop."""
    if tag.kind == SCRIPT:
        return True
    return tag.kind in (AUDIO, VIDEO) and len(tag.payload) > 1 and tag.payload[1] == 0


def _local_port(connection: RtmpClient | FlvViewer) -> int:
    transport = connection._transport
    return transport.get_extra_info("sockname")[1] if transport is not None else 0


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _sleep_until(deadline: float) -> None:
    # uvloop's timers have millisecond resolution and may fire a little early.
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(left)


# ------------------------------------------------------------------ results


@dataclass(slots=True)
class ViewerResult:
    protocol: str
    sampled: bool
    group: str = ""  # the plan's label for it (bench.cluster: the node it plays from)
    port: int = 0  # its connection's local port, by which bench.run.measure finds the server process holding it
    first_keyframe_ms: float | None = None
    # How late it began to connect after its planned start (this process's own scheduling): in a
    # stampede, the spread of these says whether the viewers really connected at once.
    start_lag_ms: float = 0.0
    window_bytes: int = 0  # received between the plan's measure and end times
    tail_bytes: int = 0  # received between the plan's tail (if any) and end times
    total_bytes: int = 0
    closed_early: bool = False
    error: str | None = None
    # A sampled viewer's video frames in the window: (when the publisher sent it, in ms of
    # time.monotonic(), which names the frame; its latency in ms).
    latency: list[tuple[float, float]] = field(default_factory=list)


@dataclass(slots=True)
class PublisherResult:
    stream: str
    window_payload_bytes: int = 0  # media payload sent between measure and end
    tail_payload_bytes: int = 0  # ... between the plan's tail (if any) and end
    max_unsent_bytes: int = 0
    behind: bool = False
    error: str | None = None
    port: int = 0  # as a viewer's


@dataclass(slots=True)
class Timeline:
    measure: float
    end: float
    # A stampede's second look: from here to the end, a viewer that keeps up receives what is sent
    # (the window's start also holds each joiner's GOP cache, however late it came).
    tail: float | None = None

    def in_window(self, now: float) -> bool:
        return self.measure <= now < self.end


# ------------------------------------------------------------------ HTTP-FLV viewer


class ChunkedDecoder:
    """HTTP/1.1 chunked transfer coding, sans-I/O: feed body bytes, get the payload bytes back."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._left = 0  # payload bytes left in the current chunk
        self._crlf = False  # the CRLF after a chunk's payload is due

    def feed(self, data: bytes) -> bytes:
        buf = self._buf
        buf += data
        out = []
        while buf:
            if self._left:
                part = bytes(buf[: self._left])
                del buf[: len(part)]
                self._left -= len(part)
                out.append(part)
                self._crlf = not self._left
                continue
            if self._crlf:
                if len(buf) < 2:
                    break
                del buf[:2]
                self._crlf = False
            end = buf.find(b"\r\n")
            if end < 0:
                break
            self._left = int(bytes(buf[:end]).split(b";")[0], 16)
            del buf[: end + 2]
            if not self._left:
                break
        return b"".join(out)


class FlvViewer(asyncio.BufferedProtocol):
    """GET an HTTP-FLV stream; parse it into tags until :meth:`stop_parsing`, then only count bytes."""

    def __init__(self, url: str, on_tag: Callable[[Tag], None]) -> None:
        parts = urlsplit(url)
        self._request = (
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: minilive-bench\r\nAccept: */*\r\n\r\n"
        ).encode()
        self.on_tag = on_tag
        self.bytes_received = 0
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buffer = memoryview(bytearray(READ_BUFFER_SIZE))
        self._head = bytearray()
        self._chunked: ChunkedDecoder | None = None
        self._flv: FlvReader | None = FlvReader()
        self._transport: asyncio.Transport | None = None
        self.error: Exception | None = None  # why this side closed, if it did

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, so no isinstance check.
        self._transport = cast(asyncio.Transport, transport)
        transport.write(self._request)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.bytes_received += nbytes
        if self._flv is None:
            return
        data = bytes(self._buffer[:nbytes])
        try:
            if not self.started.done():
                data = self._read_head(data)
            if self._chunked is not None:
                data = self._chunked.feed(data)
            for tag in self._flv.feed(data):
                self.on_tag(tag)
                if self._flv is None:
                    break
        except Exception as exc:
            self.error = exc
            if not self.started.done():
                self.started.set_exception(exc)
            self.close()

    def _read_head(self, data: bytes) -> bytes:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            return b""
        head = bytes(self._head[:end]).decode("latin-1").lower()
        status = head.split("\r\n", 1)[0]
        if " 200" not in status:
            raise ConnectionError(f"HTTP-FLV answered {status!r}")
        if "transfer-encoding: chunked" in head:
            self._chunked = ChunkedDecoder()
        self.started.set_result(None)
        return bytes(self._head[end + 4 :])

    def stop_parsing(self) -> None:
        self._flv = None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.started.done():
            self.started.set_exception(ConnectionError(f"closed before the response: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)


# ------------------------------------------------------------------ viewers


@dataclass(slots=True)
class Viewer:
    """One planned viewer and the connection that plays it."""

    result: ViewerResult
    start: float
    url: str
    stream: str
    connection: RtmpClient | FlvViewer | None = None
    measured_from: int = 0
    stopping: bool = False  # we are closing it: the end of the connection is not the server's doing
    # A stampede's viewer: its socket, made in advance, is connected by its Burst at the start signal.
    burst: Burst | None = None
    sock: socket.socket | None = None
    connect_started: float = 0.0

    def open_socket(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connect_now(self) -> None:
        """Send the SYN (non-blocking: the kernel completes the connection; :meth:`run` waits for it)."""
        assert self.sock is not None
        parts = urlsplit(self.url)
        self.connect_started = time.monotonic()
        code = self.sock.connect_ex((parts.hostname or "", parts.port or 1935))
        if code not in (0, errno.EINPROGRESS):
            self.result.error = f"connect: {os.strerror(code)}"

    def on_video(self, payload: bytes, connected_at: float, sent: dict[FrameKey, float], timeline: Timeline) -> None:
        now = time.monotonic()
        if self.result.first_keyframe_ms is None and is_keyframe(payload):
            self.result.first_keyframe_ms = (now - connected_at) * 1000
            if not self.result.sampled:
                assert self.connection is not None
                self.connection.stop_parsing()
                return
        if self.result.sampled and payload[1:2] == b"\x01" and timeline.in_window(now):
            sent_at = sent.get(frame_key(payload))
            if sent_at is not None:
                self.result.latency.append((round(sent_at * 1000, 3), round((now - sent_at) * 1000, 2)))

    async def run(self, sent: dict[FrameKey, float], timeline: Timeline, timeout: float) -> None:
        sock = self.sock
        if self.burst is not None:
            await self.burst.fired.wait()
            connected_at = self.connect_started
        else:
            await _sleep_until(self.start)
            connected_at = time.monotonic()
        self.result.start_lag_ms = round((connected_at - self.start) * 1000, 2)
        try:
            if self.result.error is not None:  # its burst could not even start connecting it
                raise ConnectionError(self.result.error)
            if sock is not None:
                async with asyncio.timeout(timeout):
                    await _connected(sock)
            if self.result.protocol == "rtmp":
                client = await connect(self.url, timeout=timeout, sock=sock)
                self.connection = client

                def on_message(message: Message) -> None:
                    if message.type_id == VIDEO:
                        self.on_video(message.payload, connected_at, sent, timeline)

                client.on_message = on_message
                self.result.port = _local_port(client)
                await client.play(self.stream, timeout=timeout)
            else:
                loop = asyncio.get_running_loop()
                parts = urlsplit(self.url)

                def on_tag(tag: Tag) -> None:
                    if tag.kind == VIDEO:
                        self.on_video(tag.payload, connected_at, sent, timeline)

                # Set before connecting: the first keyframe may arrive before create_connection returns.
                viewer = self.connection = FlvViewer(self.url, on_tag)
                async with asyncio.timeout(timeout):
                    if sock is not None:
                        await loop.create_connection(lambda: viewer, sock=sock)
                    else:
                        await loop.create_connection(lambda: viewer, parts.hostname, parts.port)
                    self.result.port = _local_port(viewer)
                    await viewer.started
            await self.connection.closed
            self.result.closed_early = not self.stopping
            if self.connection.error is not None:
                self.result.error = _describe(self.connection.error)
        except Exception as exc:
            self.result.error = _describe(exc)
            self.result.closed_early = True
            if self.connection is not None:
                self.connection.close()
            elif sock is not None:
                sock.close()

    def bytes_received(self) -> int:
        return self.connection.bytes_received if self.connection is not None else 0


async def _connected(sock: socket.socket) -> None:
    """Until a non-blocking connect of ``sock`` has finished; raise if it failed."""
    loop = asyncio.get_running_loop()
    writable = loop.create_future()
    loop.add_writer(sock.fileno(), lambda: writable.done() or writable.set_result(None))
    try:
        await writable
    finally:
        loop.remove_writer(sock.fileno())
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise ConnectionError(f"connect: {os.strerror(code)}")


class Burst:
    """The viewers of a plan that share one start time and connect at one instant (a stampede).

    Their sockets are made in advance; at the start signal one callback calls a non-blocking
    ``connect`` on every one, a few microseconds each, so the whole burst's SYNs leave within a few
    ms however many viewers this process holds (a task per viewer, each woken by its own timer and
    going through ``create_connection``, spread 500 connects over hundreds of ms). Each viewer then
    waits for its own connection and speaks its protocol on it."""

    def __init__(self, start: float, viewers: list[Viewer]) -> None:
        self.start = start
        self.viewers = viewers
        self.fired = asyncio.Event()
        for viewer in viewers:
            viewer.burst = self
            viewer.open_socket()

    async def run(self) -> None:
        await _sleep_until(self.start)
        for viewer in self.viewers:
            viewer.connect_now()
        self.fired.set()


# ------------------------------------------------------------------ publisher


class Source:
    """The fixture split into what is sent once (metadata, sequence headers) and what loops."""

    def __init__(self, path: Path) -> None:
        tags = FlvReader().feed(path.read_bytes())
        self.config = [tag for tag in tags if is_config(tag)]
        self.media = [tag for tag in tags if not is_config(tag)]
        self.keys = [frame_key(tag.payload) if tag.kind == VIDEO else None for tag in self.media]
        self.period_ms = max(tag.timestamp for tag in self.media) + FRAME_GAP_MS


async def publish(
    url: str,
    result: PublisherResult,
    source: Source,
    start: float,
    timeline: Timeline,
    sent: dict[FrameKey, float] | None,
    video_sent: dict[int, float] | None,
    timeout: float,
) -> None:
    """Publish ``source`` in real time from ``start`` until just after the window, looping it."""
    await _sleep_until(start)
    try:
        client = await connect(url, timeout=timeout)
        result.port = _local_port(client)
        await client.publish(result.stream, timeout=timeout)
        for tag in source.config:
            client.send_media(tag.kind, 0, tag.payload)
        base = time.monotonic()
        media, keys, count = source.media, source.keys, len(source.media)
        index = offset = 0
        while not client.closed.done():
            tag = media[index]
            timestamp = tag.timestamp + offset
            due = base + timestamp / 1000
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
                now = time.monotonic()
            if now >= timeline.end + PUBLISH_GRACE:
                break
            client.send_media(tag.kind, timestamp, tag.payload)
            if timeline.in_window(now):
                result.window_payload_bytes += len(tag.payload)
                if timeline.tail is not None and now >= timeline.tail:
                    result.tail_payload_bytes += len(tag.payload)
                unsent = client.write_buffer_size()
                result.max_unsent_bytes = max(result.max_unsent_bytes, unsent)
            if keys[index] is not None:
                if sent is not None:
                    sent[keys[index]] = now
                if video_sent is not None:
                    video_sent[timestamp] = now
            index += 1
            if index == count:
                index = 0
                offset += source.period_ms
        if client.closed.done():
            result.error = "the server closed the connection"
        result.behind = client.closed.done() or client.write_buffer_size() > PUBLISHER_BEHIND_BYTES
        client.close()
    except Exception as exc:
        result.error = _describe(exc)
        result.behind = True


# ------------------------------------------------------------------ the process


async def run(plan: dict[str, Any]) -> dict[str, Any]:
    """Carry out a plan (see bench.run.plan_*) and return what was measured."""
    timeline = Timeline(plan["measure"], plan["end"], plan.get("tail"))
    timeout = plan.get("timeout", 10.0)
    sent: dict[FrameKey, float] = {}
    tasks = []
    publishers = [PublisherResult(p["stream"]) for p in plan.get("publishers", [])]
    hls_specs = plan.get("hls", [])
    # Send times by RTMP timestamp, per stream, for the HLS clients that measure latency.
    video_sent: dict[str, dict[int, float]] = {h["stream"]: {} for h in hls_specs if h["latency"]}
    if publishers:
        source = Source(Path(plan["fixture"]))
        record = any(v["sampled"] for v in plan.get("viewers", []))
        for spec, result in zip(plan["publishers"], publishers, strict=True):
            tasks.append(
                publish(
                    plan["rtmp_url"],
                    result,
                    source,
                    spec["start"],
                    timeline,
                    sent if record else None,
                    video_sent.get(spec["stream"]),
                    timeout,
                )
            )
    viewers = [
        Viewer(ViewerResult(v["protocol"], v["sampled"], v.get("group", "")), v["start"], v["url"], v["stream"])
        for v in plan.get("viewers", [])
    ]
    bursts: dict[float, list[Viewer]] = {}
    for viewer, spec in zip(viewers, plan.get("viewers", []), strict=True):
        if spec.get("burst"):
            bursts.setdefault(viewer.start, []).append(viewer)
    tasks.extend(Burst(start, members).run() for start, members in bursts.items())
    tasks.extend(viewer.run(sent, timeline, timeout) for viewer in viewers)
    hls_clients = [
        HlsClient(
            h["url"], h["mode"], h["poll"], h["start"], timeline.measure, timeline.end, video_sent.get(h["stream"])
        )
        for h in hls_specs
    ]
    # One connection pool for all HLS clients; a blocking reload may take up to the server's timeout.
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=timeout + 10)
    )
    hls_running = [asyncio.ensure_future(client.run(session)) for client in hls_clients]
    running = [asyncio.ensure_future(task) for task in tasks]

    await _sleep_until(timeline.measure)
    cpu_at_measure = time.process_time()
    for viewer in viewers:
        viewer.measured_from = viewer.bytes_received()
    tail_from = {}
    if timeline.tail is not None:
        await _sleep_until(timeline.tail)
        tail_from = {id(viewer): viewer.bytes_received() for viewer in viewers}
    await _sleep_until(timeline.end)
    cpu_seconds = time.process_time() - cpu_at_measure
    for viewer in viewers:
        viewer.result.total_bytes = viewer.bytes_received()
        viewer.result.window_bytes = viewer.result.total_bytes - viewer.measured_from
        if tail_from:
            viewer.result.tail_bytes = viewer.result.total_bytes - tail_from[id(viewer)]
        viewer.stopping = True
        if viewer.connection is not None:
            viewer.connection.close()
    hls = [asdict(client.result) for client in hls_clients]
    for task in hls_running:
        task.cancel()  # a client may be waiting in a blocking reload
    await asyncio.wait(running + hls_running, timeout=5)
    await session.close()
    for task in hls_running:
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            raise exc  # a bug in the client, not a failure of the server
    return {
        "cpu_seconds": cpu_seconds,
        "viewers": [asdict(viewer.result) for viewer in viewers],
        "latency_ms": [ms for viewer in viewers for _, ms in viewer.result.latency],
        "publishers": [asdict(result) for result in publishers],
        "hls": hls,
    }


def main() -> None:
    # A thousand sockets need more descriptors than the usual soft limit of 1024.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    plan_path, result_path = sys.argv[1:3]
    result = uvloop.run(run(json.loads(Path(plan_path).read_text())))
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
