"""The benchmark's media: 60 s of 1280x720 30 fps ~2 Mbps H.264 + AAC in FLV, made once with ffmpeg.

Encoded the way WeChat's live-pusher streams: 2 s GOP, no B-frames, zero-latency tuning, capped
bitrate. Noise on the test pattern keeps the encoder at its bitrate cap, so the bytes per second are
those of a real camera stream rather than of a static picture.

    python -m bench.fixture      # build (if missing) and print its path and bitrate
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"
PATH = CACHE / "fixture-720p30-2m.flv"
DURATION = 60
MIN_BITRATE = 1_800_000
MAX_BITRATE = 2_600_000

_AUDIO = "aevalsrc=0.2*sin(2*PI*440*t)+0.05*(random(0)-0.5)|0.2*sin(2*PI*660*t)+0.05*(random(1)-0.5):s=44100"


def probe_format(source: Path | str, field: str) -> str:
    """A field of ffprobe's ``format`` section for a file or URL (``duration``, ``bit_rate``...)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", f"format={field}", "-of", "json", str(source)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return json.loads(out)["format"][field]


def bitrate(path: Path) -> int:
    """Whole-file bitrate in bit/s as ffprobe measures it (size over duration)."""
    return int(probe_format(path, "bit_rate"))


def ensure() -> Path:
    """Return the fixture's path, encoding it first if it is not cached yet."""
    if PATH.exists():
        return PATH
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = PATH.with_suffix(".part.flv")
    # fmt: off
    subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
            "-f", "lavfi", "-i", _AUDIO,
            "-t", str(DURATION),
            "-vf", "noise=alls=12:allf=t",
            "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-pix_fmt", "yuv420p",
            "-bf", "0", "-g", "60", "-keyint_min", "60", "-sc_threshold", "0",
            "-b:v", "2M", "-maxrate", "2M", "-bufsize", "2M",
            "-c:a", "aac", "-b:a", "128k", "-ac", "2", "-ar", "44100",
            "-f", "flv", str(partial),
        ],
        check=True,
    )
    # fmt: on
    rate = bitrate(partial)
    if not MIN_BITRATE <= rate <= MAX_BITRATE:
        partial.unlink()
        raise RuntimeError(f"fixture came out at {rate / 1e6:.2f} Mbit/s, expected about 2")
    partial.rename(PATH)
    return PATH


if __name__ == "__main__":
    path = ensure()
    print(f"{path} {bitrate(path) / 1e6:.2f} Mbit/s")
