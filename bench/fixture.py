"""The benchmark's media, made once with ffmpeg and cached: 60 s of H.264 + AAC in FLV.

The main fixture (``PATH``) is 1280x720 30 fps at ~2 Mbit/s; the transcoding benchmark also uses a
1920x1080 30 fps one at ~4 Mbit/s (``FIXTURES["1080p30"]``). Both are encoded the way WeChat's
live-pusher streams: 2 s GOP, no B-frames, zero-latency tuning, capped bitrate. Noise on the test
pattern keeps the encoder at its bitrate cap, so the bytes per second are those of a real camera
stream rather than of a static picture, and a decoder or scaler has real detail to work on.

    python -m bench.fixture [720p30|1080p30 ...]   # build (if missing) and print path and bitrate
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"
DURATION = 60

_AUDIO = "aevalsrc=0.2*sin(2*PI*440*t)+0.05*(random(0)-0.5)|0.2*sin(2*PI*660*t)+0.05*(random(1)-0.5):s=44100"


@dataclass(frozen=True, slots=True)
class Fixture:
    name: str
    width: int
    height: int
    fps: int
    bitrate: int  # bit/s, the encoder's cap

    @property
    def path(self) -> Path:
        return CACHE / f"fixture-{self.name}-{self.bitrate // 1_000_000}m.flv"


FIXTURES = {
    "720p30": Fixture("720p30", 1280, 720, 30, 2_000_000),
    "1080p30": Fixture("1080p30", 1920, 1080, 30, 4_000_000),
}
MAIN = FIXTURES["720p30"]
PATH = MAIN.path  # what every scenario of bench.run publishes


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


def ensure(fixture: Fixture = MAIN) -> Path:
    """Return the fixture's path, encoding it first if it is not cached yet."""
    path = fixture.path
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part.flv")
    size, gop, rate = f"{fixture.width}x{fixture.height}", str(2 * fixture.fps), f"{fixture.bitrate // 1000}k"
    print(f"making the {fixture.name} fixture (once): {path}", file=sys.stderr, flush=True)
    # fmt: off
    subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fixture.fps}",
            "-f", "lavfi", "-i", _AUDIO,
            "-t", str(DURATION),
            "-vf", "noise=alls=12:allf=t",
            "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-pix_fmt", "yuv420p",
            "-bf", "0", "-g", gop, "-keyint_min", gop, "-sc_threshold", "0",
            "-b:v", rate, "-maxrate", rate, "-bufsize", rate,
            "-c:a", "aac", "-b:a", "128k", "-ac", "2", "-ar", "44100",
            "-f", "flv", str(partial),
        ],
        check=True,
    )
    # fmt: on
    # The whole file's rate: video at its cap plus 128 kbit/s of audio, give or take the encoder's aim.
    rate_found = bitrate(partial)
    if not 0.9 * fixture.bitrate <= rate_found <= 1.3 * fixture.bitrate:
        partial.unlink()
        found, expected = rate_found / 1e6, fixture.bitrate / 1e6
        raise RuntimeError(f"{fixture.name} fixture came out at {found:.2f} Mbit/s, expected about {expected:g}")
    partial.rename(path)
    return path


if __name__ == "__main__":
    for name in sys.argv[1:] or [MAIN.name]:
        if name not in FIXTURES:
            sys.exit(f"no fixture {name!r}; choose from {', '.join(FIXTURES)}")
        built = ensure(FIXTURES[name])
        print(f"{built} {bitrate(built) / 1e6:.2f} Mbit/s")
