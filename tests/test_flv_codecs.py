"""FlvReader, relay.formats.codecs and vp8, on hand-built tags, FLV made by Debian's ffmpeg and VP8 from libvpx."""

import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import pytest

from relay.formats import codecs, h264, hevc, vp8
from relay.formats.aac import AacConfig
from relay.formats.flv import AUDIO, SCRIPT, VIDEO, FlvError, FlvReader, Tag, encode_tag, header
from relay.hub.tracks import Tracks
from tests.conftest import FFMPEG, needs_ffmpeg


def tag(kind: int, ts: int, payload: bytes, stream_id: int = 0) -> bytes:
    """An FLV tag written out from the spec: timestamp's upper byte after its lower 24 bits."""
    head = (
        bytes((kind,))
        + struct.pack(">I", len(payload))[1:]
        + struct.pack(">I", ts & 0xFFFFFF)[1:]
        + bytes((ts >> 24,))
        + struct.pack(">I", stream_id)[1:]
    )
    return head + payload + struct.pack(">I", 11 + len(payload))


def hex_id(value: object) -> str | None:
    return value.hex() if isinstance(value, bytes) else None


FILE_HEADER = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00"


# ---------------------------------------------------------------- FlvReader


def test_header_and_tags() -> None:
    data = (
        FILE_HEADER
        + tag(SCRIPT, 0, b"meta")
        + tag(VIDEO, 0, b"\x17\x00config")
        + tag(AUDIO, 23, b"\xaf\x01aac")
        + tag(VIDEO, 0x01000040, b"\x27\x01frame")
    )
    reader = FlvReader()
    assert reader.feed(data) == [
        Tag(SCRIPT, 0, b"meta"),
        Tag(VIDEO, 0, b"\x17\x00config"),
        Tag(AUDIO, 23, b"\xaf\x01aac"),
        Tag(VIDEO, 0x01000040, b"\x27\x01frame"),
    ]
    assert reader.has_audio and reader.has_video


@pytest.mark.parametrize(("flags", "audio", "video"), [(0x01, False, True), (0x04, True, False), (0, False, False)])
def test_header_flags(flags: int, audio: bool, video: bool) -> None:
    reader = FlvReader()
    assert reader.feed(b"FLV\x01" + bytes((flags,)) + b"\x00\x00\x00\x09\x00\x00\x00\x00") == []
    assert (reader.has_audio, reader.has_video) == (audio, video)


def test_writer_matches_spec() -> None:
    assert header() == FILE_HEADER
    assert header(has_audio=False)[4] == 0x01
    for ts in (0, 1000, 0xFFFFFF, 0x01000000, 0xFFFFFFFF):
        assert encode_tag(VIDEO, ts, b"abc") == tag(VIDEO, ts, b"abc")


def test_timestamp_extension_byte() -> None:
    (got,) = FlvReader().feed(FILE_HEADER + tag(AUDIO, 0x7F123456, b"x"))
    assert got.timestamp == 0x7F123456


def test_fragments() -> None:
    data = FILE_HEADER + b"".join(tag(VIDEO, i * 40, bytes([i]) * (i * 37)) for i in range(20))
    whole = FlvReader().feed(data)
    assert len(whole) == 20
    for step in (1, 2, 7, 11, 100, 1000):
        reader = FlvReader()
        got: list[Tag] = []
        for pos in range(0, len(data), step):
            got += reader.feed(data[pos : pos + step])
        assert got == whole


def test_longer_header_is_skipped() -> None:
    data = b"FLV\x01\x05\x00\x00\x00\x0d" + b"xxxx" + b"\x00\x00\x00\x00" + tag(AUDIO, 1, b"a")
    assert FlvReader().feed(data) == [Tag(AUDIO, 1, b"a")]


def test_filter_bits_are_masked_from_tag_type() -> None:
    assert FlvReader().feed(FILE_HEADER + tag(0x20 | VIDEO, 0, b"v"))[0].kind == VIDEO


