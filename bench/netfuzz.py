"""Network-level mutation fuzzing: real client sessions, recorded once, replayed mutated against a running
minilive while a healthy publisher and viewer run (issue 16).

    python -m bench.netfuzz [--minutes 10] [--concurrency 50]   # table, and bench/results/netfuzz-DATE.json
    python -m bench.netfuzz --record                             # record the sessions again
    python -m bench.netfuzz --show SEED                          # the mutated session of one seed, as bytes

Recording: a small TCP proxy sits between real clients and a real minilive and keeps what each client sent
(server -> client is not replayed), per connection and per read, under bench/.cache/netfuzz/: an ffmpeg
RTMP publish and play, an ffmpeg HTTP-FLV play, a WS-FLV upgrade and read (aiohttp), HLS playlist, part
and segment GETs with an LL-HLS blocking reload, REST and WeChat API calls with JSON, and a WHIP offer
(aiortc).

Fuzzing: a child process keeps ``--concurrency`` sessions going, each a recording with 1-50 mutations
(bit flips, byte sets, truncations, inserted, deleted, duplicated and swapped chunks, and huge length
fields at real message boundaries: RTMP message length 0xFFFFFF, chunk size 0x7FFFFFFF, AMF string and
array lengths, aggregate FLV tag sizes, HTTP Content-Length and chunk sizes, WebSocket frame lengths),
sent at once and read until the server closes or ``--timeout`` passes. Each session's mutations follow
from its seed, logged with its times in the results' sessions file, so a finding is replayed with
``--show``. Meanwhile ffmpeg publishes the fixture and a viewer parses the stream's FLV tags; every 10 s
the server's RSS, fds, threads and log tracebacks, and the viewer's frame rate are sampled.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import random
import re
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench import fixture, peers
from bench.hls_client import parse_playlist
from bench.run import markdown_table
from relay.formats.flv import VIDEO, FlvReader

CACHE = peers.CACHE / "netfuzz"
RECORDINGS = CACHE / "sessions.json"
RESULTS = peers.ROOT / "bench" / "results"
STREAM = "netfuzz"  # what the healthy publisher sends, and what the recorded viewers asked for
SAMPLE_EVERY = 10.0
HANDSHAKE = 1 + 1536 + 1536  # C0, C1, C2: RTMP messages start after them
_MESSAGE_HEAD = (11, 7, 3, 0)  # an RTMP chunk's message header size by its fmt


# ------------------------------------------------------------------ recordings


@dataclass(slots=True)
class Recording:
    name: str
    protocol: str  # "rtmp" or "http": which port it is replayed to
    chunks: list[bytes]  # what the client sent, one item per read on the proxy

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "protocol": self.protocol,
            "chunks": [base64.b64encode(c).decode() for c in self.chunks],
        }

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> Recording:
        return cls(item["name"], item["protocol"], [base64.b64decode(c) for c in item["chunks"]])


class RecordingProxy:
    """A TCP proxy to ``port`` that keeps what each client sent, one list per connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections: list[list[bytes]] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def take(self, name: str, protocol: str) -> list[Recording]:
        taken = [Recording(f"{name}#{i}", protocol, chunks) for i, chunks in enumerate(self.connections) if chunks]
        self.connections = []
        return taken

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunks: list[bytes] = []
        self.connections.append(chunks)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, keep: bool) -> None:
            try:
                while data := await source.read(65536):
                    if keep:
                        chunks.append(data)
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))


async def _ffmpeg(*args: str, timeout: float = 30) -> None:
    process = await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"ffmpeg {' '.join(args)}: no end in {timeout} s") from None
    if process.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)}: {err.decode(errors='replace')[-500:]}")


def healthy_publisher(server: peers.Server) -> subprocess.Popen:
    """ffmpeg sending the bench fixture in real time, looped, to ``STREAM``."""
    return subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-stream_loop", "-1",
         "-i", str(fixture.ensure()), "-c", "copy", "-f", "flv", f"{server.rtmp_url()}/{STREAM}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


