"""Issue 16's hostile clients at full size against a minilive server process, each next to a healthy
publisher (ffmpeg, the bench fixture in real time) and a healthy HTTP-FLV viewer whose frame rate is
measured every second while the attack runs.

    .venv/bin/python -m bench.hostile [--only slowloris,idle,cap,whep,flood] [--json PATH]

Scenarios (the tests in tests/ run the same at 300 and with short deadlines):

- ``slowloris``: 300 HTTP connections trickle a request head a byte a second; the default head
  deadline (``http_head_timeout_seconds``, 10 s) closes them. Then 300 that first send one request
  (answered by aiohttp, which keeps the connection) and trickle the next.
- ``idle``: 1,500 TCP connections to the RTMP port that never send a byte; ``[rtmp] handshake_timeout``
  (10 s) closes them.
- ``cap``: the same 1,500 with ``[rtmp] max_connections = 1000``: those past the cap are refused at once.
- ``whep``: 1,000 WHEP offers answered and abandoned; ``[webrtc] connect_timeout`` (15 s) closes them,
  and the server's RSS and threads are compared before and after.
- ``flood``: 60 RTMP connections each park 4 MB of a video message in 4 KiB chunks, then vanish; RSS
  before, during and after, with the heap trim (``[rtmp] trim_after_bytes``) on and off.

For each: the time until every hostile connection was closed (or refused), the healthy viewer's frames
per second meanwhile (lowest one-second count and mean), and the server's RSS, open fds and threads
before, at the peak and after. The client raises its own soft fd limit; the server process needs
about 1,600 fds for ``idle`` (it inherits this process's limit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import fixture, peers
from ingest.rtmp import amf, messages
from ingest.rtmp.handshake import ClientHandshake
from relay.formats.flv import VIDEO, FlvReader
from relay.formats.rtmp_chunk import encode_message

SCENARIOS = ("slowloris", "idle", "cap", "whep", "flood")


@dataclass(slots=True)
class Usage:
    rss_mb: float
    fds: int
    threads: int


def usage(pid: int) -> Usage:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].split() for line in status}
    return Usage(int(fields["VmRSS"][0]) / 1024, len(os.listdir(f"/proc/{pid}/fd")), int(fields["Threads"][0]))


@dataclass(slots=True)
class Result:
    scenario: str
    hostile: int
    closed: int = 0  # hostile connections closed or refused by the server
    refused: int = 0  # of those, refused at once (a cap)
    seconds_to_close_all: float = 0.0  # from the last one opened until the server had closed every one
    viewer_fps_min: float = 0.0
    viewer_fps_mean: float = 0.0
    before: Usage | None = None
    peak: Usage | None = None
    after: Usage | None = None
    notes: dict[str, Any] = field(default_factory=dict)


class Viewer:
    """The healthy HTTP-FLV viewer: video frames counted per second."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.per_second: list[int] = []
        self._count = 0
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        reader = FlvReader()
        async with aiohttp.ClientSession() as session, session.get(self.url) as response:
            async for chunk in response.content.iter_any():
                self._count += sum(1 for tag in reader.feed(chunk) if tag.kind == VIDEO)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.per_second.append(self._count)
            self._count = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._read())
        self._ticker = asyncio.create_task(self._tick())

    def mark(self) -> int:
        return len(self.per_second)

    def fps_since(self, mark: int) -> tuple[float, float]:
        seconds = self.per_second[mark:] or [0]
        return float(min(seconds)), sum(seconds) / len(seconds)

    async def stop(self) -> None:
        for task in (self._task, self._ticker):
            if task is not None:
                task.cancel()


class Closing(asyncio.Protocol):
    """A hostile connection that notes when the server closed it."""

    def __init__(self, on_made: Callable[[asyncio.Transport], None] | None = None) -> None:
        self.closed: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.received = bytearray()
        self.transport: asyncio.Transport | None = None
        self.more = asyncio.Event()
        self.on_made = on_made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.on_made is not None:
            self.on_made(self.transport)

    def data_received(self, data: bytes) -> None:
        self.received += data
        self.more.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(time.monotonic())
        self.more.set()

    async def read(self, n: int) -> bytes:
        while len(self.received) < n:
            if self.closed.done():
                raise ConnectionError("closed")
            self.more.clear()
            await self.more.wait()
        data = bytes(self.received[:n])
        del self.received[:n]
        return data


async def open_many(port: int, count: int, batch: int = 250) -> list[Closing]:
    loop = asyncio.get_running_loop()
    opened: list[Closing] = []
    for start in range(0, count, batch):
        pairs = await asyncio.gather(
            *(loop.create_connection(Closing, "127.0.0.1", port) for _ in range(min(batch, count - start))),
            return_exceptions=True,
        )
        opened += [p[1] for p in pairs if not isinstance(p, BaseException)]
    return opened