@pytest.mark.parametrize(
    "data",
    [
        b"FLX\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"FLV\x01\x05\x00\x00\x00\x05\x00\x00\x00\x00",
        b"FLV\x01\x05\xff\xff\xff\xff\x00\x00\x00\x00",
    ],
)
def test_bad_header(data: bytes) -> None:
    with pytest.raises(FlvError):
        FlvReader().feed(data)


def test_huge_declared_tag_size() -> None:
    head = b"\x09\xff\xff\xff" + bytes(7)
    with pytest.raises(FlvError, match="exceeds"):
        FlvReader(max_tag_size=1_000_000).feed(FILE_HEADER + head)
    # Under the default limit a 16 MiB tag is legal: the reader waits for it and holds only
    # what it was given.
    reader = FlvReader()
    assert reader.feed(FILE_HEADER + head + b"x" * 100) == []
    assert len(reader._buf) == len(head) + 100


# ---------------------------------------------------------------- codecs: video


@pytest.mark.parametrize(
    ("payload", "keyframe", "config", "codec"),
    [
        (b"\x17\x00\x00\x00\x00\x01\x64", False, True, "h264"),
        (b"\x17\x01\x00\x00\x00data", True, False, "h264"),
        (b"\x27\x01\x00\x00\x00data", False, False, "h264"),
        (b"\x1c\x00\x00\x00\x00\x01", False, True, "hevc"),
        (b"\x1c\x01\x00\x00\x00data", True, False, "hevc"),
        (b"\x2c\x01\x00\x00\x00data", False, False, "hevc"),
        (b"\x12data", True, False, "h263"),
        (b"\x24data", False, False, "vp6"),
        (b"\x17", True, False, "h264"),
        # End of sequence, even flagged as a keyframe, does not start a GOP.
        (b"\x17\x02\x00\x00\x00", False, False, "h264"),
        (b"\x92hvc1", False, False, "hevc"),
        (b"\x94hvc1metadata", False, False, "hevc"),
        (b"\x1f\x00", True, False, ""),
        (b"", False, False, ""),
        # Enhanced RTMP: 0x80 | frame type << 4 | packet type, then the FourCC.
        (b"\x90hvc1\x01\x01", False, True, "hevc"),
        (b"\x91hvc1\x00\x00\x00data", True, False, "hevc"),
        (b"\xa1hvc1\x00\x00\x00data", False, False, "hevc"),
        (b"\x93hvc1data", True, False, "hevc"),
        (b"\xa3hvc1data", False, False, "hevc"),
        (b"\x90av01\x81\x00", False, True, "av1"),
        (b"\x95av01\x00", False, True, "av1"),
        (b"\x91av01data", True, False, "av1"),
        (b"\xa1av01data", False, False, "av1"),
        (b"\x90vp09\x01\x00", False, True, "vp9"),
        (b"\x91vp09data", True, False, "vp9"),
        (b"\xa1vp09data", False, False, "vp9"),
        (b"\x90vp08\x01\x00", False, True, "vp8"),
        (b"\x93vp08data", True, False, "vp8"),
        (b"\xa3vp08data", False, False, "vp8"),
        (b"\x90avc1\x01", False, True, "h264"),
        (b"\x91zzzzdata", True, False, ""),
    ],
    ids=hex_id,
)
def test_video_info(payload: bytes, keyframe: bool, config: bool, codec: str) -> None:
    assert codecs.video_info(payload) == codecs.VideoInfo(keyframe, config, codec)


# ---------------------------------------------------------------- codecs: audio


@pytest.mark.parametrize(
    ("payload", "config", "codec"),
    [
        (b"\xaf\x00\x12\x10", True, "aac"),
        (b"\xaf\x01data", False, "aac"),
        (b"\xaf", False, "aac"),
        (b"\x2fdata", False, "mp3"),
        (b"\x82data", False, "g711u"),
        (b"\xb2data", False, "speex"),
        (b"\xf2data", False, ""),
        (b"", False, ""),
        (b"\x90Opus\x01\x02", True, "opus"),
        (b"\x91Opusdata", False, "opus"),
        (b"\x90mp4a\x12\x10", True, "aac"),
        (b"\x91fLaCdata", False, "flac"),
    ],
    ids=hex_id,
)
def test_audio_info(payload: bytes, config: bool, codec: str) -> None:
    assert codecs.audio_info(payload) == codecs.AudioInfo(config, codec)


