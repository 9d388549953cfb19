"""The benchmark's HLS player: a light client that follows one live media playlist and fetches what it adds.

Three ways to follow a playlist:

- ``poll``: plain HLS. GET the playlist every ``poll`` seconds on average; fetch each segment not
  fetched yet. Works with any server. The intervals vary at random by half either way, so that the
  polls do not keep one phase against the publisher's frame clock.
- ``block``: LL-HLS blocking reload at segment level. Ask for ``?_HLS_msn=NEXT``, which the server
  answers once segment NEXT is complete; fetch it; repeat.
- ``parts``: LL-HLS blocking reload at part level. Ask for the preload-hinted part
  (``?_HLS_msn=M&_HLS_part=P``); fetch each new part.

A client that measures latency also reads the timestamps of the first and last video PES of every
part or segment it fetches (:func:`video_span`): the DTS in milliseconds is the publisher's RTMP
timestamp plus a constant offset, which the client learns from the stream's first segment (whose
first frame is the publisher's first frame). The time from the publisher's send of a frame to the
playlist response that first lists the part or segment holding it is that frame's availability.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import aiohttp

TS_SIZE = 188
BLOCKING_RETRY = 0.05  # seconds before asking again after a failed request in a blocking mode

_HINT = re.compile(r'#EXT-X-PRELOAD-HINT:.*URI="[^"]*-(\d+)\.(\d+)\.ts"')


# ------------------------------------------------------------------ playlists and MPEG-TS


@dataclass(slots=True)
class Item:
    """A segment (``part`` None) or a partial segment listed in a media playlist."""

    msn: int
    part: int | None
    uri: str
    duration: float


@dataclass(slots=True)
class MediaPlaylist:
    segments: list[Item]
    parts: list[Item]
    hint: tuple[int, int] | None  # (msn, part) of EXT-X-PRELOAD-HINT


def parse_playlist(text: str) -> MediaPlaylist:
    """The segments, parts and preload hint of a live media playlist (RFC 8216 and LL-HLS)."""
    msn = 0
    duration = 0.0
    part = 0
    segments: list[Item] = []
    parts: list[Item] = []
    hint = None
    for line in text.splitlines():
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            msn = int(line.split(":", 1)[1])
        elif line.startswith("#EXTINF:"):
            duration = float(line[8:].split(",", 1)[0])
        elif line.startswith("#EXT-X-PART:"):
            attrs = dict(re.findall(r'([A-Z-]+)=("[^"]*"|[^,]*)', line[12:]))
            parts.append(Item(msn, part, attrs["URI"].strip('"'), float(attrs["DURATION"])))
            part += 1
        elif line.startswith("#EXT-X-PRELOAD-HINT:"):
            match = _HINT.match(line)
            hint = (int(match[1]), int(match[2])) if match else None
        elif line and not line.startswith("#"):
            segments.append(Item(msn, None, line, duration))
            msn += 1
            part = 0
    return MediaPlaylist(segments, parts, hint)


def video_span(data: bytes) -> tuple[int, int] | None:
    """Milliseconds (DTS, or PTS without DTS, over 90) of the first and last video PES in MPEG-TS ``data``."""
    first = last = None
    for pos in range(0, len(data) - TS_SIZE + 1, TS_SIZE):
        if data[pos] != 0x47 or not data[pos + 1] & 0x40:  # no sync, or no PES starts here
            continue
        start = pos + 4
        if data[pos + 3] & 0x20:  # adaptation field
            start += 1 + data[pos + 4]
        pes = data[start : pos + TS_SIZE]
        if len(pes) < 19 or pes[:3] != b"\x00\x00\x01" or pes[3] & 0xF0 != 0xE0 or not pes[7] & 0x80:
            continue  # not a video PES with a PTS
        stamp = pes[14:19] if pes[7] & 0x40 else pes[9:14]
        value = ((stamp[0] >> 1) & 0x07) << 30 | stamp[1] << 22 | (stamp[2] >> 1) << 15 | stamp[3] << 7 | stamp[4] >> 1
        last = value // 90
        if first is None:
            first = last
    return None if first is None or last is None else (first, last)


# ------------------------------------------------------------------ the client


@dataclass(slots=True)
class HlsResult:
    mode: str
    url: str
    playlists: int = 0  # playlist responses in the window
    items: int = 0  # segments (parts in mode "parts") fetched in the window
    media_seconds: float = 0.0  # their playlist durations
    window_bytes: int = 0
    requests_failed: int = 0  # after the first playlist arrived
    error: str | None = None  # the last failure
    # Latency clients only: DTS offset (TS ms minus RTMP ms), and per item listed in the window:
    # [msn, part, ms from the send of its first video frame, ms from the send of its last one].
    dts_offset_ms: int | None = None
    latency: list[list[Any]] = field(default_factory=list)
    unmatched: int = 0  # items whose timestamps matched no frame the publisher sent


class HlsClient:
    """Follows the playlist at ``url`` from ``start`` until the window's end; see the module's doc."""

    def __init__(
        self,
        url: str,
        mode: str,
        poll: float,
        start: float,
        measure: float,
        end: float,
        video_sent: dict[int, float] | None = None,
    ) -> None:
        self.url = url
        self.mode = mode
        self.poll = poll
        self.start = start
        self.measure = measure
        self.end = end
        # The publisher's send times by RTMP timestamp (latency clients only; in insertion order).
        self.video_sent = video_sent
        self.result = HlsResult(mode, url)
        self._fetched = -1  # the last segment fetched (modes poll and block)
        self._parts_seen: set[tuple[int, int]] = set()
        self._next_part = (0, 0)  # mode parts: what to ask for next
        self._playlists = 0
        self._align_pending = video_sent is not None  # the first item fetched is yet to come

    def _in_window(self, now: float) -> bool:
        return self.measure <= now < self.end

    async def run(self, session: aiohttp.ClientSession) -> None:
        while (left := self.start - time.monotonic()) > 0:
            await asyncio.sleep(left)
        while (asked_at := time.monotonic()) < self.end:
            query = self._query()
            status = 0
            try:
                async with session.get(self.url + query) as response:
                    body = await response.read()
                    status = response.status
                listed_at = time.monotonic()
                if status == 200:
                    await self._on_playlist(session, parse_playlist(body.decode()), listed_at)
                # A blocking request the server could not satisfy in time (503) is simply asked again;
                # before the stream has a playlist, 404 is expected too.
                elif not (status == 503 and query) and not (status == 404 and not self._playlists):
                    self._failed(f"playlist: HTTP {status}")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                self._failed(f"playlist: {type(exc).__name__}: {exc}")
            if self.mode == "poll" or not self._playlists:
                interval = random.uniform(0.5, 1.5) * self.poll
                await asyncio.sleep(max(0.0, asked_at + interval - time.monotonic()))
            elif status != 200:
                await asyncio.sleep(BLOCKING_RETRY)

    def _query(self) -> str:
        if not self._playlists or self.mode == "poll":
            return ""
        if self.mode == "block":
            return f"?_HLS_msn={self._fetched + 1}"
        msn, part = self._next_part
        return f"?_HLS_msn={msn}&_HLS_part={part}"

    def _failed(self, message: str) -> None:
        if self._playlists:  # before the first playlist, failures are the server still starting
            self.result.requests_failed += 1
        self.result.error = message

    async def _on_playlist(self, session: aiohttp.ClientSession, playlist: MediaPlaylist, listed_at: float) -> None:
        first = not self._playlists
        self._playlists += 1
        if self._in_window(listed_at):
            self.result.playlists += 1
        if self.mode == "parts":
            new = [p for p in playlist.parts if (p.msn, p.part) not in self._parts_seen]
            self._parts_seen.update((p.msn, p.part) for p in new)
            last = playlist.parts[-1] if playlist.parts else None
            self._next_part = playlist.hint or ((last.msn, (last.part or 0) + 1) if last else (0, 0))
        else:
            new = [s for s in playlist.segments if s.msn > self._fetched]
            if first and self.video_sent is None:
                new = new[-1:]  # a player joins at the live edge
            if new:
                self._fetched = new[-1].msn
        if first and self.video_sent is not None:
            # What the first playlist lists was listed before we looked: no latency from it, but its
            # first item tells how the server's timestamps relate to the publisher's.
            for item in new[:1]:
                await self._fetch(session, item, None)
            return
        for item in new:
            await self._fetch(session, item, listed_at)

    async def _get(self, session: aiohttp.ClientSession, item: Item) -> bytes | None:
        try:
            async with session.get(urljoin(self.url, item.uri)) as response:
                body = await response.read()
                if response.status == 200:
                    return body
                self._failed(f"media: HTTP {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._failed(f"media: {type(exc).__name__}: {exc}")
        return None

    def _align(self, item: Item, span: tuple[int, int] | None) -> None:
        """Learn the DTS offset from the stream's first item, whose first frame is the first one sent."""
        assert self.video_sent is not None
        self._align_pending = False
        if (item.msn, item.part or 0) != (0, 0) or span is None or not self.video_sent:
            self.result.error = f"could not align timestamps: the first item seen is {item.uri}"
            return
        self.result.dts_offset_ms = span[0] - next(iter(self.video_sent))

    async def _fetch(self, session: aiohttp.ClientSession, item: Item, listed_at: float | None) -> None:
        """Fetch ``item``, listed at ``listed_at`` (None: unknown), and count it if that was in the window."""
        data = await self._get(session, item)
        if data is None:
            return
        span = video_span(data) if self.video_sent is not None else None
        if self._align_pending:
            self._align(item, span)
        if listed_at is None or not self._in_window(listed_at):
            return
        result = self.result
        result.items += 1
        result.media_seconds += item.duration
        result.window_bytes += len(data)
        offset = result.dts_offset_ms
        if self.video_sent is None or offset is None:
            return
        sent = [self.video_sent.get(ms - offset) for ms in span] if span else [None]
        if None in sent:
            result.unmatched += 1
            return
        result.latency.append([item.msn, item.part, *(round((listed_at - at) * 1000, 1) for at in sent)])