async def _wait_hls(http: aiohttp.ClientSession, base: str) -> str:
    """The stream's media playlist once it lists a segment and a part."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with http.get(f"{base}/live/{STREAM}/index.m3u8") as response:
            text = await response.text()
        if response.status == 200 and parse_playlist(text).segments and parse_playlist(text).parts:
            return text
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{base}/live/{STREAM}/index.m3u8 listed no segment in 30 s")


async def _record_http(port: int, appid: str, secret: str) -> None:
    """HLS, REST and WeChat API calls through the proxy at ``port``, each kind on one connection."""
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1, force_close=False)) as http:
        playlist = parse_playlist(await _wait_hls(http, base))
        part, segment = playlist.parts[-1], playlist.segments[-1]
        msn, number = playlist.hint or (part.msn, (part.part or 0) + 1)
        query = f"_HLS_msn={msn}&_HLS_part={number}"
        for path in (f"index.m3u8?{query}", part.uri, segment.uri):
            async with http.get(f"{base}/live/{STREAM}/{path}") as response:
                await response.read()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        async with http.post(f"{base}/api/v1/token", json={"appid": appid, "secret": secret}) as response:
            await response.read()
        params = {"grant_type": "client_credential", "appid": appid, "secret": secret}
        async with http.get(f"{base}/cgi-bin/token", params=params) as response:
            token = (await response.json())["access_token"]
        room = {
            "name": "netfuzz room", "coverImg": "media-id", "startTime": int(time.time()) + 3600,
            "endTime": int(time.time()) + 7200, "anchorName": "anchor", "anchorWechat": "anchor-wx",
            "shareImg": "media-id", "type": 0, "screenType": 0, "closeLike": 0, "closeGoods": 0,
            "closeComment": 0, "feedsImg": "media-id",
        }  # fmt: skip
        async with http.post(f"{base}/wxaapi/broadcast/room/create?access_token={token}", json=room) as response:
            await response.read()
        async with http.post(
            f"{base}/wxa/business/getliveinfo?access_token={token}", json={"start": 0, "limit": 10}
        ) as response:
            await response.read()


async def _record_ws(port: int) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(f"http://127.0.0.1:{port}/live/{STREAM}.flv") as ws:
        for _ in range(20):
            await ws.receive(timeout=10)


async def _record_whip(port: int) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="sendonly")
    pc.addTransceiver("audio", direction="sendonly")
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
            headers = {"Content-Type": "application/sdp"}
            url = f"http://127.0.0.1:{port}/whip/{STREAM}_whip"
            async with http.post(url, data=pc.localDescription.sdp, headers=headers) as response:
                await response.read()
                location = response.headers.get("Location")
            if response.status == 201 and location:
                async with http.delete(str(response.url.join(aiohttp.client.URL(location)))) as response:
                    await response.read()
    finally:
        await pc.close()


def _create_app(server: peers.Server) -> tuple[str, str]:
    data_dir = server.log.parent / "data"
    out = subprocess.run(
        [*peers.MINILIVE, "app", "create", "--data-dir", str(data_dir), "--json", "netfuzz"],
        capture_output=True, text=True, check=True, env=peers.minilive_env(),
    ).stdout  # fmt: skip
    app = json.loads(out)
    return app["appid"], app["secret"]


async def record() -> list[Recording]:
    """Record every kind of session once against a fresh minilive."""
    server = peers.start_minilive(peers.free_port(), peers.free_port(), name="netfuzz-record")
    publisher = healthy_publisher(server)
    rtmp, http = RecordingProxy(server.rtmp_port), RecordingProxy(server.http_port)
    recordings: list[Recording] = []
    try:
        appid, secret = _create_app(server)
        rtmp_port, http_port = await rtmp.start(), await http.start()
        async with aiohttp.ClientSession() as client:
            await _wait_hls(client, f"http://127.0.0.1:{server.http_port}")
        source = str(fixture.ensure())
        await _ffmpeg(
            "-t", "5", "-i", source, "-c", "copy", "-f", "flv", f"rtmp://127.0.0.1:{rtmp_port}/live/{STREAM}_pub"
        )
        recordings += rtmp.take("rtmp-publish", "rtmp")
        await _ffmpeg(
            "-rw_timeout", "10000000", "-i", f"rtmp://127.0.0.1:{rtmp_port}/live/{STREAM}", "-t", "3", "-f", "null", "-"
        )
        recordings += rtmp.take("rtmp-play", "rtmp")
        await _ffmpeg("-i", f"http://127.0.0.1:{http_port}/live/{STREAM}.flv", "-t", "2", "-f", "null", "-")
        recordings += http.take("http-flv", "http")
        await _record_ws(http_port)
        recordings += http.take("ws-flv", "http")
        await _record_http(http_port, appid, secret)
        recordings += http.take("hls-and-api", "http")
        await _record_whip(http_port)
        recordings += http.take("whip", "http")
    finally:
        await rtmp.stop()
        await http.stop()
        publisher.kill()
        publisher.wait()
        server.stop()
    CACHE.mkdir(parents=True, exist_ok=True)
    RECORDINGS.write_text(json.dumps([r.to_json() for r in recordings]))
    return recordings


def load_recordings() -> list[Recording]:
    if not RECORDINGS.exists():
        print(f"recording client sessions (once) into {RECORDINGS}", file=sys.stderr, flush=True)
        return asyncio.run(record())
    return [Recording.from_json(item) for item in json.loads(RECORDINGS.read_text())]


# ------------------------------------------------------------------ mutations


def rtmp_message_starts(data: bytes) -> list[int]:
    """Offsets in a client's RTMP bytes where a message's first chunk starts (after the handshake), found
    by walking the chunk stream the way a server reads it (chunk size changes included); stops at the first
    thing it cannot follow."""
    starts: list[int] = []
    chunk_size = 128
    heads: dict[int, list[int]] = {}  # chunk stream id -> [message length, type, left to read]
    pos = HANDSHAKE
    while pos < len(data):
        start = pos
        fmt, csid = data[pos] >> 6, data[pos] & 0x3F
        pos += 1
        if csid == 0:
            csid, pos = 64 + data[pos] if pos < len(data) else 0, pos + 1
        elif csid == 1:
            csid, pos = (64 + data[pos] + data[pos + 1] * 256) if pos + 1 < len(data) else 0, pos + 2
        head = data[pos : pos + _MESSAGE_HEAD[fmt]]
        state = heads.get(csid)
        if len(head) < _MESSAGE_HEAD[fmt] or (fmt and state is None):
            break
        pos += _MESSAGE_HEAD[fmt]
        if fmt <= 1:
            state = heads[csid] = [int.from_bytes(head[3:6], "big"), head[6], 0]
        if fmt < 3 and head[:3] == b"\xff\xff\xff":
            pos += 4  # extended timestamp
        assert state is not None
        if state[2] == 0:
            starts.append(start)
            state[2] = state[0]
        take = min(chunk_size, state[2])
        if state[1] == 1 and state[2] == state[0] and pos + 4 <= len(data):
            chunk_size = max(1, int.from_bytes(data[pos : pos + 4], "big") & 0x7FFFFFFF)
        pos += take
        state[2] -= take
    return starts


def _rtmp_message(csid: int, type_id: int, payload: bytes, length: int | None = None) -> bytes:
    """One RTMP message in a single fmt-0 chunk (whatever the chunk size), stating ``length``."""
    size = len(payload) if length is None else length
    return (
        bytes((csid,)) + b"\x00\x00\x00" + size.to_bytes(3, "big") + bytes((type_id,)) + b"\x01\x00\x00\x00" + payload
    )


def _amf_string(text: bytes, length: int | None = None) -> bytes:
    return b"\x02" + (len(text) if length is None else length).to_bytes(2, "big") + text


def rtmp_huge(rng: random.Random) -> bytes:
    """An RTMP message with a length field at or near its limit."""
    command = _amf_string(b"createStream") + b"\x00" + struct.pack(">d", 2.0) + b"\x05"  # name, transaction, null
    choices = [
        _rtmp_message(2, 1, b"\x7f\xff\xff\xff"),  # Set Chunk Size 0x7FFFFFFF
        _rtmp_message(2, 1, b"\xff\xff\xff\xff"),
        _rtmp_message(2, 5, b"\xff\xff\xff\xff"),  # Window Acknowledgement Size
        _rtmp_message(3, 20, rng.randbytes(rng.choice([0, 100, 4000])), length=0xFFFFFF),  # a command of 16 MiB
        _rtmp_message(6, 9, b"\x17\x01\x00\x00\x00" + rng.randbytes(200), length=0xFFFFFF),  # video
        _rtmp_message(4, 8, b"\xaf\x01" + rng.randbytes(100), length=0xFFFFFF),  # audio
        _rtmp_message(3, 20, _amf_string(b"connect", 0xFFFF) + b"\x00" * 20),  # an AMF string past its message
        _rtmp_message(
            3, 20, _amf_string(b"publish") + b"\x00" * 9 + b"\x0c\xff\xff\xff\xff" + b"x" * 50
        ),  # long string
        _rtmp_message(3, 20, command + b"\x0a\xff\xff\xff\xff\x05"),  # strict array of 4G items
        _rtmp_message(3, 20, command + b"\x08\xff\xff\xff\xff\x00\x01a\x05"),  # ECMA array
        _rtmp_message(3, 20, command + b"\x03" + b"\x00\x01a\x03" * 2000),  # objects nested deep
        # An aggregate whose first FLV tag claims 16 MiB.
        _rtmp_message(6, 22, b"\x09\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00" + b"\x17\x01" + rng.randbytes(30)),
        _rtmp_message(6, 9, b"\x17\x01\x00\x00\x00\xff\xff\xff\xff\x65" + rng.randbytes(100)),  # NAL length 4G
        _rtmp_message(6, 9, b"\x17\x00\x00\x00\x00\x01\x64\x00\x1f\xff\xe1\xff\xff\x67"),  # SPS length 64K
    ]
    return rng.choice(choices)


def http_huge(rng: random.Random) -> tuple[bytes, bytes]:
    """A header to add to a request head (before its blank line), and bytes to follow its head."""
    choices = [
        (b"Content-Length: 99999999999999999999\r\n", b""),
        (b"Content-Length: 2147483648\r\n", rng.randbytes(1000)),
        (b"Content-Length: -1\r\n", b""),
        (b"Content-Length: 10\r\nContent-Length: 20\r\n", b"x" * 20),
        (b"Transfer-Encoding: chunked\r\n", b"ffffffffffffffff\r\n" + rng.randbytes(500)),
        (b"Transfer-Encoding: chunked\r\n", b"7fffffff\r\n" + rng.randbytes(500)),
        (b"X-Long: " + b"a" * 100_000 + b"\r\n", b""),
        (b"".join(b"X-%d: y\r\n" % i for i in range(5000)), b""),
        # A WebSocket frame (masked, as a client's) claiming 2^63 - 1 bytes, after an upgrade.
        (b"", b"\x82\xff\x7f\xff\xff\xff\xff\xff\xff\xff" + rng.randbytes(4) + rng.randbytes(200)),
        (b"", b"\x81\xfe\xff\xff\x00\x00\x00\x00" + b"{" * 1000),
    ]
    return rng.choice(choices)


INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x02, 0x03, 0x09, 0x14)


class Mutator:
    """Mutations of a recording's chunks; each step names itself (for the sessions file)."""

    def __init__(self, recording: Recording, rng: random.Random) -> None:
        self.rng = rng
        self.protocol = recording.protocol
        self.chunks = list(recording.chunks)
        self.done: list[str] = []

    @property
    def size(self) -> int:
        return sum(len(c) for c in self.chunks)

    def _at(self, offset: int) -> tuple[int, int]:
        for index, chunk in enumerate(self.chunks):
            if offset < len(chunk):
                return index, offset
            offset -= len(chunk)
        return len(self.chunks), 0

    def _offset(self) -> int:
        return self.rng.randrange(max(1, self.size))

    def _edit(self, offset: int, replace: int, data: bytes) -> None:
        """Replace ``replace`` bytes at ``offset`` (within one chunk) by ``data``."""
        index, at = self._at(offset)
        if index == len(self.chunks):
            self.chunks.append(data)
            return
        chunk = self.chunks[index]
        self.chunks[index] = chunk[:at] + data + chunk[at + replace :]

    def _insert_chunk(self, offset: int, data: bytes) -> None:
        """``data`` as a chunk of its own (one write) at ``offset``, splitting the chunk there."""
        index, at = self._at(offset)
        if index < len(self.chunks) and at:
            chunk = self.chunks[index]
            self.chunks[index : index + 1] = [chunk[:at], chunk[at:]]
            index += 1
        self.chunks.insert(index, data)

    def step(self) -> None:
        rng = self.rng
        op = rng.choice(
            ("flip", "flip", "set", "set", "truncate", "insert", "delete", "duplicate", "swap", "huge", "huge")
        )
        if not self.chunks:
            return
        if op == "flip":
            offset = self._offset()
            index, at = self._at(offset)
            if index < len(self.chunks):
                self._edit(offset, 1, bytes((self.chunks[index][at] ^ (1 << rng.randrange(8)),)))
        elif op == "set":
            offset = self._offset()
            self._edit(offset, 1, bytes((rng.choice(INTERESTING),)))
        elif op == "truncate":
            offset = self._offset()
            index, at = self._at(offset)
            self.chunks = [*self.chunks[:index], self.chunks[index][:at]] if index < len(self.chunks) else self.chunks
        elif op == "insert":
            self._edit(self._offset(), 0, rng.randbytes(rng.choice((1, 4, 16, 300, 5000))))
        elif op == "delete":
            self._edit(self._offset(), rng.choice((1, 4, 16, 300)), b"")
        elif op == "duplicate":
            index = rng.randrange(len(self.chunks))
            self.chunks.insert(rng.randrange(len(self.chunks) + 1), self.chunks[index])
        elif op == "swap":
            i, j = rng.randrange(len(self.chunks)), rng.randrange(len(self.chunks))
            self.chunks[i], self.chunks[j] = self.chunks[j], self.chunks[i]
        elif self.protocol == "rtmp":
            starts = rtmp_message_starts(b"".join(self.chunks)) or [HANDSHAKE]
            self._insert_chunk(rng.choice(starts), rtmp_huge(rng))
        else:
            self._http_huge()
        self.done.append(op)

    def _http_huge(self) -> None:
        data = b"".join(self.chunks)
        heads = [m.start() for m in re.finditer(rb"\r\n\r\n", data)]
        if not heads:
            return
        end = self.rng.choice(heads)
        header, after = http_huge(self.rng)
        # The body bytes first, so that the header's offset still holds.
        self._insert_chunk(end + 4, after)
        self._edit(end + 2, 0, header)


