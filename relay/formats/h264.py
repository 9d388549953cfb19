"""H.264 as FLV carries it: the AVC sequence header (AVCDecoderConfigurationRecord), the picture size and
frame rate its SPS declares, its RFC 6381 codec string (and the level an encoder picks for a picture
size), and access units between Annex-B (RTP, MPEG-TS) and AVCC (FLV, MP4) framing.

Sans-I/O, no decoding: NAL units are moved, never touched. Parsers return None for what they cannot
read; they never raise on input.
"""

from __future__ import annotations

import re
import struct

from relay.formats.bits import BitReader, nal_array, plausible, unescape

NAL_IDR = 5
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
# Left out of what WebRTC gets: AUDs, and SPS/PPS in band (they go before every keyframe instead).
_IN_BAND = frozenset((NAL_AUD, NAL_SPS, NAL_PPS))

_START = b"\x00\x00\x00\x01"
_LENGTH_FIELD = {4: struct.Struct(">I"), 2: struct.Struct(">H"), 1: struct.Struct(">B")}  # NAL unit lengths
_START_CODE = re.compile(b"\x00\x00\x00\x01|\x00\x00\x01")


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex-B byte stream, without start codes."""
    return [nal for nal in _START_CODE.split(data) if nal]


def avc_sequence_header(sps: bytes, pps: bytes) -> bytes:
    """FLV AVC sequence header: an AVCDecoderConfigurationRecord with one SPS and one PPS."""
    record = (
        bytes((1, sps[1], sps[2], sps[3], 0xFF, 0xE1))
        + len(sps).to_bytes(2, "big")
        + sps
        + b"\x01"
        + len(pps).to_bytes(2, "big")
        + pps
    )
    return b"\x17\x00\x00\x00\x00" + record


class AnnexBToFlv:
    """Turns depacketized access units into FLV video tag bodies, a sequence header first and again
    whenever the publisher's SPS or PPS change. Frames before the first SPS/PPS cannot be decoded
    and are dropped (``needs_keyframe`` tells the caller to ask for one)."""

    __slots__ = ("pps", "sps")

    def __init__(self) -> None:
        self.sps = b""
        self.pps = b""

    @property
    def needs_keyframe(self) -> bool:
        return not (self.sps and self.pps)

    def push(self, access_unit: bytes) -> list[tuple[bool, bytes]]:
        """(keyframe, FLV tag body) pairs for one access unit."""
        sps, pps = self.sps, self.pps
        keyframe = False
        body = []
        for nal in split_annexb(access_unit):
            kind = nal[0] & 0x1F
            if kind == NAL_SPS:
                sps = nal
            elif kind == NAL_PPS:
                pps = nal
            elif kind != NAL_AUD:
                keyframe = keyframe or kind == NAL_IDR
                body.append(len(nal).to_bytes(4, "big"))
                body.append(nal)
        out: list[tuple[bool, bytes]] = []
        if sps and pps and (sps, pps) != (self.sps, self.pps):
            if len(sps) < 4:
                return out
            self.sps, self.pps = sps, pps
            out.append((False, avc_sequence_header(sps, pps)))
        if body and not self.needs_keyframe:
            out.append((keyframe, (b"\x17\x01" if keyframe else b"\x27\x01") + b"\x00\x00\x00" + b"".join(body)))
        return out


class FlvToAnnexB:
    """Turns FLV AVC tag bodies into Annex-B access units for RTP, with SPS/PPS before every
    keyframe so that a WebRTC decoder can start at any of them."""

    __slots__ = ("config",)

    def __init__(self) -> None:
        self.config: AvcConfig | None = None

    def configure(self, payload: bytes) -> None:
        self.config = AvcConfig.parse(payload)

    def convert(self, data: bytes, keyframe: bool) -> bytes | None:
        """``data`` is a coded frame's length-prefixed NAL units; None without a configuration."""
        config = self.config
        if config is None:
            return None
        return config.annexb(data, keyframe, drop=_IN_BAND)


class AvcConfig:
    """SPS/PPS and the NAL length size of an AVCDecoderConfigurationRecord."""

    __slots__ = ("length_size", "parameter_sets", "pps", "sps")

    def __init__(self, length_size: int, sps: list[bytes], pps: list[bytes]) -> None:
        self.length_size = length_size
        self.sps = sps
        self.pps = pps
        self.parameter_sets = b"".join(_START + ps for ps in (*sps, *pps))

    @classmethod
    def parse(cls, payload: bytes) -> AvcConfig | None:
        """The configuration in an FLV AVC sequence header (legacy or Enhanced RTMP ``avc1``); None for
        anything that is not a whole AVCDecoderConfigurationRecord with at least one SPS."""
        record = payload[5:]
        if len(record) < 7:
            return None
        sets: list[list[bytes]] = [[], []]
        pos = 5
        for count_mask, found in zip((0x1F, 0xFF), sets, strict=True):
            if pos >= len(record):
                return None
            array = nal_array(record, pos + 1, record[pos] & count_mask)
            if array is None:
                return None
            found += array[0]
            pos = array[1]
        if not sets[0]:
            return None
        return cls((record[4] & 0x03) + 1, *sets)

    def annexb(
        self, data: bytes | memoryview, keyframe: bool, lead: bytes = b"", drop: frozenset[int] = frozenset()
    ) -> bytes:
        """Length-prefixed NAL units as one Annex-B access unit: ``lead`` first, then SPS/PPS before a
        keyframe, leaving out the NAL unit types in ``drop``."""
        pieces: list[bytes | memoryview] = []
        self.annexb_pieces(data, keyframe, lead, drop, pieces)
        return b"".join(pieces)

    def annexb_pieces(
        self,
        data: bytes | memoryview,
        keyframe: bool,
        lead: bytes,
        drop: frozenset[int],
        out: list[bytes | memoryview],
    ) -> int:
        """:meth:`annexb`'s pieces appended to ``out`` (views of ``data``, not copies); returns their length."""
        size = self.length_size
        out.append(lead)
        total = len(lead)
        if keyframe:
            out.append(self.parameter_sets)
            total += len(self.parameter_sets)
        pos = 0
        end = len(data)
        unpack = _LENGTH_FIELD[size].unpack_from if size in _LENGTH_FIELD else None
        while pos + size <= end:
            length = unpack(data, pos)[0] if unpack else int.from_bytes(data[pos : pos + size], "big")
            pos += size
            nal = data[pos : pos + length]
            pos += length
            if nal and nal[0] & 0x1F not in drop:
                out.append(_START)
                out.append(nal)
                total += 4 + len(nal)
        return total


