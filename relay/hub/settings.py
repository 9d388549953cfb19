"""The hub's tuning: the ``[relay]`` section of the configuration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class RelaySettings:
    flush_window_ms: float = 20.0
    # Streams with at most this many viewers are written packet by packet, without the window.
    merge_min_viewers: int = 16
    # New viewers are started (headers and GOP cache written) for at most this long per turn of the
    # event loop, and only until the stream's next merged write is due; the rest start in the next
    # turns. A stampede of joiners (a thousand after a push reminder, up to 500 KB of GOP cache each)
    # then never holds up the viewers already watching.
    join_slice_ms: float = 10.0
    # A joiner's start (headers and GOP cache: up to 500 KB at 2 Mbit/s) goes out this many bytes a
    # turn, the next slice once the socket took the last, in the same slices of loop time: a thousand
    # joiners' 500 MB then never reach the kernel in one turn, ahead of everyone's live data.
    join_write_bytes: int = 128 * 1024
    gop_max_bytes: int = 16 * 1024 * 1024
    viewer_high_water: int = 1024 * 1024
    viewer_low_water: int = 256 * 1024
    max_behind_seconds: float = 10.0
    grace_seconds: float = 30.0
    publisher_takeover: bool = True