async def until_closed(conns: list[Closing], timeout: float) -> float:
    """Seconds from now until the last of ``conns`` was closed by the server (timeout: what is left open)."""
    started = time.monotonic()
    done, _ = await asyncio.wait([c.closed for c in conns], timeout=timeout)
    return max((f.result() for f in done), default=started) - started


class Bench:
    def __init__(self, server: peers.Server) -> None:
        self.server = server
        self.pid = server.process.pid
        self.publisher: subprocess.Popen[bytes] | None = None
        self.viewer = Viewer(server.flv_url("healthy") or "")

    async def __aenter__(self) -> Bench:
        source = fixture.ensure()
        self.publisher = subprocess.Popen(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(source),
             "-c", "copy", "-f", "flv", f"{self.server.rtmp_url()}/healthy"],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        await asyncio.sleep(3)
        self.viewer.start()
        await asyncio.sleep(3)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.viewer.stop()
        if self.publisher is not None:
            self.publisher.terminate()
            self.publisher.wait()
        self.server.stop()

    def usage(self) -> Usage:
        return usage(self.pid)

    async def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.server.http_port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            text = await response.text()
        samples = (line.rpartition(" ") for line in text.splitlines() if line and not line.startswith("#"))
        return {name: float(value) for name, _, value in samples}


def start(config: str = "") -> peers.Server:
    return peers.start_minilive(peers.free_port(), peers.free_port(), config=config)


async def trickle(port: int, count: int, every: float, kept: bool) -> Result:
    """``count`` connections, each sending a request head a byte every ``every`` seconds; ``kept``: after
    a first request answered in full (its next head is then aiohttp's to wait for)."""
    loop = asyncio.get_running_loop()
    conns = await open_many(port, count)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000

    async def drip(conn: Closing) -> None:
        if kept and conn.transport is not None:
            conn.transport.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            while b"}" not in conn.received and not conn.closed.done():  # the JSON body's end
                conn.more.clear()
                await conn.more.wait()
        for byte in head:
            if conn.closed.done() or conn.transport is None:
                return
            conn.transport.write(bytes([byte]))
            await asyncio.sleep(every)

    drips = [loop.create_task(drip(c)) for c in conns]
    result = Result("slowloris" + (", after one request" if kept else ""), count)
    result.seconds_to_close_all = await until_closed(conns, 60)
    result.closed = sum(c.closed.done() for c in conns)
    for task in drips:
        task.cancel()
    return result


async def attack(bench: Bench, result_of: Callable[[], Awaitable[Result]], settle: float = 3.0) -> Result:
    """Run one attack next to the healthy viewer, with usage before, at its peak (sampled), after."""
    before = bench.usage()
    mark = bench.viewer.mark()
    peak = before
    running = asyncio.create_task(result_of())
    while not running.done():
        now = bench.usage()
        if now.fds > peak.fds or now.rss_mb > peak.rss_mb:
            peak = Usage(max(peak.rss_mb, now.rss_mb), max(peak.fds, now.fds), max(peak.threads, now.threads))
        await asyncio.sleep(0.25)
    result = await running
    result.viewer_fps_min, result.viewer_fps_mean = bench.viewer.fps_since(mark)
    await asyncio.sleep(settle)
    result.before, result.peak, result.after = before, peak, bench.usage()
    return result


async def slowloris(kept: bool) -> Result:
    async with Bench(start()) as bench:
        result = await attack(bench, lambda: trickle(bench.server.http_port or 0, 300, 1.0, kept))
        result.notes = {k: v for k, v in (await bench.metrics()).items() if k.startswith("minilive_http_")}
    return result


async def idle_rtmp(name: str, config: str, count: int = 1500) -> Result:
    async with Bench(start(config)) as bench:

        async def run() -> Result:
            conns = await open_many(bench.server.rtmp_port, count)
            result = Result(name, count)
            result.seconds_to_close_all = await until_closed(conns, 60)
            result.closed = sum(c.closed.done() for c in conns)
            return result

        result = await attack(bench, run)
        metrics = await bench.metrics()
        result.refused = int(metrics.get("minilive_rtmp_refused_total", 0))
        result.notes = {k: v for k, v in metrics.items() if k.startswith("minilive_rtmp_")}
    return result


