"""VP8 as Enhanced RTMP carries it (FourCC ``vp08``): the sequence start, coded frames, and what a
frame's header says (keyframe or not, the picture size of a keyframe, RFC 6386 section 9.1).

WebRTC publishers send VP8 when they cannot send H.264; their frames go into the hub unchanged, as
Enhanced RTMP video tags, and the transcoder makes the H.264 rendition that players need.
Sans-I/O, no decoding. Parsers return None for what they cannot read; they never raise on input.
"""

from __future__ import annotations

from relay.formats.bits import plausible

FOURCC = b"vp08"
_KEYFRAME_START_CODE = b"\x9d\x01\x2a"
# Enhanced RTMP ExVideoTagHeader first bytes: IsExHeader | FrameType << 4 | PacketType.
_SEQUENCE_START = bytes((0x80 | 1 << 4 | 0,)) + FOURCC
_KEY_FRAME = bytes((0x80 | 1 << 4 | 3,)) + FOURCC  # CodedFramesX: no composition offset
_INTER_FRAME = bytes((0x80 | 2 << 4 | 3,)) + FOURCC
# The sequence start's body, a VPCodecConfigurationRecord as FFmpeg writes one for vp09 (the vpcC
# box's version 1 and flags first): profile 0, level undefined, 8 bits, 4:2:0, limited range, colour
# primaries, transfer and matrix unspecified (2), no codec initialization data. VP8 decoders need none
# of it; it is there because the Enhanced RTMP specification puts a record in every sequence start.
_CONFIG_RECORD = b"\x01\x00\x00\x00" + bytes((0, 0, 8 << 4 | 1 << 1, 2, 2, 2)) + b"\x00\x00"


def is_keyframe(frame: bytes) -> bool:
    """Whether a VP8 frame is a keyframe: bit 0 of its frame tag clear, and the keyframe start code."""
    return len(frame) >= 10 and not frame[0] & 1 and frame[3:6] == _KEYFRAME_START_CODE


def dimensions(frame: bytes) -> tuple[int, int] | None:
    """The picture size a VP8 keyframe declares (14 bits each; the 2 scaling bits ignored); None for
    another frame or a size no picture has."""
    if not is_keyframe(frame):
        return None
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return plausible((width, height))


def sequence_start() -> bytes:
    """The Enhanced RTMP video tag body that starts a VP8 sequence."""
    return _SEQUENCE_START + _CONFIG_RECORD


class Vp8ToFlv:
    """Turns VP8 frames into Enhanced RTMP video tag bodies, the sequence start before the first
    keyframe. Frames before the first keyframe cannot be decoded and are dropped (``needs_keyframe``
    tells the caller to ask for one). VP8 has no parameter sets: a keyframe alone changes the size."""

    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started = False

    @property
    def needs_keyframe(self) -> bool:
        return not self.started

    def push(self, frame: bytes) -> list[tuple[bool, bytes]]:
        """(keyframe, FLV tag body) pairs for one frame."""
        if not frame:
            return []
        keyframe = is_keyframe(frame)
        out: list[tuple[bool, bytes]] = []
        if not self.started:
            if not keyframe:
                return out
            self.started = True
            out.append((False, sequence_start()))
        out.append((keyframe, (_KEY_FRAME if keyframe else _INTER_FRAME) + frame))
        return out
