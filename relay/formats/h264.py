"""H.264 as FLV carries it: the AVC sequence header (AVCDecoderConfigurationRecord), the picture size its
SPS declares, and access units between Annex-B (RTP, MPEG-TS) and AVCC (FLV, MP4) framing.

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
        return _sps_size(unescape(config.sps[0][1:]))
    except IndexError:
        return None


def _sps_size(sps: bytes) -> tuple[int, int]:
    """``sps`` without its NAL header byte (H.264 7.3.2.1.1)."""
    r = BitReader(sps)
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
