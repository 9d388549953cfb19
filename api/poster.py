"""Share posters: getsharedcode's posterUrl, an image a mini-program saves or shares to Moments.

A poster is the room's cover, its title, its planned start time (in the configured time zone) and the
room's share QR code (``api.qr``), composed with Pillow. Titles are in Chinese more often than not, so
a CJK font from Debian is used (``fonts-wqy-zenhei``, which ``scripts/dev`` installs, or Noto CJK);
without one the poster is still made, with Pillow's own font (CJK characters then show as boxes).
Posters are made off the event loop and the last ``CACHED`` are kept, keyed by everything drawn.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from aiohttp import web
from PIL import Image, ImageDraw, ImageFont, ImageOps

from api import qr
from api.keys import MEDIA, URLS

log = logging.getLogger("minilive.poster")

WIDTH, HEIGHT = 600, 1000
COVER_HEIGHT = 600
MARGIN = 30
QR_SIDE = 220  # at most; the code is drawn at a whole number of pixels per module
CACHED = 64  # posters kept (each some 100-300 kB)
# A cover larger than this is not decoded (an 8192x8192 upload would take 256 MB as RGBA): the
# poster gets a plain background instead.
MAX_COVER_PIXELS = 4096 * 4096
FONTS = (
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf"),
)
CAPTION = "长按或扫码进入直播间"


@dataclass(slots=True, frozen=True)
class PosterSpec:
    """Everything a poster shows: equal specs make the same poster (the cache key)."""

    title: str
    start_time: int
    time_zone: str
    cover: str  # the cover file's path ("" if it is gone)
    page: str  # what the QR code encodes: the room's plugin page with its custom params


@functools.cache
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in FONTS:
        if path.exists():
            return ImageFont.truetype(str(path), size)
    log.warning("no CJK font in %s: posters use Pillow's font (apt-get install fonts-wqy-zenhei)", FONTS[0].parent)
    return ImageFont.load_default(size)


def _cover(path: str) -> Image.Image | None:
    if not path:
        return None
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_COVER_PIXELS:
                return None
            return ImageOps.fit(image.convert("RGB"), (WIDTH, COVER_HEIGHT))
    except (OSError, ValueError, Image.DecompressionBombError):
        log.warning("cover %s cannot be read for a poster", path)
        return None


def _lines(draw: ImageDraw.ImageDraw, text: str, face: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> list[str]:
    """``text`` broken into at most two lines that fit the width, the second shortened with an ellipsis."""
    width = WIDTH - 2 * MARGIN
    lines, line = [], ""
    for ch in text:
        if draw.textlength(line + ch, font=face) > width:
            lines.append(line)
            line = ""
        line += ch
    lines.append(line)
    if len(lines) > 2:
        second = lines[1]
        while second and draw.textlength(second + "…", font=face) > width:
            second = second[:-1]
        lines = [lines[0], second + "…"]
    return lines


@functools.lru_cache(maxsize=CACHED)
def render(spec: PosterSpec) -> bytes:
    """The poster as a PNG, ``WIDTH`` x ``HEIGHT``."""
    poster = Image.new("RGB", (WIDTH, HEIGHT), "white")
    cover = _cover(spec.cover)
    if cover is None:
        poster.paste((40, 40, 48), (0, 0, WIDTH, COVER_HEIGHT))
    else:
        poster.paste(cover, (0, 0))
    draw = ImageDraw.Draw(poster)
    y = COVER_HEIGHT + 24
    title = font(34)
    for line in _lines(draw, spec.title, title):
        draw.text((MARGIN, y), line, fill=(20, 20, 20), font=title)
        y += 44
    start = datetime.fromtimestamp(spec.start_time, ZoneInfo(spec.time_zone)).strftime("%Y-%m-%d %H:%M")
    draw.text((MARGIN, y + 4), f"开播时间 {start}", fill=(110, 110, 110), font=font(24))
    modules = len(qr.matrix(spec.page))
    scale = max(1, QR_SIDE // modules)
    code = Image.open(io.BytesIO(qr.png(spec.page, scale)))
    top = HEIGHT - MARGIN - code.height
    poster.paste(code.convert("RGB"), (MARGIN, top))
    draw.text((MARGIN + code.width + 20, top + code.height // 2 - 12), CAPTION, fill=(110, 110, 110), font=font(22))
    out = io.BytesIO()
    poster.save(out, "PNG", optimize=True)
    return out.getvalue()


async def serve(request: web.Request) -> web.Response:
    room, page = await qr.shared_room(request)
    found = await request.app[MEDIA].file(room.cover_img) if room.cover_img else None
    spec = PosterSpec(
        title=room.name,
        start_time=room.start_time,
        time_zone=request.app[URLS].settings.time_zone,
        cover=str(found[0]) if found else "",
        page=page,
    )
    body = await asyncio.to_thread(render, spec)
    # Short-lived: an edit of the room changes its poster.
    return web.Response(body=body, content_type="image/png", headers={"Cache-Control": "public, max-age=300"})


def routes() -> list[web.RouteDef]:
    return [web.get(r"/poster/{roomid:\d{1,12}}.png", serve)]
