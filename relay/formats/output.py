"""Output formats: how a packet is encoded for a kind of viewer, and how a batch is framed.

A format's ``encode`` is cached on the packet, so a packet is serialized once per format
however many viewers receive it; ``frame`` wraps a whole merged batch once per flush.
"""

from __future__ import annotations

from typing import Protocol

from relay.formats import flv
from relay.formats.packet import CSID_BY_KIND, MEDIA_STREAM_ID, OUT_CHUNK_SIZE, Packet
from relay.formats.rtmp_chunk import encode_message


class OutputFormat(Protocol):
    name: str  # the protocol name viewers are counted under

    def encode(self, packet: Packet) -> bytes: ...

    def frame(self, data: bytes) -> bytes: ...

    def preamble(self, has_audio: bool, has_video: bool) -> bytes: ...


class FlvFormat:
    """FLV over a plain byte stream: close-delimited HTTP."""

    name = "http-flv"

    def encode(self, packet: Packet) -> bytes:
        return packet.flv_tag

    def frame(self, data: bytes) -> bytes:
        return data

    def preamble(self, has_audio: bool, has_video: bool) -> bytes:
        return flv.header(has_audio, has_video)


class ChunkedFlvFormat(FlvFormat):
    """FLV in HTTP/1.1 chunked transfer coding: one chunk per merged batch."""

    def frame(self, data: bytes) -> bytes:
        return b"%x\r\n%b\r\n" % (len(data), data)


class RelayFlvFormat(ChunkedFlvFormat):
    """Chunked HTTP-FLV to another node of the cluster, which pulls the stream (counted apart from viewers)."""

    name = "relay"


class WebSocketFlvFormat(FlvFormat):
    """FLV in WebSocket binary messages (server frames are unmasked): one message per batch."""

    name = "ws-flv"

    def frame(self, data: bytes) -> bytes:
        n = len(data)
        if n < 126:
            head = bytes((0x82, n))
        elif n < 65536:
            head = b"\x82\x7e" + n.to_bytes(2, "big")
        else:
            head = b"\x82\x7f" + n.to_bytes(8, "big")
        return head + data


class RtmpFormat:
    """RTMP chunks on the viewer's play stream."""

    name = "rtmp"

    def __init__(self, stream_id: int = MEDIA_STREAM_ID) -> None:
        self.stream_id = stream_id

    def encode(self, packet: Packet) -> bytes:
        if self.stream_id == MEDIA_STREAM_ID:
            return packet.rtmp_chunks
        return encode_message(
            CSID_BY_KIND[packet.kind],
            packet.timestamp,
            packet.kind,
            self.stream_id,
            packet.payload,
            OUT_CHUNK_SIZE,
        )

    def frame(self, data: bytes) -> bytes:
        return data

    def preamble(self, has_audio: bool, has_video: bool) -> bytes:
        return b""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RtmpFormat) and other.stream_id == self.stream_id

    def __hash__(self) -> int:
        return hash(("rtmp", self.stream_id))


FLV = FlvFormat()
CHUNKED_FLV = ChunkedFlvFormat()
RELAY_FLV = RelayFlvFormat()
WS_FLV = WebSocketFlvFormat()
RTMP = RtmpFormat()
