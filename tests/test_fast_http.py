"""The lean HTTP path for HLS (relay.http.fast): what it answers itself, what it hands to aiohttp, and
its bounds. Raw sockets, so that every byte on the wire is the test's choice. These tests run on both
asyncio's loop and uvloop (the server's loop in production); see conftest."""

from __future__ import annotations

import asyncio
import time

import pytest

from relay.http import fast as fast_http
from relay.http.fast import MAX_BUFFERED, parse_head
from tests.conftest import needs_ffmpeg, publish, rtmp_url, wait_live
from tests.test_hls import hls_url, parse

PLAIN = b"GET /live/a/index.m3u8 HTTP/1.1\r\nHost: x\r\nUser-Agent: hls.js"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (PLAIN, ("/live/a/index.m3u8", "", True, False)),
        (b"HEAD /live/a/index.m3u8?t=1&_HLS_msn=3 HTTP/1.1", ("/live/a/index.m3u8", "t=1&_HLS_msn=3", True, True)),
        (b"GET /live/a/index.m3u8 HTTP/1.1\r\nConnection: Close", ("/live/a/index.m3u8", "", False, False)),
        (b"GET /live/a/index.m3u8 HTTP/1.0", ("/live/a/index.m3u8", "", False, False)),
        (b"GET /live/a/index.m3u8 HTTP/1.0\r\nconnection: keep-alive", ("/live/a/index.m3u8", "", True, False)),
        (b"GET /live/a/index.m3u8 HTTP/1.1\r\nX-Empty:", ("/live/a/index.m3u8", "", True, False)),
    ],
)
def test_plain_requests_are_read(head: bytes, expected: tuple) -> None:
    request = parse_head(head)
    assert request is not None
    assert (request.path, request.query, request.keep_alive, request.head_only) == expected
    assert request.http10 == head.split(b"\r\n")[0].endswith(b"1.0")


@pytest.mark.parametrize(
    "head",
    [
        b"POST /live/a/index.m3u8 HTTP/1.1",
        b"get /live/a/index.m3u8 HTTP/1.1",
        b"GET /live/a/index.m3u8 HTTP/2.0",
        b"GET  /live/a/index.m3u8 HTTP/1.1",
        b"GET http://x/live/a/index.m3u8 HTTP/1.1",
        b"GET /live/%61/index.m3u8 HTTP/1.1",  # escapes: aiohttp decodes them
        b"GET /live/../a/index.m3u8 HTTP/1.1",  # dot segments: aiohttp normalizes them
        b"GET /live/./index.m3u8 HTTP/1.1",
        b"GET //a/index.m3u8 HTTP/1.1",
        b"GET /live/a/index.m3u8#x HTTP/1.1",
        b"GET /live/a/index.m3u8 HTTP/1.1\r\nContent-Length: 0",  # a body
        b"GET /live/a/index.m3u8 HTTP/1.1\r\nTransfer-Encoding: chunked",
        b"GET /live/a/index.m3u8 HTTP/1.1\r\nUpgrade: websocket",
        b"GET /live/a/index.m3u8 HTTP/1.1\r\nExpect: 100-continue",
        b"GET /live/a/index.m3u8 HTTP/1.1\r\nHost : x",  # space before the colon
        b"GET /live/a/index.m3u8 HTTP/1.1\r\nHost: x\r\n folded",  # obsolete line folding
        b"GET /live/a/index.m3u8 HTTP/1.1\nHost: x",  # bare LF
        b"GET /live/a/index.m3u8 HTTP/1.1\r\nHost: x\x00y",
        b"GET /live/a/index.m3u8 HTTP/1.1\r\nNo-Colon",
        b"GET /live/a/index.m3u8 HTTP/1.1" + b"\r\nX: y" * 101,
        b"GET /live/a/index.m3u8 HTTP/1.1\r\nHost: \xff\xfe \x7f",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello
    ],
)
def test_anything_else_is_left_to_aiohttp(head: bytes) -> None:
    assert parse_head(head) is None


# ---------------------------------------------------------------------------- on the wire


