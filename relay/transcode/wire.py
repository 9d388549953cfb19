"""What the server and its transcoding workers say to each other over their socket: compressed packets
and small JSON control messages, never raw pictures.

A message is ``length (u32) | type (u8) | body``; the length counts type and body. Media bodies have a
fixed header then the FLV tag body as it is:

- ``PACKET`` (server to worker): job u32, kind u8, flags u8, timestamp i64, sent u64 (when the server got
  it, monotonic nanoseconds: both processes read the same clock), payload.
- ``OUTPUT`` (worker to server): job u32, rung u8 (its index in the job's ladder), kind u8, flags u8,
  timestamp i64, sent u64 (of the source packet that made it), payload.
- ``OPEN``, ``SELECT``, ``NEW_PUBLISHER``, ``CLOSE`` (server to worker) and ``STATS`` (worker to
  server, once a second: the heartbeat): job u32 then JSON.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from relay.formats.packet import Packet

OPEN, SELECT, PACKET, NEW_PUBLISHER, CLOSE = 1, 2, 3, 4, 5
OUTPUT, STATS = 16, 17

_LENGTH = struct.Struct("<I")
_PACKET = struct.Struct("<IBBqQ")
_OUTPUT = struct.Struct("<IBBBqQ")
_JOB = struct.Struct("<I")
# Far above any real message (a 1080p keyframe is well under a megabyte): a larger length is a fault.
MAX_MESSAGE = 64 * 1024 * 1024

KEYFRAME, CONFIG = 1, 2


class WireError(ValueError):
    """A message that does not parse: the other side is broken, the connection is dropped."""


def _flags(packet: Packet) -> int:
    return (KEYFRAME if packet.keyframe else 0) | (CONFIG if packet.config else 0)


def packet_message(job: int, packet: Packet, sent_ns: int) -> bytes:
    payload = packet.payload
    head = _PACKET.pack(job, packet.kind, _flags(packet), packet.timestamp, sent_ns)
    return _LENGTH.pack(1 + len(head) + len(payload)) + bytes((PACKET,)) + head + payload


def output_message(job: int, rung: int, packet: Packet, sent_ns: int) -> bytes:
    payload = packet.payload
    head = _OUTPUT.pack(job, rung, packet.kind, _flags(packet), packet.timestamp, sent_ns)
    return _LENGTH.pack(1 + len(head) + len(payload)) + bytes((OUTPUT,)) + head + payload


def control_message(kind: int, job: int, data: Any = None) -> bytes:
    body = _JOB.pack(job) + (json.dumps(data, separators=(",", ":")).encode() if data is not None else b"")
    return _LENGTH.pack(1 + len(body)) + bytes((kind,)) + body


def read_packet(body: memoryview) -> tuple[int, Packet, int]:
    """(job, packet, sent ns) of a PACKET body."""
    job, kind, flags, timestamp, sent = _PACKET.unpack_from(body)
    return job, Packet(kind, timestamp, bytes(body[_PACKET.size :]), bool(flags & KEYFRAME), bool(flags & CONFIG)), sent


def read_output(body: memoryview) -> tuple[int, int, Packet, int]:
    """(job, rung index, packet, sent ns) of an OUTPUT body."""
    job, rung, kind, flags, timestamp, sent = _OUTPUT.unpack_from(body)
    payload = bytes(body[_OUTPUT.size :])
    return job, rung, Packet(kind, timestamp, payload, bool(flags & KEYFRAME), bool(flags & CONFIG)), sent


def read_control(body: memoryview) -> tuple[int, Any]:
    """(job, JSON data or None) of a control message body."""
    (job,) = _JOB.unpack_from(body)
    rest = bytes(body[_JOB.size :])
    return job, json.loads(rest) if rest else None


class Reader:
    """Splits a byte stream into ``(type, body)`` messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, memoryview]]:
        buffer = self._buffer
        buffer += data
        messages: list[tuple[int, memoryview]] = []
        offset = 0
        size = len(buffer)
        while size - offset >= 4:
            (length,) = _LENGTH.unpack_from(buffer, offset)
            if length < 1 or length > MAX_MESSAGE:
                raise WireError(f"a message of {length} bytes")
            if size - offset - 4 < length:
                break
            start = offset + 4
            messages.append((buffer[start], memoryview(bytes(buffer[start + 1 : start + length]))))
            offset = start + length
        if offset:
            del buffer[:offset]
        return messages
