"""A replay's HLS media playlist (RFC 8216): EVENT while it is recorded, VOD once it is finalized.

Segments are ``segNNNNN.ts`` (MPEG-TS, H.264) or ``segNNNNN.m4s`` (fMP4, HEVC) files in the replay's
folder, listed from the first. An fMP4 segment needs the init segment before it (EXT-X-MAP):
``initNNNNN.mp4`` is the one of segment NNNNN and those after it, up to the next init segment, so
the files alone say which init segment each segment needs. The playlist is the only place that
remembers where a discontinuity (a new publisher or stream) starts.
"""

from __future__ import annotations

from dataclasses import dataclass

PLAYLIST = "index.m3u8"
DISCONTINUITY = "#EXT-X-DISCONTINUITY"


@dataclass(slots=True, frozen=True)
class Entry:
    name: str
    duration: float
    discontinuity: bool = False
    init: str | None = None  # fMP4: the name of its init segment


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
        lines.append(f"#EXTINF:{entry.duration:.3f},")
        lines.append(entry.name)
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def discontinuities(text: str) -> set[str]:
    """The names of the segments that a playlist marks with EXT-X-DISCONTINUITY."""
    found: set[str] = set()
    marked = False
    for line in text.splitlines():
        line = line.strip()
        if line == DISCONTINUITY:
            marked = True
        elif line and not line.startswith("#"):
            if marked:
                found.add(line)
            marked = False
    return found
