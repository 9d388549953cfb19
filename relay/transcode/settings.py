"""The ``[transcode]`` section of the configuration, and the ladders it describes."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from relay.transcode.encoders import CHOICES
from relay.transcode.ladder import PRESETS, Rung

MODES = ("on-demand", "always")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
X264_TUNES = ("zerolatency", "film", "animation", "grain", "stillimage", "fastdecode", "psnr", "ssim")
# A rendition's name goes into its stream's name (``demo_480p``) and into URLs.
RUNG_NAME = re.compile(r"^[A-Za-z0-9]{1,16}$")
_CUSTOM_KEYS = {"name", "height", "video_bitrate", "max_rate", "fps_cap"}
_MAX_HEIGHT = 4320
# The H.264 rendition a stream in another codec gets when compat_rendition is on: the source's own
# height (at most 1080 lines); the nearest preset's bitrate.
COMPAT = "h264"


class SettingsError(ValueError):
    """A ``[transcode]`` value that cannot work; the message says which and what would."""


@dataclass(slots=True)
class TranscodeSettings:
    # Named presets (1080p, 720p, 480p, 360p, audio) or tables {name, height, video_bitrate (kbit/s),
    # max_rate (kbit/s), fps_cap}.
    renditions: list[Any] = field(default_factory=lambda: ["480p", "360p"])
    preset: str = "veryfast"  # x264 preset
    tune: str = "zerolatency"
    encoder: str = "auto"  # auto | libx264 | h264_nvenc | h264_vaapi | h264_qsv
    mode: str = "on-demand"  # or "always"
    idle_seconds: float = 30.0  # on-demand: stop a rendition this long after its last viewer
    workers: int = 0  # 0 = one per core
    max_transcodes: int = 8  # renditions being encoded at once, over every source
    # A stream in another codec than H.264 (HEVC, AV1, VP8, VP9) gets an H.264 rendition NAME_h264.
    compat_rendition: bool = True
    record_renditions: bool = False
    # A worker that gets a packet this late drops pictures (keeps keyframes) until it catches up.
    max_delay_ms: float = 500.0
    # A worker that sends nothing (it reports every second) for this long is killed and started again.
    hang_seconds: float = 5.0

    def validate(self) -> None:
        """Raise SettingsError on anything that cannot work (called when the configuration loads)."""
        self.ladder()
        if self.encoder not in CHOICES:
            raise SettingsError(f"[transcode] encoder must be one of {', '.join(CHOICES)}, not {self.encoder!r}")
        if self.mode not in MODES:
            raise SettingsError(f'[transcode] mode must be "on-demand" or "always", not {self.mode!r}')
        if self.preset not in X264_PRESETS:
            raise SettingsError(
                f"[transcode] preset must be an x264 preset ({', '.join(X264_PRESETS)}), not {self.preset!r}"
            )
        if self.tune not in X264_TUNES:
            raise SettingsError(f"[transcode] tune must be an x264 tune ({', '.join(X264_TUNES)}), not {self.tune!r}")
        for name in ("workers", "max_transcodes"):
            if getattr(self, name) < 0:
                raise SettingsError(f"[transcode] {name} must be 0 or more")
        if self.idle_seconds < 0 or self.max_delay_ms <= 0 or self.hang_seconds <= 1:
            raise SettingsError("[transcode] idle_seconds must be >= 0, max_delay_ms > 0 and hang_seconds > 1")

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    def ladder(self, entries: list[Any] | None = None) -> list[Rung]:
        """The rungs of ``entries`` (this section's renditions by default)."""
        return parse_ladder(self.renditions if entries is None else entries)


def parse_ladder(entries: Any, where: str = "[transcode] renditions") -> list[Rung]:
    if not isinstance(entries, list):
        raise SettingsError(f"{where} must be a list of preset names or tables")
    rungs: list[Rung] = []
    for entry in entries:
        rung = _rung(entry, where)
        if rung.name == COMPAT or any(r.name == rung.name for r in rungs):
            raise SettingsError(f"{where}: the name {rung.name!r} is taken")
        rungs.append(rung)
    return rungs


def _rung(entry: Any, where: str) -> Rung:
    if isinstance(entry, str):
        if entry not in PRESETS:
            raise SettingsError(f"{where}: no preset named {entry!r} (presets: {', '.join(PRESETS)})")
        return PRESETS[entry]
    if not isinstance(entry, dict):
        raise SettingsError(f"{where}: an entry must be a preset name or a table, not {entry!r}")
    unknown = set(entry) - _CUSTOM_KEYS
    if unknown:
        raise SettingsError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(_CUSTOM_KEYS))})"
        )
    name = entry.get("name")
    if not isinstance(name, str) or not RUNG_NAME.match(name):
        raise SettingsError(f"{where}: a custom rendition needs a name of 1-16 letters and digits, not {name!r}")
    height = _number(entry, "height", where, int)
    kbit = _number(entry, "video_bitrate", where, int)
    if not 16 <= height <= _MAX_HEIGHT or height % 2:
        raise SettingsError(f"{where}: {name}: height must be even, 16 to {_MAX_HEIGHT}")
    if not 50 <= kbit <= 100_000:
        raise SettingsError(f"{where}: {name}: video_bitrate is in kbit/s, 50 to 100000")
    max_rate = _number(entry, "max_rate", where, int, round(kbit * 1.2))
    if max_rate < kbit:
        raise SettingsError(f"{where}: {name}: max_rate (kbit/s) must be at least video_bitrate")
    fps_cap = float(_number(entry, "fps_cap", where, (int, float), 30.0))
    if not 1 <= fps_cap <= 120:
        raise SettingsError(f"{where}: {name}: fps_cap must be 1 to 120")
    return Rung(name, height, kbit * 1000, max_rate * 1000, fps_cap)


def _number(entry: dict[str, Any], key: str, where: str, kind: Any, default: Any = None) -> Any:
    value = entry.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, kind):
        raise SettingsError(f"{where}: {entry.get('name')}: {key} must be a number, not {value!r}")
    return value
