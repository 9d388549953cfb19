"""A replay's HLS media playlist (RFC 8216): EVENT while it is recorded, VOD once it is finalized.

Segments are ``segNNNNN.ts`` files in the replay's folder, listed from the first; the playlist is
the only place that remembers where a discontinuity (a new publisher or stream) starts.
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


def segment_name(index: int) -> str:
    return f"seg{index:05d}.ts"


def render(entries: list[Entry], ended: bool) -> str:
    """The playlist of ``entries``: type EVENT (more to come), or VOD with EXT-X-ENDLIST when ``ended``."""
    # Every rounded EXTINF must fit in the target duration (RFC 8216 §4.3.3.1).
    target = max([int(e.duration + 0.5) for e in entries] + [1])
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:3",
        f"#EXT-X-TARGETDURATION:{target}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        f"#EXT-X-PLAYLIST-TYPE:{'VOD' if ended else 'EVENT'}",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ]
    for entry in entries:
        if entry.discontinuity:
            lines.append(DISCONTINUITY)
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