async def whep(count: int = 1000) -> Result:
    config = "[webrtc]\nmax_whep_viewers = 1000\nmax_sessions = 1000\n"
    async with Bench(start(config)) as bench:
        from aiortc import RTCPeerConnection

        client = RTCPeerConnection()
        client.addTransceiver("video", direction="recvonly")
        client.addTransceiver("audio", direction="recvonly")
        await client.setLocalDescription(await client.createOffer())
        offer = client.localDescription.sdp
        await client.close()
        url = f"http://127.0.0.1:{bench.server.http_port}/whep/healthy"

        async def run() -> Result:
            result = Result("whep", count)
            statuses: dict[int, int] = {}
            started = time.monotonic()
            async with aiohttp.ClientSession() as http:

                async def abandon() -> None:
                    async with http.post(url, data=offer, headers={"Content-Type": "application/sdp"}) as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1

                for _ in range(count // 20):
                    await asyncio.gather(*(abandon() for _ in range(20)))
            result.notes["answered_in_seconds"] = round(time.monotonic() - started, 1)
            result.notes["statuses"] = statuses
            opened = time.monotonic()
            while (await bench.metrics()).get("minilive_webrtc_sessions", 1) > 0 and time.monotonic() - opened < 60:
                await asyncio.sleep(0.5)
            result.seconds_to_close_all = time.monotonic() - opened
            result.closed = int((await bench.metrics()).get("minilive_webrtc_connect_timeouts_total", 0))
            return result

        result = await attack(bench, run, settle=5.0)
        result.notes.update({k: v for k, v in (await bench.metrics()).items() if k.startswith("minilive_webrtc_")})
    return result


async def park(port: int, data: bytes) -> Closing:
    """A connection past the handshake and connect that sends ``data`` (a partial message) and stays."""
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(Closing, "127.0.0.1", port)
    assert conn.transport is not None
    handshake = ClientHandshake()
    conn.transport.write(handshake.start())
    conn.transport.write(handshake.receive_data(await conn.read(1 + 2 * 1536)))
    connect = amf.encode("connect", 1, {"app": "live", "tcUrl": f"rtmp://127.0.0.1:{port}/live"})
    conn.transport.write(encode_message(3, 0, messages.COMMAND_AMF0, 0, connect, 128))
    await asyncio.sleep(0.2)
    for i in range(0, len(data), 1 << 16):
        conn.transport.write(data[i : i + (1 << 16)])
        await asyncio.sleep(0.001)
    return conn


async def flood(trim: bool, count: int = 60) -> Result:
    config = "[rtmp]\n" + ("" if trim else "trim_after_bytes = 0\n")
    data = (
        encode_message(2, 0, messages.SET_CHUNK_SIZE, 0, struct.pack(">I", 4096), 128)
        + encode_message(6, 0, messages.VIDEO, 1, bytes((16 << 20) - 1), 4096)[: 4000 << 10]
    )
    async with Bench(start(config)) as bench:

        async def run() -> Result:
            result = Result("flood, trim " + ("on" if trim else "off"), count)
            conns = await asyncio.gather(*(park(bench.server.rtmp_port, data) for _ in range(count)))
            await asyncio.sleep(2)
            result.notes["during"] = asdict(bench.usage())
            result.notes["parked_mb"] = round((await bench.metrics())["minilive_rtmp_pending_bytes"] / 1e6)
            for conn in conns:
                if conn.transport is not None:
                    conn.transport.abort()
            result.closed = count
            return result

        result = await attack(bench, run, settle=3.0)
        result.notes["heap_trims"] = (await bench.metrics()).get("minilive_rtmp_heap_trims_total", 0)
    return result


def table(results: list[Result]) -> str:
    rows = [
        "| scenario | hostile | closed / refused | all closed in (s) | viewer fps min / mean |"
        " RSS MB before / peak / after | fds before / peak / after | threads before / peak / after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        assert r.before and r.peak and r.after
        rows.append(
            f"| {r.scenario} | {r.hostile} | {r.closed} / {r.refused} | {r.seconds_to_close_all:.1f} |"
            f" {r.viewer_fps_min:.0f} / {r.viewer_fps_mean:.1f} |"
            f" {r.before.rss_mb:.0f} / {r.peak.rss_mb:.0f} / {r.after.rss_mb:.0f} |"
            f" {r.before.fds} / {r.peak.fds} / {r.after.fds} |"
            f" {r.before.threads} / {r.peak.threads} / {r.after.threads} |"
        )
    return "\n".join(rows)


async def main(only: list[str]) -> list[Result]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 8192), hard), hard))
    runs: dict[str, Callable[[], Awaitable[list[Result]]]] = {
        "slowloris": lambda: _both(slowloris(False), slowloris(True)),
        "idle": lambda: _one(idle_rtmp("idle RTMP", "")),
        "cap": lambda: _one(idle_rtmp("idle RTMP, max_connections 1000", "[rtmp]\nmax_connections = 1000\n")),
        "whep": lambda: _one(whep()),
        "flood": lambda: _both(flood(False), flood(True)),
    }
    results: list[Result] = []
    for name in only:
        results += await runs[name]()
        print(table(results[-1:]).splitlines()[-1], flush=True)
    return results


async def _one(run: Awaitable[Result]) -> list[Result]:
    return [await run]


async def _both(first: Awaitable[Result], second: Awaitable[Result]) -> list[Result]:
    return [await first, await second]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated: " + ", ".join(SCENARIOS))
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    found = asyncio.run(main([s for s in args.only.split(",") if s]))
    print(table(found))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in found], indent=2))
    sys.exit(0)