def _aac(payload: bytes) -> tuple[int, int] | None:
    config = AacConfig.parse(payload)
    return None if config is None else (config.sample_rate, config.channels)


@pytest.mark.parametrize(
    ("asc", "expected"),
    [
        # AAC-LC (object type 2): 5 bits type, 4 bits rate index, 4 bits channels.
        (b"\x12\x10", (44100, 2)),
        (b"\x11\x88", (48000, 1)),
        (b"\x13\x90", (22050, 2)),
        (b"\x15\x88", (8000, 1)),
        (b"\x17\x88", (0, 1)),  # rate index 15 means an explicit rate follows: unknown to us
    ],
    ids=hex_id,
)
def test_aac_config(asc: bytes, expected: tuple[int, int]) -> None:
    assert _aac(b"\xaf\x00" + asc) == expected


def test_aac_config_too_short() -> None:
    assert AacConfig.parse(b"\xaf\x00\x12") is None


# ---------------------------------------------------------------- real SPS from ffmpeg


def ffmpeg_flv(tmp: Path, size: str, *options: str) -> list[Tag]:
    path = tmp / f"{size}.flv"
    subprocess.run(
        [FFMPEG or "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", f"testsrc=size={size}:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
         "-frames:v", "2", "-t", "0.2", "-c:v", "libx264", "-preset", "ultrafast", *options,
         "-c:a", "aac", "-ac", "1", "-f", "flv", str(path)],
        check=True, timeout=60,
    )  # fmt: skip
    reader = FlvReader()
    tags = reader.feed(path.read_bytes())
    assert reader.has_audio and reader.has_video
    return tags


@needs_ffmpeg
@pytest.mark.parametrize(
    ("size", "options", "expected"),
    [
        ("320x240", ("-pix_fmt", "yuv420p"), (320, 240)),
        ("320x240", ("-pix_fmt", "yuv420p", "-profile:v", "baseline"), (320, 240)),
        # Not a multiple of 16: the SPS crops a 656x368 picture.
        ("642x362", ("-pix_fmt", "yuv420p"), (642, 362)),
        # High 4:4:4: chroma_format_idc 3, so cropping counts in single pixels.
        ("642x362", ("-pix_fmt", "yuv444p"), (642, 362)),
        ("642x362", ("-pix_fmt", "yuv422p"), (642, 362)),
        # Interlaced: frame_mbs_only_flag 0, heights in field macroblock pairs.
        ("640x360", ("-pix_fmt", "yuv420p", "-x264opts", "interlaced=1"), (640, 360)),
    ],
)
def test_avc_dimensions_from_ffmpeg(
    tmp_path: Path, size: str, options: tuple[str, ...], expected: tuple[int, int]
) -> None:
    tags = ffmpeg_flv(tmp_path, size, *options)
    assert tags[0].kind == SCRIPT
    video = [t for t in tags if t.kind == VIDEO]
    audio = [t for t in tags if t.kind == AUDIO]
    config = video[0].payload
    assert codecs.video_info(config) == codecs.VideoInfo(False, True, "h264")
    assert h264.dimensions(config) == expected
    assert codecs.video_info(video[1].payload) == codecs.VideoInfo(True, False, "h264")
    assert codecs.audio_info(audio[0].payload) == codecs.AudioInfo(True, "aac")
    assert _aac(audio[0].payload) == (48000, 1)
    assert not codecs.audio_info(audio[1].payload).config
    assert [t.timestamp for t in video] == sorted(t.timestamp for t in video)


