"""Temporary media (/cgi-bin/media/upload): image checks, files on disk, serving, expiry.

An upload is checked by its bytes, not its name or Content-Type: the header of a PNG, JPEG, GIF or
WebP file gives the format and the dimensions. Files live under ``DATA_DIR/media/APPID/`` and are
served at ``/media/{media_id}``, the URL that getliveinfo gives for cover, share and feeds images.
A media_id may be used in create/edit for ``media_ttl_seconds`` (three days, as WeChat's temporary
material); a room that uses it pins it, and pinned files are kept and served for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from api import errors
from api.errors import ApiError
from api.keys import MEDIA
from api.models import App, Media
from api.store.base import RoomStore

log = logging.getLogger("minilive.media")

MAX_BYTES = 10 * 1024 * 1024
MAX_SIDE = 8192
MEDIA_ID_PATTERN = r"[A-Za-z0-9_-]{8,128}"
CLEANUP_INTERVAL_SECONDS = 3600.0


@dataclass(slots=True, frozen=True)
class ImageInfo:
    ext: str
    content_type: str
    width: int
    height: int


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the size.
_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def image_info(data: bytes) -> ImageInfo | None:
    """Format and dimensions from the file header; None if it is none of PNG, JPEG, GIF, WebP."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            width, height = struct.unpack_from(">II", data, 16)
            return ImageInfo("png", "image/png", width, height)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack_from("<HH", data, 6)
            return ImageInfo("gif", "image/gif", width, height)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp(data)
        if data[:3] == b"\xff\xd8\xff":
            return _jpeg(data)
    except struct.error:  # truncated header
        return None
    return None


def _webp(data: bytes) -> ImageInfo | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy: key frame start code, then 14-bit sizes
        width, height = struct.unpack_from("<HH", data, 26)
        return ImageInfo("webp", "image/webp", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L" and data[20:21] == b"\x2f":  # lossless: 14-bit sizes minus one
        (bits,) = struct.unpack_from("<I", data, 21)
        return ImageInfo("webp", "image/webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X" and len(data) >= 30:  # extended: 24-bit canvas sizes minus one
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return ImageInfo("webp", "image/webp", width, height)
    return None


def _jpeg(data: bytes) -> ImageInfo | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _JPEG_SOF:
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return ImageInfo("jpg", "image/jpeg", width, height)
        pos += 2 + length
    return None


class MediaLibrary:
    def __init__(
        self, store: RoomStore, data_dir: Path, ttl_seconds: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.data_dir = data_dir
        self.ttl_seconds = ttl_seconds  # how long an upload may be used in create/edit
        self.clock = clock

    async def upload(self, app: App, media_type: str, data: bytes) -> Media:
        """Check an upload, keep its file and record it (40004/40005/40006/40009 otherwise)."""
        if media_type != "image":
            raise ApiError(errors.INVALID_MEDIA_TYPE, f"type {media_type!r} is not supported: only image")
        if len(data) > MAX_BYTES:
            raise ApiError(errors.INVALID_FILE_SIZE, f"an image may be at most {MAX_BYTES // (1024 * 1024)} MB")
        info = image_info(data)
        if info is None or not info.width or not info.height:
            raise ApiError(errors.INVALID_FILE_TYPE, "the file is not a PNG, JPEG, GIF or WebP image")
        if info.width > MAX_SIDE or info.height > MAX_SIDE:
            raise ApiError(
                errors.INVALID_IMAGE_SIZE,
                f"the image is {info.width}x{info.height}; at most {MAX_SIDE}x{MAX_SIDE}",
            )
        media_id = secrets.token_urlsafe(48)
        path = Path("media", app.appid, f"{media_id}.{info.ext}")
        await asyncio.to_thread(self._write, self.data_dir / path, data)
        now = self.clock()
        media = Media(
            media_id=media_id,
            appid=app.appid,
            type=media_type,
            content_type=info.content_type,
            size=len(data),
            width=info.width,
            height=info.height,
            path=str(path),
            created_at=now,
            expires_at=now + self.ttl_seconds,
        )
        await self.store.put_media(media)
        return media

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    async def cleanup(self) -> int:
        """Delete expired media that no room uses (file and record); the number deleted."""
        deleted = 0
        for media in await self.store.expired_media(self.clock()):
            if media.pinned:
                continue
            (self.data_dir / media.path).unlink(missing_ok=True)
            await self.store.delete_media(media.media_id)
            deleted += 1
        if deleted:
            log.info("deleted %d expired media", deleted)
        return deleted

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: run ``cleanup`` periodically while the application runs."""
        task = asyncio.create_task(self._cleaner())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _cleaner(self) -> None:
        while True:
            try:
                await self.cleanup()
            except Exception:
                log.exception("media cleanup failed")
            await asyncio.sleep(CLEANUP_INTERVAL_SECONDS)

    async def file(self, media_id: str) -> tuple[Path, Media] | None:
        """The file of a media_id that may be served (not expired, or used by a room), if any."""
        media = await self.store.get_media(media_id)
        if media is None or (not media.pinned and media.expires_at <= self.clock()):
            return None
        path = self.data_dir / media.path
        return (path, media) if path.is_file() else None


async def serve(request: web.Request) -> web.StreamResponse:
    found = await request.app[MEDIA].file(request.match_info["media_id"])
    if found is None:
        raise web.HTTPNotFound(text="no such media")
    path, media = found
    headers = {"Content-Type": media.content_type, "Cache-Control": "public, max-age=86400"}
    return web.FileResponse(path, headers=headers)


def routes() -> list[web.RouteDef]:
    # The id pattern leaves no room for path tricks; the file path comes from our own record.
    return [web.get(f"/media/{{media_id:{MEDIA_ID_PATTERN}}}", serve)]
