"""Capture the fuzz seed corpora in tests/fuzz/seeds/ from real clients (issue 16).

    .venv/bin/python -m bench.fuzz_seeds        # rewrites tests/fuzz/seeds/<target>/ (needs ffmpeg, curl, chromium)

- ``handshake``, ``rtmp``, ``rtmp_chunk``, ``amf0``: an ffmpeg RTMP publish, read on the server side of a
  socket whose far end is ffmpeg (its C0+C1 carries the digest of the "complex" handshake, as OBS's and
  librtmp's do); the chunk seed is what follows the handshake, the AMF seeds are its command and data
  message bodies. Our own client's plain handshake is a second handshake seed.
- ``amf3``: AMF3 values written by hand (no client we can run sends them), one value each, as it follows
  the AVM+ marker: what Flash-era clients send with ``objectEncoding`` 3.
- ``flv``: the first tags of a 1 s ffmpeg FLV, and FLV tags carrying Enhanced RTMP (HEVC, AVC, VP8) headers.
- ``http``: request heads as curl, ffmpeg (HLS) and Chromium (fetch, WebSocket upgrade) send them.
- ``sdp``: Chromium's WHIP (sendonly) and WHEP (recvonly) offers.
- ``config``: the example config files in the repository.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

from ingest.rtmp import amf
from ingest.rtmp.connection import Connect, Play, Publish, ServerConnection
from ingest.rtmp.handshake import ClientHandshake
from relay.formats import flv, vp8
from relay.formats.rtmp_chunk import ChunkReader

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "tests" / "fuzz" / "seeds"
CAPTURE_BYTES = 12 * 1024  # small files: the handshake, the commands and the first media messages

# Enhanced RTMP sequence headers (the codec fuzz tests' real x265/x264 records).
_HEVC_RECORD = bytes.fromhex(
    "0104080000009e08000000003cf000fcfdf8f800000f03a00001001740010c01ffff0408000003009e0800000300003c9598"
    "09a10001002b4201010408000003009e0800000300003c90014101e2cb2b349265780b7020200040000003004000000642a2"
    "000100084401c172860c4624"
)
_AVC_RECORD = bytes.fromhex("0142c00dffe100166742c00dda0507ec0440000003004000000c83c50aa801000468ce0fc8")


def _write(target: str, name: str, data: bytes) -> None:
    folder = SEEDS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    print(f"  {target}/{name}: {len(data)} bytes")


async def _capture_rtmp_publish() -> bytes:
    """The bytes ffmpeg sends when it publishes 1 s of video and audio, as the server reads them."""
    received = bytearray()
    done = asyncio.Event()

    class Recorder(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.core = ServerConnection()

        def data_received(self, data: bytes) -> None:
            received.extend(data)
            for event in self.core.receive_data(data):
                if isinstance(event, Connect):
                    self.core.accept_connect(event)
                elif isinstance(event, Publish):
                    self.core.accept_publish(event)
                elif isinstance(event, Play):
                    self.core.accept_play(event)
            self.transport.write(self.core.data_to_send())  # type: ignore[attr-defined]
            if len(received) >= CAPTURE_BYTES:
                done.set()

        def connection_lost(self, exc: Exception | None) -> None:
            done.set()

    server = await asyncio.get_running_loop().create_server(Recorder, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ffmpeg = await asyncio.create_subprocess_exec(
        "ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-f", "lavfi",
        "-i", "sine=frequency=440", "-t", "1", "-c:v", "libx264", "-g", "5", "-c:a", "aac", "-f", "flv",
        f"rtmp://127.0.0.1:{port}/live/seed",
    )  # fmt: skip
    await asyncio.wait_for(done.wait(), 30)
    ffmpeg.kill()
    await ffmpeg.wait()
    server.close()
    return bytes(received[:CAPTURE_BYTES])


def rtmp() -> None:
    capture = asyncio.run(_capture_rtmp_publish())
    handshake_end = 1 + 1536 + 1536
    _write("rtmp", "ffmpeg-publish.bin", capture)
    _write("handshake", "ffmpeg-c0c1c2.bin", capture[:handshake_end])
    _write("handshake", "plain-c0c1c2.bin", ClientHandshake().start() + bytes(1536))
    _write("rtmp_chunk", "ffmpeg-publish-chunks.bin", capture[handshake_end:])
    reader = ChunkReader()
    for message in reader.feed(capture[handshake_end:]):
        if message.type_id in (18, 20):
            name = amf.decode(message.payload)[0]
            _write("amf0", f"ffmpeg-{message.type_id}-{name.lstrip('@')}.bin", message.payload)


def amf3() -> None:
    values = {
        # connect's command object as an AMF3 object: dynamic, anonymous class, app and objectEncoding.
        "object": bytes.fromhex("0a0b01") + b"\x07app\x06\x09live" + b"\x1dobjectEncoding\x04\x03" + b"\x01",
        "array": bytes.fromhex("0907") + b"\x01" + b"\x04\x01" + b"\x06\x05ab" + b"\x06\x00",  # [1, "ab", "ab"]
        "bytearray": b"\x0c\x09" + b"\x00\x01\x02\x03",
        "double": b"\x05" + bytes.fromhex("400921fb54442d18"),
        "int": b"\x04\xff\xff\xff\xff",
        "string": b"\x06\x0bhello",
        "sealed": bytes.fromhex("0a13") + b"\x07Foo" + b"\x03a" + b"\x04\x05",  # class Foo {a: 5}
    }
    for name, data in values.items():
        _write("amf3", f"{name}.bin", data)


def flv_seeds() -> None:
    out = ROOT / "bench" / ".cache" / "fuzz-seed.flv"
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-f", "lavfi",
         "-i", "sine=frequency=440", "-t", "1", "-c:v", "libx264", "-g", "5", "-c:a", "aac", str(out)],
        check=True,
    )  # fmt: skip
    _write("flv", "ffmpeg-1s.flv", out.read_bytes()[:CAPTURE_BYTES])
    tags = [
        flv.encode_tag(flv.VIDEO, 0, b"\x90hvc1" + _HEVC_RECORD),  # Enhanced RTMP SequenceStart, HEVC
        flv.encode_tag(flv.VIDEO, 0, b"\x91hvc1\x00\x00\x00" + bytes.fromhex("00000006260150af") + bytes(8)),
        flv.encode_tag(flv.VIDEO, 0, b"\x90avc1" + _AVC_RECORD),
        flv.encode_tag(flv.VIDEO, 0, vp8.sequence_start()),
        flv.encode_tag(flv.AUDIO, 0, b"\xaf\x00\x12\x10"),
        flv.encode_tag(flv.SCRIPT, 0, amf.encode("onMetaData", amf.ECMAArray(width=320.0, height=240.0))),
    ]
    _write("flv", "enhanced-rtmp.flv", flv.header() + b"".join(tags))


async def _capture_requests(clients: list[tuple[str, list[str]]]) -> dict[str, bytes]:
    """The first request head each client command sends, read by a server that then closes."""
    heads: dict[str, bytes] = {}
    current = [""]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with_body = await reader.readuntil(b"\r\n\r\n")
        heads.setdefault(current[0], with_body)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for name, command in clients:
        current[0] = name
        argv = [part.replace("PORT", str(port)) for part in command]
        process = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()
    server.close()
    return heads


_CHROMIUM_JS = """
const base = 'http://127.0.0.1:PORT';
await fetch(base + '/live/seed/index.m3u8').catch(() => {});
await new Promise(done => { const ws = new WebSocket('ws://127.0.0.1:PORT/live/seed.flv');
    ws.onerror = ws.onclose = done; });
