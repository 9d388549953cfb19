"""What the hub needs to know about codecs: keyframes, sequence headers, names and picture size.

Covers legacy FLV (H.264 codec id 7, HEVC codec id 12 as Chinese CDNs use it, AAC and the
other SoundFormats) and Enhanced RTMP (FourCC ``avc1``/``hvc1``/``av01``/``vp09`` video,
FourCC audio such as ``Opus`` and ``mp4a``). Nothing here decodes media.
"""

from __future__ import annotations

from dataclasses import dataclass

VIDEO_CODEC_IDS = {2: "h263", 3: "screen", 4: "vp6", 5: "vp6a", 6: "screen2", 7: "h264", 12: "hevc"}
VIDEO_FOURCC = {b"avc1": "h264", b"hvc1": "hevc", b"av01": "av1", b"vp09": "vp9", b"vp08": "vp8"}
AUDIO_FORMATS = {
    0: "pcm",
    1: "adpcm",
    2: "mp3",
    3: "pcm_le",
    4: "nellymoser",
    5: "nellymoser",
    6: "nellymoser",
    7: "g711a",
    8: "g711u",
    10: "aac",
    11: "speex",
    14: "mp3",
}
AUDIO_FOURCC = {
    b"Opus": "opus",
    b"mp4a": "aac",
    b".mp3": "mp3",
    b"fLaC": "flac",
    b"ac-3": "ac3",
    b"ec-3": "eac3",
}
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)

# Enhanced RTMP video packet types
_EX_SEQUENCE_START = 0
_EX_CODED_FRAMES = 1
_EX_CODED_FRAMES_X = 3
_EX_MPEG2TS_SEQUENCE_START = 5

_HEVC_SPS = 33  # NAL unit type


@dataclass(slots=True)
class VideoInfo:
    keyframe: bool
    config: bool
    codec: str


@dataclass(slots=True)
class AudioInfo:
    config: bool
    codec: str


def video_info(payload: bytes) -> VideoInfo:
    if not payload:
        return VideoInfo(False, False, "")
    b0 = payload[0]
    if b0 & 0x80:  # Enhanced RTMP ExVideoTagHeader
        frame_type = (b0 >> 4) & 0x07
        packet_type = b0 & 0x0F
        codec = VIDEO_FOURCC.get(bytes(payload[1:5]), "")
        config = packet_type in (_EX_SEQUENCE_START, _EX_MPEG2TS_SEQUENCE_START)
        coded = packet_type in (_EX_CODED_FRAMES, _EX_CODED_FRAMES_X)
        return VideoInfo(frame_type == 1 and coded, config, codec)
    frame_type = b0 >> 4
    codec_id = b0 & 0x0F
    codec = VIDEO_CODEC_IDS.get(codec_id, "")
    packet_type = payload[1] if codec_id in (7, 12) and len(payload) > 1 else 1
    # AVCPacketType 0 is the sequence header, 2 the end of sequence: neither starts a GOP.
    return VideoInfo(frame_type == 1 and packet_type == 1, packet_type == 0, codec)


def coded_frame(payload: bytes) -> tuple[int, bytes] | None:
    """(composition time offset in ms, NAL units as they are) of an FLV H.264/HEVC coded frame, legacy
    or Enhanced RTMP; None for sequence headers, ends of sequence and other codecs' frames."""
    if len(payload) < 5:
        return None
    if payload[0] & 0x80:
        packet_type = payload[0] & 0x0F
        if bytes(payload[1:5]) not in (b"avc1", b"hvc1"):
            return None
        if packet_type == _EX_CODED_FRAMES_X:
            return 0, payload[5:]
        if packet_type == _EX_CODED_FRAMES and len(payload) >= 8:
            return int.from_bytes(payload[5:8], "big", signed=True), payload[8:]
        return None
    if payload[0] & 0x0F not in (7, 12) or payload[1] != 1:
        return None
    return int.from_bytes(payload[2:5], "big", signed=True), payload[5:]


def audio_info(payload: bytes) -> AudioInfo:
    if not payload:
        return AudioInfo(False, "")
    sound_format = payload[0] >> 4
    if sound_format == 9:  # Enhanced RTMP ExAudioTagHeader
        packet_type = payload[0] & 0x0F
        return AudioInfo(packet_type == 0, AUDIO_FOURCC.get(bytes(payload[1:5]), ""))
    codec = AUDIO_FORMATS.get(sound_format, "")
    return AudioInfo(sound_format == 10 and len(payload) > 1 and payload[1] == 0, codec)


