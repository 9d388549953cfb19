"""The hub's tuning: the ``[relay]`` section of the configuration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class RelaySettings:
    flush_window_ms: float = 20.0
    # Streams with at most this many viewers are written packet by packet, without the window.
    merge_min_viewers: int = 16
    gop_max_bytes: int = 16 * 1024 * 1024
    viewer_high_water: int = 1024 * 1024
    viewer_low_water: int = 256 * 1024
    max_behind_seconds: float = 10.0
    grace_seconds: float = 30.0
    publisher_takeover: bool = True