async def read_response(reader: asyncio.StreamReader, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    status_line, *fields = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")[:-2]
    headers = {name.lower(): value.strip() for name, _, value in (f.partition(":") for f in fields)}
    length = int(headers.get("content-length", "0"))
    body = b"" if head_only else await reader.readexactly(length)
    return int(status_line.split()[1]), headers, body


async def connect(server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.http_port)


def get(path: str, *fields: str, method: str = "GET", version: str = "1.1") -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/{version}", "Host: t", *fields, "", ""]).encode()


async def test_one_connection_goes_on_in_aiohttp_after_a_request_the_fast_path_does_not_read(server) -> None:
    reader, writer = await connect(server)
    # Pipelined in one write: two fast answers, a request for aiohttp, then HLS again (now by aiohttp).
    writer.write(
        get("/live/nope/index.m3u8")
        + get("/live/nope/index.m3u8", method="HEAD")
        + get("/healthz")
        + get("/live/nope/index.m3u8")
    )
    fast = await read_response(reader)
    head = await read_response(reader, head_only=True)
    health = await read_response(reader)
    slow = await read_response(reader)
    assert fast[0] == 404 and fast[2] == b"no live stream named live/nope\n"
    assert fast[1]["server"] == "minilive" and fast[1]["access-control-allow-origin"] == "*"
    assert head[0] == 404 and head[1]["content-length"] == str(len(fast[2]))
    assert health[0] == 200 and b"ok" in health[2].lower()
    assert "minilive" not in slow[1].get("server", "")  # aiohttp answered this one...
    assert (slow[0], slow[2]) == (fast[0], fast[2])  # ...the same way
    assert {k: v for k, v in slow[1].items() if k.startswith("access-control")} == {
        k: v for k, v in fast[1].items() if k.startswith("access-control")
    }
    writer.close()


async def test_connection_close_and_http_1_0_close_after_the_answer(server) -> None:
    for request in (get("/live/nope/index.m3u8", "Connection: close"), get("/live/nope/index.m3u8", version="1.0")):
        reader, writer = await connect(server)
        writer.write(request)
        status, headers, _ = await read_response(reader)
        assert status == 404 and headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()
    # An HTTP/1.0 client that asks to keep the connection is told that it is kept.
    reader, writer = await connect(server)
    for _ in range(2):
        writer.write(get("/live/nope/index.m3u8", "Connection: keep-alive", version="1.0"))
        status, headers, _ = await read_response(reader)
        assert status == 404 and headers["connection"] == "keep-alive"
    writer.close()


async def test_bad_requests_get_aiohttp_errors_and_the_server_serves_on(server) -> None:
    reader, writer = await connect(server)
    writer.write(get("/live/nope/index.m3u8") + b"GET /live/x/index.m3u8 HTTP/1.1\r\nHost: x\r\n bad fold\r\n\r\n")
    assert (await read_response(reader))[0] == 404
    assert (await read_response(reader))[0] == 400
    writer.close()
    # A head that never ends: past the limit, aiohttp answers it (and closes).
    reader, writer = await connect(server)
    writer.write(b"GET /live/x/index.m3u8 HTTP/1.1\r\nX: " + b"a" * (fast_http.MAX_HEAD + 100))
    status, _, _ = await asyncio.wait_for(read_response(reader), 5)
    assert status in (400, 431)
    writer.close()
    reader, writer = await connect(server)
    writer.write(get("/live/nope/index.m3u8"))
    assert (await read_response(reader))[0] == 404
    writer.close()


@needs_ffmpeg
async def test_live_hls_on_the_fast_path_and_through_aiohttp_is_the_same_and_bounded(server) -> None:
    publisher = await publish(rtmp_url(server, "f"), seconds=40)
    try:
        await wait_live(server, "f")
        path = hls_url(server, "f").split(str(server.http_port), 1)[1]
        reader, writer = await connect(server)
        for _ in range(100):
            writer.write(get(path))
            status, headers, body = await read_response(reader)
            assert status == 200
            info = parse(body.decode())
            if info["segments"]:
                break
            await asyncio.sleep(0.3)
        else:
            raise AssertionError("no segment in 30 s")
        assert headers["content-type"] == "application/vnd.apple.mpegurl"
        assert headers["cache-control"] == "no-cache"
        segment = path.rsplit("/", 1)[0] + "/" + info["segments"][0][0]
        part = path.rsplit("/", 1)[0] + "/" + info["parts"][0].split('URI="')[1].split('"')[0]

        # The same segment and part, fast and (after /healthz hands the connection over) by aiohttp.
        answers = []
        for first in (b"", get("/healthz")):
            r, w = await connect(server)
            w.write(first + get(segment) + get(part))
            if first:
                await read_response(r)
            answers.append([await read_response(r), await read_response(r)])
            w.close()
        for fast, slow in zip(*answers, strict=True):
            assert fast[0] == slow[0] == 200 and fast[2] == slow[2] and len(fast[2]) > 1000
            for name in ("content-type", "cache-control", "content-length", "access-control-allow-origin"):
                assert fast[1][name] == slow[1][name]
        assert answers[0][0][1]["content-type"] == "video/mp2t"
        assert answers[0][0][1]["cache-control"] == "public, max-age=3600, immutable"

        # A client that pipelines requests and never reads holds one response in the server at most.
        _, hog = await connect(server)
        hog.write(get(segment) * 2000)
        await asyncio.sleep(1.0)
        site = server.http_site
        assert site is not None
        (hogged,) = [c for c in site.connections if c._buffer]
        high_water = hogged.transport.get_write_buffer_limits()[1]
        assert hogged.transport.get_write_buffer_size() <= high_water + len(answers[0][0][2])
        assert len(hogged._buffer) <= MAX_BUFFERED + 256 * 1024  # reading stopped
        writer.write(get(path))  # everyone else is served meanwhile
        assert (await asyncio.wait_for(read_response(reader), 5))[0] == 200

        # A blocking reload whose client leaves: its wait ends with the connection.
        playlist = server.hls.packagers["live/f"].playlist
        _, blocked = await connect(server)
        blocked.write(get(f"{path}?_HLS_msn={playlist.last_msn + 2}"))
        for _ in range(50):
            if playlist._waiters:
                break
            await asyncio.sleep(0.02)
        assert playlist._waiters
        # Idle connections close after the keep-alive time; one with a request in flight does not.
        closed = site.close_idle(time.monotonic() + site.keepalive_seconds + 1)
        assert closed >= 2  # the first connection and the hog
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert playlist._waiters
        blocked.close()
        for _ in range(50):
            if not playlist._waiters:
                break
            await asyncio.sleep(0.02)
        assert not playlist._waiters
        hog.close()
        writer.close()
    finally:
        await publisher.stop()
