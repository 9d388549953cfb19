"""H.264 between WebRTC and FLV: Annex-B access units (RTP, depacketized) and AVCC FLV video tags.

Sans-I/O, no decoding: NAL units are moved, never touched.
"""

from __future__ import annotations

import re

from relay.mpegts import AvcConfig

NAL_IDR = 5
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
# Left out of what WebRTC gets: AUDs, and SPS/PPS in band (they go before every keyframe instead).
_IN_BAND = frozenset((NAL_AUD, NAL_SPS, NAL_PPS))

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
        try:
            self.config = AvcConfig(payload)
        except (ValueError, IndexError):
            self.config = None

    def convert(self, data: bytes, keyframe: bool) -> bytes | None:
        """``data`` is a coded frame's length-prefixed NAL units; None without a configuration."""
        config = self.config
        if config is None:
            return None
        return config.annexb(data, keyframe, drop=_IN_BAND)
