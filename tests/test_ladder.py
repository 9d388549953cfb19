"""The transcoding ladder on real media: ffmpeg makes the source, ffprobe reads the renditions."""

from __future__ import annotations

import json
from pathlib import Path

from relay.formats import flv
from relay.formats.packet import AUDIO, VIDEO, Packet
from relay.transcode.ladder import PRESETS, Ladder, Rung, scaled_width
from tests.conftest import FFPROBE, needs_ffmpeg, run
from tests.test_mpegts import to_packets

pytestmark = needs_ffmpeg


async def source(tmp_path: Path, size: str, seconds: int = 4, rate: int = 30) -> list[Packet]:
    """H.264 with B-frames and a keyframe a second, plus AAC, as the hub gets them from an FLV publisher."""
    path = tmp_path / f"{size}.flv"
    code, _, err = await run(
        "ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}",
        "-f", "lavfi", "-i", "sine=sample_rate=44100", "-t", str(seconds),
        "-c:v", "libx264", "-preset", "ultrafast", "-g", str(rate), "-bf", "2", "-c:a", "aac", str(path),
    )  # fmt: skip
    assert code == 0, err.decode()
    return to_packets(flv.FlvReader().feed(path.read_bytes()))


def write_flv(path: Path, packets: list[Packet]) -> None:
    path.write_bytes(flv.header(True, True) + b"".join(flv.encode_tag(p.kind, p.timestamp, p.payload) for p in packets))


async def probe(path: Path) -> dict:
    code, out, err = await run(
        FFPROBE, "-v", "error", "-show_streams", "-show_frames", "-show_entries",
        "stream=codec_name,width,height:frame=key_frame,pts_time,media_type", "-of", "json", str(path),
    )  # fmt: skip
    assert code == 0, err.decode()
    return json.loads(out)


def keyframe_times(info: dict) -> list[float]:
    return [round(float(f["pts_time"]), 2) for f in info["frames"] if f["media_type"] == "video" and f["key_frame"]]


async def test_a_720p_source_becomes_480p_and_360p_with_its_keyframes(tmp_path) -> None:
    packets = await source(tmp_path, "1280x720")
    ladder = Ladder([PRESETS["480p"], PRESETS["360p"]])
    out: dict[str, list[Packet]] = {"480p": [], "360p": []}
    for packet in packets:
        for name, made in ladder.feed(packet):
            out[name].append(made)
    for name, made in ladder.flush():
        out[name].append(made)
    write_flv(tmp_path / "src.flv", packets)
    source_info = await probe(tmp_path / "src.flv")
    source_frames = [f for f in source_info["frames"] if f["media_type"] == "video"]
    for name, size in (("480p", (854, 480)), ("360p", (640, 360))):
        write_flv(tmp_path / f"{name}.flv", out[name])
        info = await probe(tmp_path / f"{name}.flv")
        streams = {s["codec_name"]: s for s in info["streams"]}
        assert set(streams) == {"h264", "aac"}, "video transcoded, audio passed through"
        assert (streams["h264"]["width"], streams["h264"]["height"]) == size
        frames = [f for f in info["frames"] if f["media_type"] == "video"]
        assert len(frames) == len(source_frames), "every source frame (30 fps is the cap)"
        assert keyframe_times(info) == keyframe_times(source_info), "keyframes where the source has them"
        audio = [p for p in out[name] if p.kind == AUDIO]
        assert audio == [p for p in packets if p.kind == AUDIO], "the same audio packets, unchanged"
        first = out[name][0]
        assert first.kind == VIDEO and first.config, "the video configuration before any audio (HLS needs to know)"
    assert ladder.errors == 0


async def test_no_rung_is_ever_upscaled(tmp_path) -> None:
    packets = await source(tmp_path, "640x360", seconds=1)
    ladder = Ladder([PRESETS["720p"], PRESETS["480p"], PRESETS["360p"]])
    made = [item for packet in packets for item in ladder.feed(packet)]
    assert made == [] and ladder.active == [], "a 360p source has no rung to make"
    assert ladder.frames_in > 0


async def test_a_corrupt_frame_is_counted_and_the_rungs_wait_for_the_next_keyframe(tmp_path) -> None:
    packets = await source(tmp_path, "640x360", seconds=3)
    video = [i for i, p in enumerate(packets) if p.kind == VIDEO and not p.config]
    broken = video[5]
    garbage = packets[broken].payload[:5] + b"\x00\x00\x00\x10" + bytes(range(16)) * 3
    packets[broken] = Packet(VIDEO, packets[broken].timestamp, garbage, packets[broken].keyframe)
    ladder = Ladder([Rung("240p", 240, 300_000, 360_000)])
    made = [p for packet in packets for _, p in ladder.feed(packet) if p.kind == VIDEO and not p.config]
    assert made, "the rendition goes on"
    assert all(p.timestamp >= 0 for p in made)


def test_widths_keep_the_aspect_ratio_and_are_even() -> None:
    assert scaled_width(1280, 720, 480) == 854
    assert scaled_width(1920, 1080, 360) == 640
    assert scaled_width(720, 1280, 480) == 270, "portrait, as phones push"
    assert scaled_width(1000, 999, 3) == 4
