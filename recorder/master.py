"""A replay's VOD master playlist, when renditions were recorded beside the source (``[transcode]
record_renditions``): ``master.m3u8`` lists the source (``index.m3u8``) and each rendition's folder.

Figures come from the finished files: AVERAGE-BANDWIDTH is the rendition's bytes over its duration,
BANDWIDTH its busiest segment's rate, RESOLUTION the first segment's picture size.
"""

from __future__ import annotations

import logging
from pathlib import Path

import av

from recorder.playlist import PLAYLIST
from recorder.recording import atomic_write

log = logging.getLogger("minilive.recorder")

MASTER = "master.m3u8"


def rendition_folders(folder: Path) -> list[Path]:
    """The sub-folders of a replay that hold a recorded rendition's segments."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and any(p.glob("seg*")))


def write_master(folder: Path, renditions: list[str]) -> None:
    """``master.m3u8`` for the source in ``folder`` and the finished renditions named (sub-folders)."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:6", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for uri in [PLAYLIST, *(f"{name}/{PLAYLIST}" for name in renditions)]:
        attributes = _attributes(folder / uri)
        if attributes:
            lines += [f"#EXT-X-STREAM-INF:{attributes}", uri]
    atomic_write(folder / MASTER, ("\n".join(lines) + "\n").encode())


def _attributes(playlist: Path) -> str:
    """BANDWIDTH, AVERAGE-BANDWIDTH and RESOLUTION of one finished VOD playlist ("" if unreadable)."""
    segments: list[tuple[Path, float]] = []
    duration = 0.0
    for line in playlist.read_text(errors="replace").splitlines():
        if line.startswith("#EXTINF:"):
            duration = float(line[8:].split(",")[0] or 0)
        elif line and not line.startswith("#"):
            segments.append((playlist.parent / line, duration))
    total = sum(d for _, d in segments)
    if not segments or total <= 0:
        return ""
    sizes = [(path.stat().st_size, d) for path, d in segments if path.exists()]
    average = sum(size for size, _ in sizes) * 8 / total
    peak = max((size * 8 / d for size, d in sizes if d > 0), default=average)
    attributes = f"BANDWIDTH={round(max(peak, average))},AVERAGE-BANDWIDTH={round(average)}"
    try:
        with av.open(str(segments[0][0])) as container:
            video = container.streams.video
            if video:
                attributes += f",RESOLUTION={video[0].width}x{video[0].height}"
    except (av.FFmpegError, OSError) as exc:
        log.info("replay %s: no picture size for the master playlist: %s", playlist.parent.name, exc)
    return attributes