def test_avc_dimensions_on_garbage() -> None:
    assert h264.dimensions(b"") is None
    assert h264.dimensions(b"\x17\x00\x00\x00\x00") is None
    # numOfSequenceParameterSets 0
    assert h264.dimensions(b"\x17\x00\x00\x00\x00\x01\x64\x00\x1f\xff\xe0\x00\x00") is None
    # An SPS that ends in the middle of its fields.
    assert h264.dimensions(b"\x17\x00\x00\x00\x00\x01\x64\x00\x1f\xff\xe1\x00\x04\x67\x64\x00\x1f") is None
    # All-zero bits: an exp-Golomb code that never ends.
    sps = b"\x67\x64\x00\x1f" + bytes(64)
    record = b"\x01\x64\x00\x1f\xff\xe1" + struct.pack(">H", len(sps)) + sps
    assert h264.dimensions(b"\x17\x00\x00\x00\x00" + record) is None


# ---------------------------------------------------------------- VP8 from libvpx


def libvpx_frames(width: int, height: int, count: int) -> list[tuple[bool, bytes]]:
    """(keyframe as the encoder says, frame): VP8 as a WebRTC publisher sends it (libvpx through PyAV)."""
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base, encoder.gop_size = Fraction(1, 1000), 10
    frames = []
    for i in range(count):
        picture = av.VideoFrame(width, height, "yuv420p")
        picture.pts = i * 40
        frames += [(p.is_keyframe, bytes(p)) for p in encoder.encode(picture)]
    return frames + [(p.is_keyframe, bytes(p)) for p in encoder.encode(None)]


def test_vp8_frames_become_enhanced_rtmp_tags() -> None:
    encoded = libvpx_frames(322, 180, 25)
    frames = [frame for _, frame in encoded]
    assert [vp8.is_keyframe(f) for f in frames] == [key for key, _ in encoded]
    assert sum(key for key, _ in encoded) > 1 and not encoded[1][0]
    assert vp8.dimensions(frames[0]) == (322, 180) and vp8.dimensions(frames[1]) is None
    packer = vp8.Vp8ToFlv()
    assert packer.push(frames[1]) == [] and packer.needs_keyframe, "nothing decodable before a keyframe"
    out = [item for frame in frames for item in packer.push(frame)]
    assert not packer.needs_keyframe
    (start_key, start), (first_key, first), (_, second) = out[:3]
    assert codecs.video_info(start) == codecs.VideoInfo(False, True, "vp8") and not start_key
    assert codecs.video_info(first) == codecs.VideoInfo(True, False, "vp8") and first_key
    assert codecs.video_info(second) == codecs.VideoInfo(False, False, "vp8")
    assert codecs.coded_frame(first, any_codec=True) == (0, frames[0])
    assert codecs.coded_frame(first) is None, "not a frame the H.264 paths take"
    assert [key for key, _ in out[1:]] == [vp8.is_keyframe(f) for f in frames]
    tracks = Tracks()
    assert [tracks.video(body) for _, body in out[:3]] == [(False, True), (True, False), (False, False)]
    assert (tracks.video_codec, tracks.width, tracks.height) == ("vp8", 322, 180), "the size from the keyframe"


@pytest.mark.parametrize(
    ("frame", "keyframe"),
    [
        (b"", False),
        (b"\x00", False),
        (b"\x10\x02\x00\x9d\x01\x2a", False),  # cut before the size
        (b"\x11\x02\x00\x9d\x01\x2a\x40\x01\xf0\x00", False),  # an inter frame
        (b"\x10\x02\x00\x00\x00\x00\x40\x01\xf0\x00", False),  # no start code
        (b"\x10\x02\x00\x9d\x01\x2a\x00\x00\x00\x00", True),  # a keyframe of 0x0
    ],
    ids=hex_id,
)
def test_vp8_headers_that_say_no_size(frame: bytes, keyframe: bool) -> None:
    """No size, never an exception; the frames pass unchanged (decoding them is the transcoder's problem)."""
    assert vp8.dimensions(frame) is None
    assert vp8.is_keyframe(frame) == keyframe
    assert len(vp8.Vp8ToFlv().push(frame)) == (2 if keyframe else 0)


def test_vp8_size_from_a_keyframe_header() -> None:
    assert vp8.dimensions(b"\x10\x02\x00\x9d\x01\x2a\x40\x01\xf0\x00") == (320, 240)
    # The two scaling bits above each 14-bit size are not part of it.
    assert vp8.dimensions(b"\x10\x02\x00\x9d\x01\x2a\x40\xc1\xf0\x40") == (320, 240)


