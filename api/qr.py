"""Share QR codes: a room's mini-program page path as a PNG (getsharedcode's cdnUrl and posterUrl).

The ``qrcode`` package gives the module matrix; the PNG (1-bit grayscale, scaled modules, the
standard four-module quiet zone) is written here with zlib, so no imaging library is needed.
"""

from __future__ import annotations

import asyncio
import functools
import struct
import zlib
from urllib.parse import quote

import qrcode
from aiohttp import web

from api.keys import ROOMS
from api.models import Room
from api.urls import page_path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SCALE = 8  # pixels per module: a version-10 code is 520 px wide
QUIET_ZONE = 4  # modules of white around the code, as the standard asks


def matrix(text: str) -> list[list[bool]]:
    """The code's modules (True = dark), quiet zone included."""
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=QUIET_ZONE)
    code.add_data(text)
    code.make(fit=True)
    return code.get_matrix()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.lru_cache(maxsize=256)
def png(text: str, scale: int = SCALE) -> bytes:
    """A QR code of ``text`` as a square 1-bit grayscale PNG, ``scale`` pixels per module."""
    modules = matrix(text)
    size = len(modules) * scale
    rows = []
    for row in modules:
        bits = "".join(("0" if dark else "1") * scale for dark in row)  # 0 is black in grayscale
        bits += "0" * (-len(bits) % 8)
        line = b"\x00" + int(bits, 2).to_bytes(len(bits) // 8, "big")  # filter type 0, then the pixels
        rows.append(line * scale)
    header = struct.pack(">IIBBBBB", size, size, 1, 0, 0, 0, 0)  # bit depth 1, grayscale, no interlace
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + _chunk(b"IEND", b"")
    )


def image_url(http_base: str, roomid: int, params: str = "", image: str = "qrcode") -> str:
    """Where the share code of a room (with getsharedcode's custom params) is served, or its poster
    (``image="poster"``)."""
    query = f"?params={quote(params, safe='')}" if params else ""
    return f"{http_base}/{image}/{roomid}.png{query}"


async def shared_room(request: web.Request) -> tuple[Room, str]:
    """The room of a share image's URL and the page its code leads to (404 for no such room). No
    token: these are image URLs that the mini-program and share posters load."""
    room = await request.app[ROOMS].find(int(request.match_info["roomid"]))
    if room is None:
        raise web.HTTPNotFound(text="no such room")
    return room, page_path(room.roomid, request.query.get("params", ""))


async def share_code(request: web.Request) -> web.Response:
    _, page = await shared_room(request)
    body = await asyncio.to_thread(png, page)
    return web.Response(body=body, content_type="image/png", headers={"Cache-Control": "public, max-age=86400"})


def routes() -> list[web.RouteDef]:
    return [web.get(r"/qrcode/{roomid:\d{1,12}}.png", share_code)]