def aac_config(payload: bytes) -> tuple[int, int] | None:
    """(sample rate, channels) from an FLV AAC sequence header."""
    if len(payload) < 4:
        return None
    asc = payload[2:]
    index = ((asc[0] & 0x07) << 1) | (asc[1] >> 7)
    channels = (asc[1] >> 3) & 0x0F
    rate = AAC_RATES[index] if index < len(AAC_RATES) else 0
    return rate, channels


def avc_dimensions(payload: bytes) -> tuple[int, int] | None:
    """Picture size from an FLV AVC sequence header (AVCDecoderConfigurationRecord's first SPS)."""
    record = payload[5:]
    if len(record) < 8 or record[5] & 0x1F == 0:
        return None
    sps_len = int.from_bytes(record[6:8], "big")
    sps = record[8 : 8 + sps_len]
    if len(sps) < 4:
        return None
    try:
        return _sps_dimensions(_unescape(sps[1:]))
    except IndexError:
        return None


def hevc_dimensions(payload: bytes) -> tuple[int, int] | None:
    """Picture size from an FLV HEVC sequence header (legacy codec id 12 or Enhanced RTMP ``hvc1``):
    the first SPS of its HEVCDecoderConfigurationRecord."""
    record = payload[5:]
    if len(record) < 23:
        return None
    pos = 23
    try:
        for _ in range(record[22]):
            nal_type = record[pos] & 0x3F
            count = int.from_bytes(record[pos + 1 : pos + 3], "big")
            pos += 3
            for _ in range(count):
                size = int.from_bytes(record[pos : pos + 2], "big")
                if nal_type == _HEVC_SPS:
                    return _hevc_sps_dimensions(_unescape(record[pos + 4 : pos + 2 + size]))
                pos += 2 + size
    except IndexError:
        return None
    return None


def _hevc_sps_dimensions(sps: bytes) -> tuple[int, int]:
    """``sps`` without its two-byte NAL header (H.265 7.3.2.2)."""
    r = _Bits(sps)
    r.bits(4)  # sps_video_parameter_set_id
    sub_layers = r.bits(3)  # sps_max_sub_layers_minus1
    r.bit()
    r.bits(96)  # general profile, tier, compatibility and constraint flags, level
    present = [(r.bit(), r.bit()) for _ in range(sub_layers)]
    if sub_layers:
        r.bits(2 * (8 - sub_layers))
    for profile, level in present:
        r.bits(88 * profile + 8 * level)
    r.ue()  # sps_seq_parameter_set_id
    chroma_format = r.ue()
    if chroma_format == 3:
        r.bit()
    width = r.ue()
    height = r.ue()
    crop = (r.ue(), r.ue(), r.ue(), r.ue()) if r.bit() else (0, 0, 0, 0)
    sub_w = 2 if chroma_format in (1, 2) else 1
    sub_h = 2 if chroma_format == 1 else 1
    return width - sub_w * (crop[0] + crop[1]), height - sub_h * (crop[2] + crop[3])


def _unescape(nal: bytes) -> bytes:
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


class _Bits:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def bit(self) -> int:
        byte = self.data[self.pos >> 3]
        value = (byte >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return value

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise IndexError("bad exp-golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        value = self.ue()
        return (value + 1) // 2 if value & 1 else -(value // 2)


def _sps_dimensions(sps: bytes) -> tuple[int, int]:
    r = _Bits(sps)
    profile = r.bits(8)
    r.bits(16)  # constraint flags, level
    r.ue()  # seq_parameter_set_id
    chroma_format = 1
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        chroma_format = r.ue()
        if chroma_format == 3:
            r.bit()
        r.ue()
        r.ue()
        r.bit()
        if r.bit():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format != 3 else 12):
                if r.bit():
                    last, nxt = 8, 8
                    for _ in range(16 if i < 6 else 64):
                        if nxt:
                            nxt = (last + r.se()) % 256
                        last = nxt or last
    r.ue()  # log2_max_frame_num
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.bit()
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()  # max_num_ref_frames
    r.bit()
    width_mbs = r.ue() + 1
    height_units = r.ue() + 1
    frame_mbs_only = r.bit()
    if not frame_mbs_only:
        r.bit()
    r.bit()  # direct_8x8_inference
    crop = (0, 0, 0, 0)
    if r.bit():
        crop = (r.ue(), r.ue(), r.ue(), r.ue())
    sub_w = 2 if chroma_format in (1, 2) else 1
    sub_h = 2 if chroma_format == 1 else 1
    if chroma_format == 0:
        sub_w = sub_h = 1
    width = width_mbs * 16 - sub_w * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * height_units * 16 - sub_h * (2 - frame_mbs_only) * (crop[2] + crop[3])
    return width, height
