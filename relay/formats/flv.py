"""FLV container: tag writer and a sans-I/O tag reader.

The FLV tag body is exactly the RTMP message body for audio (8), video (9) and script
data (18), so the hub stores payloads once and both FLV and RTMP outputs wrap them.
"""

from __future__ import annotations

from dataclasses import dataclass

AUDIO = 8
VIDEO = 9
SCRIPT = 18

TAG_HEADER_SIZE = 11
MAX_TAG_SIZE = 16 * 1024 * 1024


class FlvError(ValueError):
    """Malformed FLV data."""


def header(has_audio: bool = True, has_video: bool = True) -> bytes:
    """The 9-byte FLV file header followed by PreviousTagSize0."""
    flags = (0x04 if has_audio else 0) | (0x01 if has_video else 0)
    return b"FLV\x01" + bytes((flags,)) + b"\x00\x00\x00\x09" + b"\x00\x00\x00\x00"


def encode_tag(kind: int, timestamp: int, payload: bytes) -> bytes:
    """One FLV tag with its trailing PreviousTagSize."""
    size = len(payload)
    timestamp &= 0xFFFFFFFF
    head = bytes(
        (
            kind,
            (size >> 16) & 0xFF,
            (size >> 8) & 0xFF,
            size & 0xFF,
            (timestamp >> 16) & 0xFF,
            (timestamp >> 8) & 0xFF,
            timestamp & 0xFF,
            timestamp >> 24,
            0,
            0,
            0,
        )
    )
    return b"".join((head, payload, (size + TAG_HEADER_SIZE).to_bytes(4, "big")))


@dataclass(slots=True)
class Tag:
    kind: int
    timestamp: int
    payload: bytes


class FlvReader:
    """Feed FLV bytes (file or HTTP-FLV body); get tags back."""

    def __init__(self, max_tag_size: int = MAX_TAG_SIZE) -> None:
        self._buf = bytearray()
        self._header_done = False
        self.max_tag_size = max_tag_size
        self.has_audio = False
        self.has_video = False

    def feed(self, data: bytes) -> list[Tag]:
        buf = self._buf
        buf += data
        pos = 0
        out: list[Tag] = []
        if not self._header_done:
            if len(buf) < 13:
                return out
            if buf[:3] != b"FLV":
                raise FlvError("not an FLV stream (no 'FLV' signature)")
            offset = int.from_bytes(buf[5:9], "big")
            if offset < 9 or offset > 1024:
                raise FlvError(f"bad FLV header size {offset}")
            if len(buf) < offset + 4:
                return out
            self.has_audio = bool(buf[4] & 0x04)
            self.has_video = bool(buf[4] & 0x01)
            pos = offset + 4
            self._header_done = True
        end = len(buf)
        while pos + TAG_HEADER_SIZE <= end:
            kind = buf[pos] & 0x1F
            size = (buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3]
            if size > self.max_tag_size:
                raise FlvError(f"tag of {size} bytes exceeds the limit")
            total = TAG_HEADER_SIZE + size + 4
            if pos + total > end:
                break
            ts = (buf[pos + 7] << 24) | (buf[pos + 4] << 16) | (buf[pos + 5] << 8) | buf[pos + 6]
            out.append(Tag(kind, ts, bytes(buf[pos + TAG_HEADER_SIZE : pos + TAG_HEADER_SIZE + size])))
            pos += total
        del buf[:pos]
        return out
