"""A replay's HLS media playlist (RFC 8216): EVENT while it is recorded, VOD once it is finalized.

Segments are ``segNNNNN.ts`` (MPEG-TS, H.264) or ``segNNNNN.m4s`` (fMP4, HEVC) files in the replay's
folder, listed from the first. An fMP4 segment needs the init segment before it (EXT-X-MAP):
``initNNNNN.mp4`` is the one of segment NNNNN and those after it, up to the next init segment, so
the files alone say which init segment each segment needs. The playlist is the only place that
remembers where a discontinuity (a new publisher or stream) starts, and when each segment was
recorded (EXT-X-PROGRAM-DATE-TIME, the wall-clock time of its first frame), which clips look up.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass

PLAYLIST = "index.m3u8"
DISCONTINUITY = "#EXT-X-DISCONTINUITY"
DATE = "#EXT-X-PROGRAM-DATE-TIME:"


@dataclass(slots=True, frozen=True)
class Entry:
    name: str
    duration: float
    discontinuity: bool = False
    init: str | None = None  # fMP4: the name of its init segment
    date: float | None = None  # Unix time of its first frame


def segment_name(index: int, extension: str) -> str:
    return f"seg{index:05d}.{extension}"


def init_name(index: int) -> str:
    """The init segment of the fMP4 segments from ``index`` on."""
    return f"init{index:05d}.mp4"


def render(entries: list[Entry], ended: bool) -> str:
    """The playlist of ``entries``: type EVENT (more to come), or VOD with EXT-X-ENDLIST when ``ended``."""
    # Every rounded EXTINF must fit in the target duration (RFC 8216 §4.3.3.1).
    target = max([int(e.duration + 0.5) for e in entries] + [1])
    lines = [
        "#EXTM3U",
        f"#EXT-X-VERSION:{7 if any(e.init for e in entries) else 3}",  # as the live playlist has it
        f"#EXT-X-TARGETDURATION:{target}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        f"#EXT-X-PLAYLIST-TYPE:{'VOD' if ended else 'EVENT'}",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ]
    init = None
    for entry in entries:
        if entry.discontinuity:
            lines.append(DISCONTINUITY)
        if entry.init is not None and entry.init != init:
            lines.append(f'#EXT-X-MAP:URI="{entry.init}"')
        init = entry.init
        if entry.date is not None:
            lines.append(DATE + format_date(entry.date))
        lines.append(f"#EXTINF:{entry.duration:.3f},")
        lines.append(entry.name)
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def format_date(ts: float) -> str:
    """RFC 3339 in UTC with milliseconds, as EXT-X-PROGRAM-DATE-TIME wants it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def parse_date(text: str) -> float | None:
    """The Unix time of a date that :func:`format_date` wrote; None for anything else."""
    try:
        whole, millis = text.removesuffix("Z").split(".")
        return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(millis) / 1000
    except ValueError:
        return None


def read(text: str) -> list[Entry]:
    """The entries of a playlist that :func:`render` wrote (an EVENT one may end without ENDLIST)."""
    entries = []
    discontinuity, init, date, duration = False, None, None, 0.0
    for line in text.splitlines():
        line = line.strip()
        if line == DISCONTINUITY:
            discontinuity = True
        elif line.startswith('#EXT-X-MAP:URI="'):
            init = line.split('"')[1]
        elif line.startswith(DATE):
            date = parse_date(line.removeprefix(DATE))
        elif line.startswith("#EXTINF:"):
            try:
                duration = float(line.removeprefix("#EXTINF:").split(",")[0])
            except ValueError:
                duration = 0.0
        elif line and not line.startswith("#"):
            entries.append(Entry(line, duration, discontinuity, init, date))
            discontinuity, date, duration = False, None, 0.0
    return entries
