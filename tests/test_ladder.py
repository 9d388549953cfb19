"""The transcoding ladder on real media: ffmpeg makes the source, ffprobe reads the renditions."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from relay.formats import codecs, flv
from relay.formats.h264 import avc_sequence_header, declared_size
from relay.formats.packet import AUDIO, VIDEO, Packet
from relay.transcode.ladder import PRESETS, Ladder, Rung, scaled_width, undecodable
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


def damage(payload: bytes, how: str) -> bytes:
    """An FLV AVC frame (5 header bytes, then length-prefixed NAL units) broken as networks and
    encoders break them: bytes flipped in its slice data, cut short, or replaced by junk."""
    if how == "flipped":
        return payload[:21] + bytes(b ^ 0xFF for b in payload[21:])
    if how == "truncated":
        return payload[: len(payload) // 3]
    return payload[:5] + b"\x00\x00\x00\x10" + bytes(range(16)) * 3


def pts(packet: Packet) -> int:
    """An FLV AVC frame's presentation time: its timestamp plus its composition offset."""
    return packet.timestamp + int.from_bytes(packet.payload[2:5], "big", signed=True)


@pytest.mark.parametrize("how", ["flipped", "truncated", "garbage"])
async def test_a_damaged_frame_is_counted_and_the_rung_resumes_at_the_next_keyframe(tmp_path, how, caplog) -> None:
    """Whether the decoder raises (cut short, junk) or conceals errors in what it outputs (flipped
    bytes), the frame is counted and logged, and the rung skips to the source's next keyframe."""
    caplog.set_level(logging.INFO, "minilive.transcode")
    packets = await source(tmp_path, "640x360", seconds=3)
    video = [i for i, p in enumerate(packets) if p.kind == VIDEO and codecs.coded_frame(p.payload)]
    broken = packets[video[10]]  # in the first second's GOP
    assert not broken.keyframe
    packets[video[10]] = Packet(VIDEO, broken.timestamp, damage(broken.payload, how))
    # Presentation times, which the rung's pictures (no B-frames) carry.
    resume_at = min(pts(p) for p in packets if p.keyframe and p.timestamp > broken.timestamp)
    ladder = Ladder([Rung("240p", 240, 300_000, 360_000)])
    made = [p for packet in packets for _, p in ladder.feed(packet) if p.kind == VIDEO and not p.config]
    made += [p for _, p in ladder.flush() if p.kind == VIDEO and not p.config]
    assert ladder.errors == 1 and ladder.unsupported == 0
    assert "waiting for the next keyframe" in caplog.text
    source_times = sorted(pts(packets[i]) for i in video)
    gap = [t for t in source_times if pts(broken) <= t < resume_at]
    missed = [t for t in gap if t not in {p.timestamp for p in made}]
    assert missed, "the pictures after the damage are not made"
    after = [p for p in made if p.timestamp >= resume_at]
    assert after[0].keyframe and after[0].timestamp == resume_at, "the rung resumes on the source's next keyframe"
    assert len(after) == len([t for t in source_times if t >= resume_at]), "and makes every picture from there on"