"""


def http() -> None:
    playlist = "http://127.0.0.1:PORT/live/seed/index.m3u8"
    clients = [
        ("curl-get", ["curl", "-s", "-m", "5", playlist]),
        ("ffmpeg-hls", ["ffmpeg", "-v", "quiet", "-i", playlist, "-f", "null", "-"]),
    ]
    heads = asyncio.run(_capture_requests(clients))
    chromium = shutil.which("chromium")
    if chromium:
        heads.update(asyncio.run(_chromium_requests(chromium)))
    for name, head in heads.items():
        _write("http", f"{name}.txt", head)


async def _chromium_requests(chromium: str) -> dict[str, bytes]:
    from playwright.async_api import async_playwright

    heads: dict[str, bytes] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            writer.close()
            return  # a preconnect that sent nothing
        if b"upgrade: websocket" in head.lower():
            heads["chromium-ws-upgrade"] = head
        elif head.startswith(b"GET /live/"):
            heads["chromium-fetch"] = head
        else:
            heads.setdefault("chromium-navigate", head)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium)
        page = await browser.new_page()
        # A page of the same origin: Chromium refuses an opaque origin's requests to loopback.
        await page.goto(f"http://127.0.0.1:{port}/")
        await page.evaluate(f"async () => {{ {_CHROMIUM_JS.replace('PORT', str(port))} }}")
        sdp = {}
        for kind, direction in (("whip", "sendonly"), ("whep", "recvonly")):
            sdp[kind] = await page.evaluate(
                "async (direction) => { const pc = new RTCPeerConnection();"
                " pc.addTransceiver('video', {direction}); pc.addTransceiver('audio', {direction});"
                " await pc.setLocalDescription(await pc.createOffer());"
                " await new Promise(done => { pc.onicegatheringstatechange = () =>"
                " pc.iceGatheringState === 'complete' && done(); setTimeout(done, 3000); });"
                " return pc.localDescription.sdp; }",
                direction,
            )
        await browser.close()
    server.close()
    for kind, text in sdp.items():
        _write("sdp", f"chromium-{kind}-offer.sdp", text.encode())
    return heads


def config() -> None:
    for path in sorted(ROOT.glob("deploy/**/*.toml")):
        _write("config", path.name, path.read_bytes())


def main() -> None:
    rtmp()
    amf3()
    flv_seeds()
    http()
    config()


if __name__ == "__main__":
    main()
