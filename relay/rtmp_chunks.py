"""RTMP chunk serialization for output: one message in, the bytes of its chunks out.

Every message is written with a type-0 header (absolute timestamp) followed by type-3
continuation chunks, so the bytes depend only on the message, never on what a particular
connection sent before. That is what lets the hub serialize a packet once and write the
same ``bytes`` object to every RTMP viewer.
"""

from __future__ import annotations

import struct

EXTENDED_TIMESTAMP = 0xFFFFFF


def basic_header(fmt: int, csid: int) -> bytes:
    if csid < 2 or csid > 65599:
        raise ValueError(f"chunk stream id {csid} out of range")
    if csid < 64:
        return bytes(((fmt << 6) | csid,))
    if csid < 320:
        return bytes((fmt << 6, csid - 64))
    rest = csid - 64
    return bytes(((fmt << 6) | 1, rest & 0xFF, rest >> 8))


def encode_message(csid: int, timestamp: int, type_id: int, stream_id: int, payload: bytes, chunk_size: int) -> bytes:
    """Serialize one RTMP message as chunks of at most ``chunk_size`` payload bytes."""
    timestamp &= 0xFFFFFFFF
    length = len(payload)
    if length > 0xFFFFFF:
        raise ValueError(f"message of {length} bytes exceeds RTMP's 16 MiB limit")
    extended = timestamp >= EXTENDED_TIMESTAMP
    ts_field = EXTENDED_TIMESTAMP if extended else timestamp
    head = (
        basic_header(0, csid)
        + struct.pack(">I", ts_field)[1:]
        + length.to_bytes(3, "big")
        + bytes((type_id,))
        + stream_id.to_bytes(4, "little")
    )
    ext = timestamp.to_bytes(4, "big") if extended else b""
    if length <= chunk_size:
        return head + ext + payload
    cont = basic_header(3, csid) + ext
    parts = [head, ext, payload[:chunk_size]]
    view = memoryview(payload)
    for offset in range(chunk_size, length, chunk_size):
        parts.append(cont)
        parts.append(view[offset : offset + chunk_size])
    return b"".join(parts)