def dimensions(payload: bytes) -> tuple[int, int] | None:
    """Picture size from an FLV AVC sequence header (its first SPS), if a picture can have it."""
    size = declared_size(payload)
    return plausible(size) if size else None


def declared_size(payload: bytes) -> tuple[int, int] | None:
    """The picture size that an FLV AVC sequence header's first SPS declares, believable or not (a
    transcoder refuses a source of 0x0 or 20000x20000); None when there is no SPS to read."""
    config = AvcConfig.parse(payload)
    if config is None or len(config.sps[0]) < 4:
        return None
    try:
        return _sps_size(BitReader(unescape(config.sps[0][1:])))
    except IndexError:
        return None


def frame_rate(payload: bytes) -> float | None:
    """The frame rate the first SPS of an FLV AVC sequence header declares in its VUI timing info
    (``time_scale / (2 * num_units_in_tick)``, as x264 and most encoders write it); None when it says none."""
    config = AvcConfig.parse(payload)
    if config is None or len(config.sps[0]) < 4:
        return None
    try:
        r = BitReader(unescape(config.sps[0][1:]))
        _sps_size(r)
        if not r.bit():  # vui_parameters_present_flag
            return None
        if r.bit() and r.bits(8) == 255:  # aspect_ratio_info_present_flag, aspect_ratio_idc Extended_SAR
            r.bits(32)
        if r.bit():  # overscan_info_present_flag
            r.bit()
        if r.bit():  # video_signal_type_present_flag
            r.bits(4)
            if r.bit():  # colour_description_present_flag
                r.bits(24)
        if r.bit():  # chroma_loc_info_present_flag
            r.ue()
            r.ue()
        if not r.bit():  # timing_info_present_flag
            return None
        ticks, scale = r.bits(32), r.bits(32)
    except IndexError:
        return None
    rate = scale / (2 * ticks) if ticks else 0.0
    return rate if 0 < rate <= 1000 else None


def codec_string(payload: bytes) -> str | None:
    """The RFC 6381 codec of an FLV AVC sequence header (``avc1.64001f``: profile, constraint flags and
    level, as its AVCDecoderConfigurationRecord repeats them from the SPS); None when it is no such header."""
    record = payload[5:]
    if len(payload) < 9 or AvcConfig.parse(payload) is None:
        return None
    return avc1(record[1], record[2], record[3])


def avc1(profile: int, constraints: int, level: int) -> str:
    return f"avc1.{profile:02x}{constraints:02x}{level:02x}"


# H.264 Table A-1 by level_idc: MaxMBPS (macroblocks/s), MaxFS (macroblocks), MaxDpbMbs, MaxBR (kbit/s,
# Baseline and Main; High may go 1.25x).
_LEVELS = (
    (10, 1485, 99, 396, 64),
    (11, 3000, 396, 900, 192),
    (12, 6000, 396, 2376, 384),
    (13, 11880, 396, 2376, 768),
    (20, 11880, 396, 2376, 2000),
    (21, 19800, 792, 4752, 4000),
    (22, 20250, 1620, 8100, 4000),
    (30, 40500, 1620, 8100, 10000),
    (31, 108000, 3600, 18000, 14000),
    (32, 216000, 5120, 20480, 20000),
    (40, 245760, 8192, 32768, 20000),
    (41, 245760, 8192, 32768, 50000),
    (42, 522240, 8704, 34816, 50000),
    (50, 589824, 22080, 110400, 135000),
    (51, 983040, 36864, 184320, 240000),
    (52, 2073600, 36864, 184320, 240000),
    (60, 4177920, 139264, 696320, 240000),
    (61, 8355840, 139264, 696320, 480000),
    (62, 16711680, 139264, 696320, 800000),
)


def level_for(width: int, height: int, fps: float, max_kbit: int, refs: int = 1, high: bool = True) -> int:
    """The lowest level_idc whose limits hold ``width``x``height`` at ``fps`` with ``refs`` reference frames
    and a VBV of ``max_kbit``: the level x264 writes when none is asked for (its frame size, macroblock
    rate, DPB and VBV checks)."""
    mb_width, mb_height = -(-width // 16), -(-height // 16)
    frame = mb_width * mb_height
    bitrate_factor = 1.25 if high else 1.0
    for level, mbps, max_frame, dpb, max_br in _LEVELS:
        if (
            frame <= max_frame
            and max(mb_width, mb_height) ** 2 <= 8 * max_frame
            and frame * fps <= mbps
            and frame * refs <= dpb
            and max_kbit <= max_br * bitrate_factor
        ):
            return level
    return _LEVELS[-1][0]


def _sps_size(r: BitReader) -> tuple[int, int]:
    """Reads an SPS without its NAL header byte (H.264 7.3.2.1.1) up to its VUI: the picture size."""
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