# ---------------------------------------------------------------- RFC 6381 codec strings (HLS CODECS)


@needs_ffmpeg
@pytest.mark.parametrize(
    ("size", "rate", "preset", "kbit"),
    [
        ("854x480", 30, "veryfast", 960),
        ("640x360", 30, "veryfast", 600),
        ("426x240", 25, "veryfast", 400),
        ("1280x720", 60, "veryfast", 2160),
        ("1920x1080", 30, "faster", 4200),
        ("1280x720", 30, "ultrafast", 2160),
    ],
)
def test_codec_string_frame_rate_and_the_level_x264_picks(
    tmp_path: Path, size: str, rate: int, preset: str, kbit: int
) -> None:
    """x264 picks the lowest level that holds the picture size, macroblock rate, reference frames and
    VBV; ``level_for`` picks the same one, so a master playlist can name a rendition's codec before the
    encoder has made its first picture."""
    path = tmp_path / "x264.flv"
    subprocess.run(
        [FFMPEG or "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}", "-frames:v", "2", "-c:v", "libx264",
         "-preset", preset, "-tune", "zerolatency", "-pix_fmt", "yuv420p",
         "-x264-params", f"vbv-maxrate={kbit}:vbv-bufsize={kbit}", "-f", "flv", str(path)],
        check=True, timeout=60,
    )  # fmt: skip
    config = next(t for t in FlvReader().feed(path.read_bytes()) if t.kind == VIDEO).payload
    width, height = map(int, size.split("x"))
    baseline = preset == "ultrafast"  # no CABAC, no 8x8 transform: Constrained Baseline
    refs = 2 if preset == "faster" else 1
    level = h264.level_for(width, height, rate, kbit, refs, high=not baseline)
    expected = h264.avc1(0x42, 0xC0, level) if baseline else h264.avc1(0x64, 0, level)
    assert h264.codec_string(config) == expected
    assert h264.frame_rate(config) == rate


def test_avc_codec_string_and_frame_rate_on_garbage() -> None:
    assert h264.codec_string(b"\x17\x00\x00\x00\x00\x01\x64") is None
    assert h264.frame_rate(b"\x17\x00\x00\x00\x00") is None
    # An SPS that stops before its VUI says no frame rate.
    sps = b"\x67\x42\x00\x1f\xaa\xbb"
    record = b"\x01\x42\x00\x1f\xff\xe1" + struct.pack(">H", len(sps)) + sps + b"\x00"
    assert h264.codec_string(b"\x17\x00\x00\x00\x00" + record) == "avc1.42001f"
    assert h264.frame_rate(b"\x17\x00\x00\x00\x00" + record) is None


def test_hevc_codec_string_as_iso_14496_15_spells_it() -> None:
    # Main profile (compatible with Main and Main 10), Main tier, level 3.1, progressive and frame-only.
    record = bytes((1, 0x01, 0x60, 0, 0, 0, 0xB0, 0, 0, 0, 0, 0, 93)) + bytes(10)
    assert hevc.codec_string(b"\x1c\x00\x00\x00\x00" + record) == "hvc1.1.6.L93.B0"
    # Main 10, High tier, level 5.1, two constraint bytes.
    record = bytes((1, 0x22, 0x20, 0, 0, 0, 0x90, 0x01, 0, 0, 0, 0, 153)) + bytes(10)
    assert hevc.codec_string(b"\x1c\x00\x00\x00\x00" + record) == "hvc1.2.4.H153.90.1"
    assert hevc.codec_string(b"\x1c\x00\x00\x00\x00\x01") is None


@pytest.mark.parametrize(
    ("asc", "codec"),
    [(b"\x12\x10", "mp4a.40.2"), (b"\x2b\x92\x08\x00", "mp4a.40.5"), (b"\xeb\x09\x88\x00", "mp4a.40.29")],
    ids=hex_id,
)
def test_aac_codec_string_names_the_audio_object_type(asc: bytes, codec: str) -> None:
    config = AacConfig.parse(b"\xaf\x00" + asc)
    assert config is not None and config.codec_string == codec
