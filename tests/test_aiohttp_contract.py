"""What relay/http/raw.py relies on in aiohttp, checked against the installed release: when one of these
fails, aiohttp changed underneath HTTP-FLV and WebSocket-FLV, and relay/http/raw.py must follow."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from relay.http.raw import CloseDelimitedResponse, take_transport

CHANGED = f"aiohttp {aiohttp.__version__} changed what relay/http/raw.py relies on: adapt it, then the pin in pyproject"


async def serve(handler) -> tuple[web.AppRunner, int]:  # type: ignore[no-untyped-def]
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def raw_get(port: int, version: str) -> tuple[bytes, bytes]:
    """(response head, body until the server closes) of a plain GET."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET / HTTP/{version}\r\nHost: x\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


async def test_a_close_delimited_body_has_neither_length_nor_chunks() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = CloseDelimitedResponse(headers={"Content-Type": "video/x-flv"})
        response.force_close()
        transport = await take_transport(request, response)
        assert transport is not None
        transport.write(b"FLV\x01 as it comes")
        transport.close()
        return response

    runner, port = await serve(handler)
    try:
        for version in ("1.0", "1.1"):
            head, body = await raw_get(port, version)
            assert head.split(b"\r\n")[0].endswith(b" 200 OK"), head
            fields = head.lower()
            assert b"content-length" not in fields and b"transfer-encoding" not in fields, CHANGED
            assert body == b"FLV\x01 as it comes", CHANGED
    finally:
        await runner.cleanup()


async def test_chunks_written_beside_aiohttp_are_framed_right() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "video/x-flv"})
        response.enable_chunked_encoding()
        transport = await take_transport(request, response)
        assert transport is not None
        transport.write(b"5\r\nhello\r\n")
        transport.write(b"6\r\n world\r\n")
        await response.write_eof()
        response.force_close()
        return response

    runner, port = await serve(handler)
    try:
        head, body = await raw_get(port, "1.1")
        assert b"transfer-encoding: chunked" in head.lower(), CHANGED
        assert body == b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", CHANGED
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/") as response:
            assert await response.read() == b"hello world", CHANGED
    finally:
        await runner.cleanup()


async def test_websocket_frames_written_beside_aiohttp_arrive_and_it_still_closes_cleanly() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True)
        transport = await take_transport(request, ws)
        assert transport is not None
        transport.write(b"\x82\x05hello")  # an unmasked binary frame, as the hub writes them
        await ws.receive()  # the client's close
        return ws

    runner, port = await serve(handler)
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(f"http://127.0.0.1:{port}/") as ws:
            message = await ws.receive(timeout=5)
            assert (message.type, message.data) == (aiohttp.WSMsgType.BINARY, b"hello"), CHANGED
            await ws.close()
            assert ws.closed
    finally:
        await runner.cleanup()