def mutate(recording: Recording, seed: int) -> tuple[list[bytes], list[str]]:
    """The chunks of ``recording`` with a seed's mutations, and their names."""
    rng = random.Random(seed)
    mutator = Mutator(recording, rng)
    for _ in range(rng.choice((1, 1, 2, 3, 5, 10, 50))):
        mutator.step()
    return [c for c in mutator.chunks if c], mutator.done


# ------------------------------------------------------------------ the fuzzing process


@dataclass(slots=True)
class Target:
    rtmp_port: int
    http_port: int
    concurrency: int
    timeout: float
    seconds: float
    first_seed: int
    log: str  # the sessions file: one JSON line per session


def pick(recordings: list[Recording], seed: int) -> Recording:
    return recordings[seed % len(recordings)]


async def replay(target: Target, chunks: list[bytes], protocol: str) -> str:
    """Send ``chunks`` (reading what comes back) until the server closes or the timeout; how it ended."""
    port = target.rtmp_port if protocol == "rtmp" else target.http_port
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), target.timeout)
    except (OSError, TimeoutError):
        return "refused"

    async def drain_server() -> None:
        while await reader.read(65536):
            pass

    reading = asyncio.ensure_future(drain_server())
    ended = "timeout"
    try:
        async with asyncio.timeout(target.timeout):
            for chunk in chunks:
                if reading.done():
                    break
                writer.write(chunk)
                await writer.drain()
            await reading
            ended = "closed"
    except TimeoutError:
        pass
    except OSError:
        ended = "reset"
    finally:
        reading.cancel()
        writer.transport.abort()
    return ended


