"""A media packet as it travels through the hub, serialized lazily and at most once per format."""

from __future__ import annotations

from relay.formats import flv
from relay.formats.rtmp_chunk import encode_message

AUDIO = flv.AUDIO
VIDEO = flv.VIDEO
DATA = flv.SCRIPT

# Chunk stream ids and message stream id that every RTMP viewer receives media on; fixed,
# so that one packet's chunk bytes are the same for all of them.
CSID_DATA = 5
CSID_AUDIO = 6
CSID_VIDEO = 7
MEDIA_STREAM_ID = 1
OUT_CHUNK_SIZE = 60000

CSID_BY_KIND = {AUDIO: CSID_AUDIO, VIDEO: CSID_VIDEO, DATA: CSID_DATA}


class Packet:
    """One audio, video or script-data message. ``payload`` is the FLV tag body."""

    __slots__ = ("_flv", "_rtmp", "config", "keyframe", "kind", "payload", "timestamp")

    def __init__(self, kind: int, timestamp: int, payload: bytes, keyframe: bool = False, config: bool = False) -> None:
        self.kind = kind
        self.timestamp = timestamp
        self.payload = payload
        self.keyframe = keyframe
        self.config = config
        self._flv: bytes | None = None
        self._rtmp: bytes | None = None

    @property
    def flv_tag(self) -> bytes:
        data = self._flv
        if data is None:
            data = self._flv = flv.encode_tag(self.kind, self.timestamp, self.payload)
        return data

    @property
    def rtmp_chunks(self) -> bytes:
        data = self._rtmp
        if data is None:
            data = self._rtmp = encode_message(
                CSID_BY_KIND[self.kind],
                self.timestamp,
                self.kind,
                MEDIA_STREAM_ID,
                self.payload,
                OUT_CHUNK_SIZE,
            )
        return data

    def retimed(self, timestamp: int) -> Packet:
        return Packet(self.kind, timestamp, self.payload, self.keyframe, self.config)

    def __repr__(self) -> str:
        flags = ("K" if self.keyframe else "") + ("C" if self.config else "")
        return f"<Packet {self.kind} ts={self.timestamp} {len(self.payload)}B {flags}>"
