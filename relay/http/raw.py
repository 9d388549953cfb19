"""Where a streaming response leaves aiohttp: the one place that relies on how aiohttp works inside.

HTTP-FLV and WebSocket-FLV viewers are written by the hub straight to the connection's transport (one
merged write per batch for all of them, see relay.hub), framed by their output format: HTTP/1.1 chunks,
nothing (close-delimited), or WebSocket binary frames. aiohttp has no public way to hand a connection
over, so after the response headers this module takes the transport, and relies on two facts:

- ``StreamResponse._length_check = False`` lets an HTTP/1.0 response go out with neither a length nor
  chunking, its body ending when the connection closes;
- with chunked encoding enabled, aiohttp's writer sends nothing of its own until ``write_eof`` (the
  last chunk), so chunks that others write between are framed right.

``tests/test_aiohttp_contract.py`` checks both against the installed aiohttp and fails loudly, naming
this module, when a release changes them; pyproject.toml keeps aiohttp to the minor versions checked.
"""

from __future__ import annotations

import asyncio

from aiohttp import web


class CloseDelimitedResponse(web.StreamResponse):
    """A response whose body ends when the connection closes (no length, no chunking)."""

    _length_check = False


# The headers aiohttp's WebSocket handshake reads, and may quote in its refusal.
_HANDSHAKE_HEADERS = ("Upgrade", "Connection", "Sec-WebSocket-Version", "Sec-WebSocket-Key", "Sec-WebSocket-Protocol")


def check_websocket_handshake(request: web.Request) -> None:
    """Raise 400 for WebSocket handshake headers that are not ASCII. aiohttp answers 400 to bad ones, but
    with non-ASCII bytes in them its handshake raises instead: base64-decoding the key raises ValueError,
    and a refusal quoting the version cannot be encoded; each became a 500 and a traceback (found by
    bench/netfuzz.py). Call it before ``WebSocketResponse.prepare``."""
    for name in _HANDSHAKE_HEADERS:
        if not request.headers.get(name, "").isascii():
            raise web.HTTPBadRequest(text=f"the WebSocket handshake's {name} header must be ASCII\n")


async def take_transport(request: web.Request, response: web.StreamResponse) -> asyncio.Transport | None:
    """Send ``response``'s headers, then give the transport its body is to be written to (framed by the
    caller); None when the client is already gone."""
    try:
        await response.prepare(request)
    except ConnectionError:
        # The viewer left while the handler waited (play_wait_seconds): aiohttp's finish_response takes
        # a ConnectionError as the client gone, quietly; raised out of the handler it is a traceback.
        return None
    transport = request.transport
    if transport is None or transport.is_closing():
        return None
    return transport