async def fuzz(target: Target, recordings: list[Recording], counters: Any) -> None:
    seeds = iter(range(target.first_seed, 1 << 62))
    stop = time.monotonic() + target.seconds
    log = open(target.log, "a")  # noqa: SIM115 (closed at the end of the run)

    async def worker() -> None:
        while time.monotonic() < stop:
            seed = next(seeds)
            recording = pick(recordings, seed)
            chunks, done = mutate(recording, seed)
            began = time.time()
            ended = await replay(target, chunks, recording.protocol)
            entry = {"seed": seed, "recording": recording.name, "mutations": done, "began": began, "ended": ended}
            log.write(json.dumps(entry) + "\n")
            with counters.get_lock():
                counters[0] += 1
                counters[1] += len(done)

    await asyncio.gather(*(worker() for _ in range(target.concurrency)))
    log.close()


def fuzz_process(target: Target, recordings: list[Recording], counters: Any) -> None:
    os.nice(5)  # the server and the healthy peers first
    asyncio.run(fuzz(target, recordings, counters))


# ------------------------------------------------------------------ the healthy viewer and samples


@dataclass(slots=True)
class HealthyViewer:
    url: str
    frames: int = 0
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                try:
                    async with http.get(self.url) as response:
                        if response.status != 200:
                            raise ConnectionError(f"HTTP {response.status}")
                        reader = FlvReader()
                        while data := await response.content.readany():
                            self.frames += sum(tag.kind == VIDEO for tag in reader.feed(data))
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as error:
                    self.errors.append(f"{type(error).__name__}: {error}"[:200])
                self.reconnects += 1
                await asyncio.sleep(0.5)


