"""Issue 16, finding #3: every codec-config parser (AVC, HEVC, AAC, VP8, the FLV and Enhanced RTMP tag
headers) and the muxers that take a sequence header answer "invalid" (None, or a track left out) for
any input and never raise. Property tests: random bytes and real headers with bit flips, truncations,
splices and huge length fields; a few thousand examples in seconds."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.formats import codecs, h264, hevc, vp8
from relay.formats.aac import MAX_ADTS_FRAME, AacConfig
from relay.formats.fmp4 import Fmp4Muxer
from relay.formats.mpegts import TsMuxer
from relay.formats.packet import AUDIO, VIDEO, Packet

# Real sequence headers as FLV tags carry them: x264 baseline 320x240 (the fMP4 tests' one), libx265
# 320x240 (made by tests/hevc.py from a libx265 frame) as legacy codec id 12, and AAC-LC 44.1 kHz stereo.
AVC = bytes.fromhex("17000000000142c00dffe100166742c00dda0507ec0440000003004000000c83c50aa801000468ce0fc8")
HEVC_RECORD = bytes.fromhex(
    "0104080000009e08000000003cf000fcfdf8f800000f03a00001001740010c01ffff0408000003009e0800000300003c9598"
    "09a10001002b4201010408000003009e0800000300003c90014101e2cb2b349265780b7020200040000003004000000642a2"
    "000100084401c172860c4624"
)
HEVC = b"\x1c\x00\x00\x00\x00" + HEVC_RECORD
EX_HEVC = b"\x90hvc1" + HEVC_RECORD  # Enhanced RTMP SequenceStart
EX_AVC = b"\x90avc1" + AVC[5:]
AAC = b"\xaf\x00\x12\x10"
SEEDS = (AVC, HEVC, EX_HEVC, EX_AVC, AAC, vp8.sequence_start())

FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real header, mutated as a hostile or broken encoder would: bits flipped, bytes overwritten
    (length fields and counts made huge), cut short, spliced or extended with junk."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.integers(0, 4))
        pos = draw(st.integers(0, len(data) - 1)) if data else 0
        if action == 0 and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif action == 1 and data:
            data[pos] = draw(st.sampled_from((0x00, 0x01, 0x7F, 0x80, 0xFF)))
        elif action == 2:
            del data[draw(st.integers(0, len(data))) :]
        elif action == 3:
            data[pos:pos] = draw(st.binary(max_size=16))
        else:
            data[pos : pos + 2] = b"\xff\xff"
    return bytes(data)


inputs = st.one_of(st.binary(max_size=300), mutated())


def parse_everything(payload: bytes) -> None:
    """Every parser of a sequence header or a frame header, on ``payload``; each must answer."""
    codecs.video_info(payload)
    codecs.audio_info(payload)
    codecs.coded_frame(payload)
    codecs.coded_frame(payload, any_codec=True)
    config = h264.AvcConfig.parse(payload)
    if config is not None:
        assert config.sps, "a parsed AVC configuration has an SPS"
        config.annexb(payload, keyframe=True)
    for size in (h264.dimensions(payload), hevc.dimensions(payload), vp8.dimensions(payload)):
        assert size is None or (0 < size[0] <= 16384 and 0 < size[1] <= 16384), size
    h264.declared_size(payload)
    rate = h264.frame_rate(payload)
    assert rate is None or 0 < rate <= 1000
    h264.codec_string(payload)
    hevc.declared_size(payload)
    hevc.codec_string(payload)
    hevc.parameter_sets(payload[5:])
    assert hevc.length_size(payload[5:]) in (1, 2, 3, 4)
    vp8.is_keyframe(payload)
    aac = AacConfig.parse(payload)
    if aac is not None:
        assert aac.codec_string.startswith("mp4a.40.")
        assert aac.sample_rate >= 0
        for size in (0, 1, 1000, MAX_ADTS_FRAME):
            header = aac.adts(size)
            assert len(header) == 7 and header[:2] == b"\xff\xf1"


@FUZZ
@given(inputs)
def test_codec_parsers_answer_any_input_and_never_raise(payload: bytes) -> None:
    parse_everything(payload)


@FUZZ
@given(inputs, st.sampled_from((VIDEO, AUDIO)))
def test_muxers_leave_out_a_track_they_cannot_read_and_never_raise(payload: bytes, kind: int) -> None:
    """What an HLS viewer and a recording do with a sequence header: configure, init segment, a part."""
    frames = [Packet(VIDEO, 40, AVC[:1] + b"\x01\x00\x00\x00" + b"\x00\x00\x00\x02\x65\x88", keyframe=True)]
    frames.append(Packet(AUDIO, 40, b"\xaf\x01" + bytes(300)))
    fmp4 = Fmp4Muxer()
    fmp4.configure(Packet(kind, 0, payload, config=True))
    fmp4.init_segment()
    fmp4.part(frames, 80, True)
    ts = TsMuxer()
    ts.configure(Packet(kind, 0, payload, config=True))
    ts.part(frames, 80, True)


def test_the_seeds_are_real_headers() -> None:
    """The mutations start from headers the parsers read, so they reach past the first length check."""
    assert h264.dimensions(AVC) == (320, 240)
    assert hevc.dimensions(HEVC) == hevc.dimensions(EX_HEVC) == (320, 240)
    parsed = AacConfig.parse(AAC)
    assert parsed is not None and (parsed.sample_rate, parsed.channels) == (44100, 2)


def test_an_aac_frame_too_big_for_adts_is_left_out_of_hls() -> None:
    """ADTS has 13 bits of frame length: a bigger "AAC frame" (an 8 MiB audio message) cannot be carried,
    and once grew the ADTS header cache by one entry per size."""
    ts = TsMuxer(has_video=False)
    ts.configure(Packet(AUDIO, 0, AAC, config=True))
    huge = bytes(ts.part([Packet(AUDIO, 0, b"\xaf\x01" + bytes(600_000))], 100, True))
    assert len(huge) < 600_000, "the oversized frame is not muxed"
    fine = bytes(ts.part([Packet(AUDIO, 100, b"\xaf\x01" + bytes(300))], 200, True))
    assert b"\xff\xf1" in fine, "a normal frame after it is"


def ue(value: int) -> str:
    """An Exp-Golomb code, as bits."""
    code = bin(value + 1)[2:]
    return "0" * (len(code) - 1) + code


def avc_header_declaring(width_mbs: int, height_mbs: int) -> bytes:
    """An FLV AVC sequence header whose baseline SPS declares ``width_mbs`` x ``height_mbs`` macroblocks."""
    bits = "".join((ue(0), ue(0), ue(2), ue(1), "0", ue(width_mbs - 1), ue(height_mbs - 1), "1", "1", "0", "0", "1"))
    bits += "0" * (-len(bits) % 8)
    sps = b"\x67\x42\xc0\x1e" + int(bits, 2).to_bytes(len(bits) // 8, "big")
    record = b"\x01\x42\xc0\x1e\xff\xe1" + len(sps).to_bytes(2, "big") + sps + b"\x01\x00\x04\x68\xce\x0f\xc8"
    return b"\x17\x00\x00\x00\x00" + record


def test_an_sps_declaring_a_picture_past_65535_leaves_the_size_out_of_the_init_segment() -> None:
    """The probe's mutated SPS: 5000 macroblocks (80,000 pixels) wide once made fmp4 raise struct.error."""
    assert h264.declared_size(avc_header_declaring(20, 15)) == (320, 240), "the SPS is read as written"
    huge = avc_header_declaring(5000, 15)
    assert h264.declared_size(huge) == (80000, 240)
    assert h264.dimensions(huge) is None, "not a picture's size"
    muxer = Fmp4Muxer()
    muxer.configure(Packet(VIDEO, 0, huge, config=True))
    assert muxer.has_video and b"avc1" in muxer.init_segment(), "the track stays, its size unknown (0x0)"