def avc_header_declaring(width_mbs: int, height_mbs: int, crop: int = 0) -> bytes:
    """An FLV AVC sequence header whose baseline SPS declares a picture of ``width_mbs`` x ``height_mbs``
    macroblocks, less ``crop`` 2-pixel steps on the right and at the bottom (H.264 7.3.2.1.1)."""

    def ue(value: int) -> str:
        code = bin(value + 1)[2:]
        return "0" * (len(code) - 1) + code

    bits = f"{66:08b}" + "0" * 8 + f"{30:08b}" + ue(0) + ue(0) + ue(2) + ue(1) + "0"
    bits += ue(width_mbs - 1) + ue(height_mbs - 1) + "11"  # frame_mbs_only, direct_8x8_inference
    bits += ("1" + ue(0) + ue(crop) + ue(0) + ue(crop)) if crop else "0"
    bits += "01"  # no VUI, then the RBSP stop bit
    bits += "0" * (-len(bits) % 8)
    sps = b"\x67" + int(bits, 2).to_bytes(len(bits) // 8, "big")
    return avc_sequence_header(sps, b"\x68\xce\x3c\x80")


@pytest.mark.parametrize(
    ("header", "size"),
    [(avc_header_declaring(1, 1, crop=8), (0, 0)), (avc_header_declaring(1250, 1250), (20000, 20000))],
)
async def test_a_source_of_a_size_no_picture_has_is_refused(tmp_path, header, size, caplog) -> None:
    """A sequence header declaring 0x0 or 20000x20000 pictures opens no decoder: counted once, logged,
    nothing made; the rungs start again with the source's next real sequence header."""
    assert declared_size(header) == size
    packets = await source(tmp_path, "320x240", seconds=2)
    lying = [Packet(VIDEO, 0, header, config=True) if p.kind == VIDEO and p.config else p for p in packets]
    ladder = Ladder([Rung("180p", 180, 300_000, 360_000)])
    made = [p for packet in lying for _, p in ladder.feed(packet) if p.kind == VIDEO]
    assert made == [] and ladder.unsupported == 1 and ladder.errors == 0
    assert ladder.refusal == f"its sequence header declares {size[0]}x{size[1]} pictures"
    assert f"cannot be transcoded: {ladder.refusal}" in caplog.text
    # The publisher's next sequence header is a real one: the rungs start again at its keyframe.
    made = [p for packet in packets for _, p in ladder.feed(packet) if p.kind == VIDEO and not p.config]
    assert made and made[0].keyframe and ladder.refusal == "" and ladder.unsupported == 1


@pytest.mark.parametrize(
    ("config", "frame", "named"),
    [
        (b"\x90zzzz\x01\x02", b"\x93zzzzframe", ""),  # an Enhanced RTMP FourCC no one knows
        (None, b"\x14\x00frame", "vp6"),  # legacy FLV VP6: no sequence header, no decoder here
        (None, b"\x12frame", "h263"),  # Sorenson H.263
    ],
)
def test_a_codec_with_no_decoder_makes_nothing_and_says_so_once(config, frame, named, caplog) -> None:
    """No output and no exception, one log line and one count however many frames come."""
    ladder = Ladder([Rung("180p", 180, 300_000, 360_000)])
    packets = [Packet(VIDEO, 0, config, config=True)] if config else []
    packets += [Packet(VIDEO, i * 40, frame, i % 10 == 0) for i in range(30)]
    assert [made for packet in packets for made in ladder.feed(packet)] == []
    assert ladder.unsupported == 1 and ladder.errors == 0 and ladder.refusal == undecodable(named)
    assert caplog.text.count("cannot be transcoded") == 1


def test_widths_keep_the_aspect_ratio_and_are_even() -> None:
    assert scaled_width(1280, 720, 480) == 854
    assert scaled_width(1920, 1080, 360) == 640
    assert scaled_width(720, 1280, 480) == 270, "portrait, as phones push"
    assert scaled_width(1000, 999, 3) == 4


async def test_with_a_hardware_encoder_the_decoder_tries_its_device_then_the_cpu(tmp_path, caplog) -> None:
    """No GPU here: the CUDA decoder that NVENC would bring does not open, and the CPU decodes instead."""
    import logging

    packets = await source(tmp_path, "640x360", seconds=1)
    ladder = Ladder([PRESETS["360p"]], codec="h264_nvenc")
    with caplog.at_level(logging.INFO, "minilive.transcode"):
        for packet in packets:
            if packet.kind == VIDEO and packet.config:
                ladder.feed(packet)
                break
    assert "cannot decode on cuda" in caplog.text and not ladder.gpu_decode
    assert ladder.decoder is not None and ladder.decoder.name == "h264", "decoding on the CPU"


async def test_a_worker_behind_real_time_drops_pictures_then_skips_to_keyframes(tmp_path, caplog) -> None:
    """Packets stamped long before the worker reads them: keyframes only past max_delay_ms, and past four
    times that the job does not even decode until the next keyframe; the delay is reported and logged."""
    import logging
    import socket
    import time

    from relay.transcode import wire
    from relay.transcode.worker import Worker

    packets = await source(tmp_path, "640x360", seconds=3)
    ours, _ = socket.socketpair()
    worker = Worker(ours, 0)
    spec = {"rungs": [Rung("180p", 180, 200_000, 240_000).to_dict()], "enabled": ["180p"], "preset": "ultrafast",
            "tune": "zerolatency", "encoder": "libx264", "max_delay_ms": 100}  # fmt: skip

    def run(sent_ms_ago: float) -> list[Packet]:
        worker.handle(wire.OPEN, memoryview(wire.control_message(wire.OPEN, 1, spec)[5:]), [])
        out: list[bytes] = []
        for packet in packets:
            sent = time.monotonic_ns() - int(sent_ms_ago * 1e6)
            worker.handle(wire.PACKET, memoryview(wire.packet_message(1, packet, sent)[5:]), out)
        reader = wire.Reader()
        made = [wire.read_output(body)[2] for _, body in reader.feed(b"".join(out))]
        return [p for p in made if p.kind == VIDEO and not p.config]

    on_time = run(0)
    # Every picture but the few the decoder still holds (the source has B-frames; no flush here).
    assert len(on_time) >= sum(1 for p in packets if p.kind == VIDEO and not p.config) - 3
    with caplog.at_level(logging.WARNING, "minilive.transcode"):
        late = run(200)
    assert late and all(p.keyframe for p in late), "keyframes only"
    assert worker.stats()["jobs"]["1"]["behind_ms"] >= 200 and "behind real time" in caplog.text
    very_late = run(1000)
    assert all(p.keyframe for p in very_late) and len(very_late) <= len(late), "keyframes at most"
    assert worker.jobs[1].skipped > 0, "pictures between keyframes not even decoded past four times the limit"


async def test_a_rung_switched_on_waits_for_a_keyframe_but_not_for_long(tmp_path) -> None:
    """A rung switched on mid-GOP starts at the source's next keyframe; with keyframes 10 s apart (a
    browser's encoder makes them when asked), at most MAX_START_WAIT_MS later, as an IDR."""
    from relay.transcode.ladder import MAX_START_WAIT_MS

    for gop_seconds, starts_at in ((1, 1000), (10, None)):
        path = tmp_path / f"gop{gop_seconds}.flv"
        code, _, err = await run(
            "ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=640x360:rate=25", "-t", "6",
            "-c:v", "libx264", "-preset", "ultrafast", "-bf", "0", "-g", str(25 * gop_seconds), str(path),
        )  # fmt: skip
        assert code == 0, err.decode()
        packets = to_packets(flv.FlvReader().feed(path.read_bytes()))
        ladder = Ladder([PRESETS["360p"], Rung("180p", 180, 200_000, 240_000)], enabled=["360p"])
        made: list[tuple[str, Packet]] = []
        for packet in packets:
            if packet.kind == VIDEO and not packet.config and packet.timestamp == 400:
                ladder.select(["360p", "180p"])  # mid-GOP
            made += ladder.feed(packet)
        first = next(p for name, p in made if name == "180p" and not p.config)
        assert first.keyframe
        expected = starts_at if starts_at is not None else 400 + MAX_START_WAIT_MS
        assert abs(first.timestamp - expected) <= 40, (gop_seconds, first.timestamp)