@dataclass(slots=True)
class Row:
    t: float  # seconds since the fuzzing began
    rss_mb: float
    fds: int
    threads: int
    tracebacks: int
    viewer_fps: float
    sessions: int
    mutations: int
    publisher_restarts: int


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def tracebacks(log: Path) -> int:
    return log.read_text(errors="replace").count("Traceback")


def sample_row(server: peers.Server, began: float, frames: float, counters: Any, restarts: int) -> Row:
    pid = server.process.pid
    return Row(
        round(time.monotonic() - began, 1),
        round(_status(pid, "VmRSS") / 1024, 1),
        len(os.listdir(f"/proc/{pid}/fd")),
        _status(pid, "Threads"),
        tracebacks(server.log),
        round(frames, 1),
        counters[0],
        counters[1],
        restarts,
    )


async def monitor(
    server: peers.Server, target: Target, counters: Any, fuzzer: multiprocessing.Process
) -> dict[str, Any]:
    publisher = healthy_publisher(server)
    restarts = 0
    viewer = HealthyViewer(f"http://127.0.0.1:{server.http_port}/live/{STREAM}.flv")
    watching = asyncio.ensure_future(viewer.run())
    rows: list[Row] = []
    findings: list[str] = []
    reconnects = 0
    try:
        # Fuzzing starts once the viewer sees frames, so that a stall is the fuzzer's doing.
        while viewer.frames < 30:
            await asyncio.sleep(0.2)
        began = time.monotonic()
        reconnects = viewer.reconnects  # (the viewer's tries before the stream was live are not counted)
        fuzzer.start()
        seen = viewer.frames
        while True:
            await asyncio.sleep(SAMPLE_EVERY - (time.monotonic() - began) % SAMPLE_EVERY)
            if publisher.poll() is not None:  # (a mutated session may take the stream over)
                restarts += 1
                publisher = healthy_publisher(server)
            if not server.alive():
                findings.append(f"the server exited with {server.process.returncode}")
                break
            row = sample_row(server, began, (viewer.frames - seen) / SAMPLE_EVERY, counters, restarts)
            seen = viewer.frames
            rows.append(row)
            print(" ".join(f"{k}={v}" for k, v in asdict(row).items()), file=sys.stderr, flush=True)
            if not fuzzer.is_alive():
                if fuzzer.exitcode:
                    raise RuntimeError(f"the fuzzing process failed ({fuzzer.exitcode}): see its traceback above")
                break
        # After the fuzzing: what the server holds once every mutated session is gone.
        await asyncio.sleep(SAMPLE_EVERY)
        if server.alive():
            rows.append(sample_row(server, began, (viewer.frames - seen) / SAMPLE_EVERY, counters, restarts))
    finally:
        watching.cancel()
        publisher.kill()
        publisher.wait()
    stalls = [row.t for row in rows if row.viewer_fps == 0]
    if stalls:
        findings.append(f"the healthy viewer stalled (0 fps) in the 10 s before t = {stalls}")
    if rows and rows[-1].tracebacks:
        findings.append(f"{rows[-1].tracebacks} tracebacks in {server.log}")
    if viewer.reconnects > reconnects:
        findings.append(f"the healthy viewer was disconnected {viewer.reconnects - reconnects} times")
    return {"rows": [asdict(row) for row in rows], "findings": findings, "viewer_errors": viewer.errors[-20:]}


