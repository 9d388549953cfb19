"""RTMP message type ids, user control events and protocol control message builders."""

from __future__ import annotations

import struct

from relay.formats.rtmp_chunk import encode_message

SET_CHUNK_SIZE = 1
ABORT = 2
ACKNOWLEDGEMENT = 3
USER_CONTROL = 4
WINDOW_ACK_SIZE = 5
SET_PEER_BANDWIDTH = 6
AUDIO = 8
VIDEO = 9
DATA_AMF3 = 15
SHARED_OBJECT_AMF3 = 16
COMMAND_AMF3 = 17
DATA_AMF0 = 18
SHARED_OBJECT_AMF0 = 19
COMMAND_AMF0 = 20
AGGREGATE = 22

# User control event types
STREAM_BEGIN = 0
STREAM_EOF = 1
STREAM_DRY = 2
SET_BUFFER_LENGTH = 3
STREAM_IS_RECORDED = 4
PING_REQUEST = 6
PING_RESPONSE = 7

CSID_CONTROL = 2
CSID_COMMAND = 3


def control(type_id: int, payload: bytes) -> bytes:
    """A protocol control or user control message (chunk stream 2, message stream 0)."""
    return encode_message(CSID_CONTROL, 0, type_id, 0, payload, 128)


def set_chunk_size(size: int) -> bytes:
    return control(SET_CHUNK_SIZE, struct.pack(">I", size))


def acknowledgement(sequence: int) -> bytes:
    return control(ACKNOWLEDGEMENT, struct.pack(">I", sequence & 0xFFFFFFFF))


def window_ack_size(size: int) -> bytes:
    return control(WINDOW_ACK_SIZE, struct.pack(">I", size))


def set_peer_bandwidth(size: int, limit_type: int = 2) -> bytes:
    return control(SET_PEER_BANDWIDTH, struct.pack(">IB", size, limit_type))


def user_control(event: int, *values: int) -> bytes:
    return control(USER_CONTROL, struct.pack(">H", event) + b"".join(struct.pack(">I", v) for v in values))
