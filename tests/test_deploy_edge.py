"""deploy/nginx-edge.conf: Debian's nginx accepts it, and in front of a real server it passes every live
protocol through TLS (HTTPS-FLV, WSS-FLV, RTMPS, plain RTMP, the API) and serves many HLS players of a
part or a playlist with one request to the node."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from api.server import Server
from tests.conftest import free_port, needs_ffmpeg, probe_streams, publish, rtmp_url, wait_live
from tests.deploy_kit import EDGE

NGINX = shutil.which("nginx")
OPENSSL = shutil.which("openssl")
MODULES = (Path("/usr/lib/nginx/modules"), Path("/usr/share/nginx/modules"))
STREAM_MODULE = next((d / "ngx_stream_module.so" for d in MODULES if (d / "ngx_stream_module.so").exists()), None)
PLAYERS = 12  # players asking for the same thing at once

pytestmark = [
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed: scripts/dev test installs it"),
    pytest.mark.skipif(
        STREAM_MODULE is None,
        reason="ngx_stream_module (RTMP, RTMPS) is not installed: libnginx-mod-stream, which scripts/dev test installs",
    ),
    pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed: scripts/dev test installs it"),
]


@dataclass
class Edge:
    https: int
    rtmp: int
    rtmps: int
    folder: Path

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.https}"


def local_config(folder: Path, http_port: int, rtmp_port: int) -> tuple[Path, Edge]:
    """The edge's config with this machine's paths: a certificate made here, files in ``folder``, the
    listeners on free loopback ports, and one node (``node1``, at the given ports) instead of two."""
    cert, key = folder / "fullchain.pem", folder / "privkey.pem"
    request = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"]
    subject = ["-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)]
    subprocess.run([str(OPENSSL), *request, *subject], check=True, capture_output=True)
    edge = Edge(free_port(), free_port(), free_port(), folder)
    replacements = {
        "include /etc/nginx/modules-enabled/*.conf;": f"load_module {STREAM_MODULE};",
        "worker_processes auto;": "worker_processes 1;",
        "pid /run/nginx.pid;": f"pid {folder}/nginx.pid;",
        "/var/log/nginx/error.log": f"{folder}/error.log",
        "/etc/nginx/tls/fullchain.pem": str(cert),
        "/etc/nginx/tls/privkey.pem": str(key),
        "/var/cache/nginx/minilive": str(folder / "cache"),
        "listen 443 ": f"listen 127.0.0.1:{edge.https} ",
        "listen 1935 ": f"listen 127.0.0.1:{edge.rtmp} ",
        "listen 1936 ": f"listen 127.0.0.1:{edge.rtmps} ",
        "server node1:8080;": f"server 127.0.0.1:{http_port};",
        "server node2:8080;": "",
        "server node1:1935;": f"server 127.0.0.1:{rtmp_port};",
        "server node2:1935;": "",
    }
    text = EDGE.read_text()
    for old, new in replacements.items():
        assert old in text, f"{EDGE.name} no longer has {old!r}: bring this test's rewrite up to date"
        text = text.replace(old, new)
    if os.geteuid() == 0:  # the workers must reach the cache in pytest's private temporary folder
        text = "user root;\n" + text
    conf = folder / "nginx.conf"
    conf.write_text(text)
    return conf, edge


def nginx(conf: Path, *args: str) -> list[str]:
    return [str(NGINX), "-p", str(conf.parent), "-e", str(conf.parent / "error.log"), "-c", str(conf), *args]


def test_nginx_accepts_the_edge_config(tmp_path):
    conf, _ = local_config(tmp_path, free_port(), free_port())
    result = subprocess.run(nginx(conf, "-t"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    # Anything nginx warns about, not only what stops it. nginx 1.25 deprecates `listen ... http2` for
    # `http2 on`, which Debian 12's nginx (1.22) does not know yet.
    warnings = [line for line in result.stderr.splitlines() if "[warn]" in line and "http2" not in line]
    assert not warnings, result.stderr


def wait_listening(process: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"nginx exited with {process.returncode}: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nginx did not listen on {port} within {timeout} s")


@dataclass
class Live:
    server: Server
    edge: Edge
    session: aiohttp.ClientSession


@pytest.fixture
async def live(make_server, tmp_path) -> AsyncIterator[Live]:
    """A server with stream live/demo being published, and the edge in front of it."""
    server = await make_server()
    publisher = await publish(rtmp_url(server, "demo"), seconds=60)
    conf, edge = local_config(tmp_path, server.http_port, server.rtmp_port)
    process = subprocess.Popen(nginx(conf, "-g", "daemon off;"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(process, edge.https, tmp_path / "error.log")
        await wait_live(server, "demo")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False, limit=0)) as session:
            yield Live(server, edge, session)
    finally:
        process.terminate()
        process.wait(10)
        await publisher.stop()


@needs_ffmpeg
async def test_edge_passes_every_live_protocol_through_tls(live):
    base = live.edge.base
    async with live.session.get(f"{base}/healthz") as response:
        assert response.status == 200 and (await response.json())["status"] == "ok"

    async with live.session.get(f"{base}/live/demo.flv") as response:
        assert response.status == 200
        head = await response.content.readexactly(13)
        assert head[:3] == b"FLV" and head[4] == 0x05, "an FLV header with audio and video"
        await response.content.readexactly(64 * 1024)  # and the live stream after it

    async with live.session.ws_connect(f"wss://127.0.0.1:{live.edge.https}/live/demo.flv") as ws:
        message = await ws.receive(timeout=10)
        assert message.type == aiohttp.WSMsgType.BINARY and message.data[:3] == b"FLV"

    for url in (f"rtmps://127.0.0.1:{live.edge.rtmps}/live/demo", f"rtmp://127.0.0.1:{live.edge.rtmp}/live/demo"):
        codecs = sorted(stream["codec_name"] for stream in await probe_streams(url))
        assert codecs == ["aac", "h264"], url


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, str, bytes]:
    async with session.get(url) as response:
        return response.status, response.headers.get("X-Cache", ""), await response.read()


async def at_once(session: aiohttp.ClientSession, url: str) -> list[tuple[int, str, bytes]]:
    """``PLAYERS`` requests for ``url`` sent together."""
    return await asyncio.gather(*(fetch(session, url) for _ in range(PLAYERS)))


def one_request_served_all(answers: list[tuple[int, str, bytes]]) -> None:
    assert {status for status, _, _ in answers} == {200}, answers
    assert len({body for _, _, body in answers}) == 1, "every player got the same bytes"
    cache = sorted(state for _, state, _ in answers)
    assert cache == ["HIT"] * (PLAYERS - 1) + ["MISS"], f"one request to the node for all players: {cache}"


@needs_ffmpeg
async def test_edge_serves_many_hls_players_with_one_request_to_the_node(live):
    playlist_url = f"{live.edge.base}/live/demo/index.m3u8"
    status, cache, body = await fetch(live.session, playlist_url)
    assert status == 200 and cache == "MISS"
    playlist = body.decode()

    # A segment: cached as the node says (immutable), the second player gets the edge's copy.
    segment = re.findall(r"^[0-9a-f]{8}-\d+\.ts$", playlist, re.MULTILINE)[0]
    assert [await fetch(live.session, f"{live.edge.base}/live/demo/{segment}") for _ in range(2)][1][1] == "HIT"

    # The part the playlist hints at: held by the node until it exists, one request for all players.
    hint = re.search(
        r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="(?P<file>[0-9a-f]{8}-(?P<msn>\d+)\.(?P<part>\d+)\.ts)"', playlist
    )
    assert hint, playlist
    one_request_served_all(await at_once(live.session, f"{live.edge.base}/live/demo/{hint['file']}"))

    # LL-HLS blocking reload for the part after it: its own cache entry, one request for all players.
    msn, part = int(hint["msn"]), int(hint["part"]) + 1
    blocking = await at_once(live.session, f"{playlist_url}?_HLS_msn={msn}&_HLS_part={part}")
    one_request_served_all(blocking)
    assert f"-{msn}.{part}.ts" in blocking[0][2].decode() or f"-{msn + 1}.0.ts" in blocking[0][2].decode()