def table(rows: list[dict[str, Any]]) -> str:
    headers = ["t (s)", "RSS (MB)", "fds", "threads", "tracebacks", "viewer fps", "sessions", "mutations"]
    keys = ["t", "rss_mb", "fds", "threads", "tracebacks", "viewer_fps", "sessions", "mutations"]
    return markdown_table(headers, [[str(row[key]) for key in keys] for row in rows])


def outcomes(log: Path) -> dict[str, dict[str, int]]:
    """Sessions by recording and by how they ended."""
    counts: dict[str, dict[str, int]] = {}
    with log.open() as lines:
        for line in lines:
            entry = json.loads(line)
            kind = entry["recording"].split("#", 1)[0]
            by_end = counts.setdefault(kind, {})
            by_end[entry["ended"]] = by_end.get(entry["ended"], 0) + 1
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.netfuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=50, help="mutated sessions at once")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds a mutated session may last")
    parser.add_argument("--seed", type=int, default=None, help="the first session's seed (default: random)")
    parser.add_argument("--record", action="store_true", help="record the client sessions again")
    parser.add_argument("--show", type=int, metavar="SEED", help="print one seed's mutated session and exit")
    args = parser.parse_args(argv)
    if args.record:
        RECORDINGS.unlink(missing_ok=True)
    recordings = load_recordings()
    if args.show is not None:
        recording = pick(recordings, args.show)
        chunks, done = mutate(recording, args.show)
        print(json.dumps({"recording": recording.name, "protocol": recording.protocol, "mutations": done}))
        print(repr(b"".join(chunks)))
        return
    peers.install(nms=False)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    sessions_log = CACHE / f"sessions-{stamp}.jsonl"
    server = peers.start_minilive(peers.free_port(), peers.free_port(), name="netfuzz-server")
    seed = args.seed if args.seed is not None else random.randrange(1 << 40)
    target = Target(
        server.rtmp_port, server.http_port, args.concurrency, args.timeout, args.minutes * 60, seed, str(sessions_log)
    )
    counters = multiprocessing.get_context("fork").Array("q", 2)
    fuzzer = multiprocessing.get_context("fork").Process(
        target=fuzz_process, args=(target, recordings, counters), daemon=True
    )
    try:
        result = asyncio.run(monitor(server, target, counters, fuzzer))
    finally:
        if fuzzer.is_alive():
            fuzzer.terminate()
        fuzzer.join()
        server.stop()
    result |= {
        "command": "python -m bench.netfuzz " + " ".join(argv if argv is not None else sys.argv[1:]),
        "first_seed": seed,
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "timeout": args.timeout,
        "recordings": {r.name: sum(len(c) for c in r.chunks) for r in recordings},
        "outcomes": outcomes(sessions_log) if sessions_log.exists() else {},
        "sessions_log": str(sessions_log),
        "server_log": str(server.log),
    }
    out = RESULTS / f"netfuzz-{stamp}.json"
    out.write_text(json.dumps(result, indent=1))
    print(table(result["rows"]))
    print(f"\noutcomes: {json.dumps(result['outcomes'])}")
    print("findings: " + ("; ".join(result["findings"]) or "none"))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
