"""Which H.264 encoder makes the renditions, and how each is told to make keyframes only where forced.

``encoder = "auto"`` takes the first hardware encoder that PyAV can open on this machine (NVENC,
then VAAPI, then QSV) and libx264 otherwise; the choice is made once and logged. Opening one is
the only reliable test: PyAV's wheels list ``h264_nvenc`` and ``h264_qsv`` on machines without the
hardware or its driver, and opening them there fails.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from fractions import Fraction

import av

from relay.formats import h264

log = logging.getLogger("minilive.transcode")

SOFTWARE = "libx264"
HARDWARE = ("h264_nvenc", "h264_vaapi", "h264_qsv")
# Where a hardware encoder is, the decoder is tried on the same device (FFmpeg's hwaccel names).
DECODE_DEVICES = {"h264_nvenc": "cuda", "h264_vaapi": "vaapi", "h264_qsv": "qsv"}
CHOICES = ("auto", SOFTWARE, *HARDWARE)

# The encoder makes no keyframe of its own: only the forced ones, at the source's.
_X264_NO_KEYFRAMES = "keyint=infinite:min-keyint=1:scenecut=0"
# Reference frames of each x264 preset: with tune zerolatency (no B-frames), its decoded picture buffer.
_X264_REFS = {
    "ultrafast": 1,
    "superfast": 1,
    "veryfast": 1,
    "faster": 2,
    "fast": 2,
    "medium": 3,
    "slow": 5,
    "slower": 8,
}


def encoder_options(codec: str, preset: str, tune: str, max_rate: int) -> dict[str, str]:
    """The encoder's private options: preset, low latency, forced IDR pictures, no scene cuts, VBV."""
    kbit = str(max_rate // 1000)
    if codec == "h264_nvenc":
        # NVENC's presets are p1 (fastest) to p7; x264's names map onto them roughly.
        nv_preset = {"ultrafast": "p1", "superfast": "p1", "veryfast": "p2", "faster": "p3", "fast": "p4"}
        return {
            "preset": nv_preset.get(preset, "p4"),
            "tune": "ll" if tune == "zerolatency" else "hq",
            "zerolatency": "1",
            "forced-idr": "1",
            "no-scenecut": "1",
            "rc": "cbr",
            "maxrate": f"{kbit}k",
            "bufsize": f"{kbit}k",
        }
    if codec == "h264_qsv":
        return {"preset": preset if preset in ("veryfast", "faster", "fast", "medium") else "veryfast",
                "forced_idr": "1", "look_ahead": "0"}  # fmt: skip
    if codec == "h264_vaapi":
        return {"rc_mode": "CBR"}
    vbv = f"vbv-maxrate={kbit}:vbv-bufsize={kbit}" if max_rate else ""
    params = f"{_X264_NO_KEYFRAMES}:{vbv}" if vbv else _X264_NO_KEYFRAMES
    return {"preset": preset, "tune": tune, "forced-idr": "1", "x264-params": params}


def expected_codec(codec: str, preset: str, width: int, height: int, fps: float, max_rate: int) -> str:
    """The RFC 6381 codec a rendition's encoder will write into its SPS, for a master playlist that
    lists the rendition before its encoder has made a picture (its real SPS is used once it has).

    libx264 makes Constrained Baseline at preset ultrafast (no CABAC, no 8x8 transform) and High at
    the others, at the level it computes (:func:`relay.formats.h264.level_for`, with the frame rate the
    encoder is opened with: the rung's cap). Hardware encoders are taken to make High as well."""
    kbit = max_rate // 1000
    refs = _X264_REFS.get(preset, 16) if codec == SOFTWARE else 1  # veryslow: 16
    fps = round(fps)
    if codec == SOFTWARE and preset == "ultrafast":
        return h264.avc1(0x42, 0xC0, h264.level_for(width, height, fps, kbit, refs, high=False))
    return h264.avc1(0x64, 0x00, h264.level_for(width, height, fps, kbit, refs))


@functools.cache  # one probe per process: a device does not come and go while we run
def can_open(codec: str) -> bool:
    """Whether PyAV can open ``codec`` here: a 64x64 encoder opened and given one picture."""
    try:
        context = av.CodecContext.create(codec, "w")
        context.width, context.height = 64, 64
        context.pix_fmt = "nv12" if codec in ("h264_vaapi", "h264_qsv") else "yuv420p"
        context.time_base = Fraction(1, 1000)
        context.open()
        frame = av.VideoFrame(64, 64, "yuv420p")
        if context.pix_fmt != "yuv420p":
            frame = frame.reformat(format=context.pix_fmt)
        frame.pts = 0
        context.encode(frame)
        return True
    except (av.FFmpegError, ValueError, OSError) as exc:
        log.debug("transcode: %s cannot be opened here: %s", codec, exc)
        return False


def choose(preference: str, probe: Callable[[str], bool] = can_open) -> str:
    """The encoder to use for ``preference`` (one of CHOICES). A named hardware encoder that does not
    open falls back to libx264, with a warning that names the fix."""
    if preference not in CHOICES:
        raise ValueError(f"[transcode] encoder must be one of {', '.join(CHOICES)}, not {preference!r}")
    if preference == SOFTWARE:
        return SOFTWARE
    candidates = HARDWARE if preference == "auto" else (preference,)
    for codec in candidates:
        if probe(codec):
            log.info("transcode: encoding renditions with %s", codec)
            return codec
    if preference == "auto":
        log.info("transcode: no hardware H.264 encoder opens here (tried %s): encoding with libx264",
                 ", ".join(HARDWARE))  # fmt: skip
    else:
        log.warning("transcode: encoder %s does not open on this machine (no device or driver?): "
                    "encoding with libx264; set [transcode] encoder = \"auto\" or install the driver",
                    preference)  # fmt: skip
    return SOFTWARE
