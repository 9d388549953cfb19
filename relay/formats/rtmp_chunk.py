"""The RTMP chunk stream (sans-I/O), both ways: :class:`ChunkReader` takes bytes and gives reassembled
messages; :func:`encode_message` gives one message's chunks.

Reading handles all four chunk header formats, 1-3 byte basic headers, extended timestamps
(also on type-3 chunks, including the encoders that omit them on continuations),
Set Chunk Size up to 2^31-1 and Abort, applied at the exact byte where they take effect.
Memory is bounded: a message is at most 16 MiB by the format, only audio, video and aggregate
messages may be that big (``max_other_size`` caps the rest), and the bytes held for partially
received messages (and for a chunk still waiting for its body) are capped per connection and,
through a shared :class:`PendingBudget`, across all connections.

Writing puts every message in a type-0 header (absolute timestamp) followed by type-3 continuation
chunks, so the bytes depend only on the message, never on what a particular connection sent before.
That is what lets the hub serialize a packet once and write the same ``bytes`` object to every RTMP
viewer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SET_CHUNK_SIZE = 1
ABORT = 2

DEFAULT_CHUNK_SIZE = 128
MAX_CHUNK_SIZE = 0x7FFFFFFF
EXTENDED_TIMESTAMP = 0xFFFFFF


# Message types that may be big: audio, video and aggregate. Commands, data and control are small.
MEDIA_TYPES = frozenset((8, 9, 22))


class ChunkError(ValueError):
    """The peer broke the chunk stream format or a limit."""


@dataclass(slots=True)
class PendingBudget:
    """Bytes held in unfinished messages across every connection that shares it, and the cap on them:
    one connection's limit alone lets N connections hold N times it."""

    limit: int
    held: int = 0
    # Bytes that connections still held when they closed, a running total: after a flood, when the
    # server may give memory back to the system (ingest.heap).
    freed: int = 0


@dataclass(slots=True)
class Message:
    csid: int
    timestamp: int
    type_id: int
    stream_id: int
    payload: bytes


class _ChunkStream:
    __slots__ = ("delta", "extended", "length", "parts", "received", "stream_id", "timestamp", "type_id")

    def __init__(self) -> None:
        self.timestamp = 0
        self.delta = 0
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.extended = False
        self.parts: list[bytes] = []
        self.received = 0


class ChunkReader:
    def __init__(
        self,
        max_message_size: int = 16 * 1024 * 1024,
        max_pending_bytes: int = 32 * 1024 * 1024,
        max_chunk_streams: int = 64,
        max_other_size: int | None = None,
        budget: PendingBudget | None = None,
    ) -> None:
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self.max_message_size = max_message_size
        # Messages other than audio, video and aggregate: the owner lowers it (e.g. before connect).
        self.max_other_size = max_message_size if max_other_size is None else max_other_size
        self.max_pending_bytes = max_pending_bytes
        self.budget = budget
        # Counted in the budget but never failed by it: set for a publisher, whose own limit applies,
        # so that a flood of unauthenticated peers cannot make the server drop the streams it serves.
        self.budget_exempt = False
        self._accounted = 0  # what this reader has added to budget.held
        self.max_chunk_streams = max_chunk_streams
        self.bytes_received = 0
        self._buf = bytearray()
        self._streams: dict[int, _ChunkStream] = {}
        self._pending = 0

    def feed(self, data: bytes) -> list[Message]:
        """Consume ``data``; return the messages it completed, in order."""
        self.bytes_received += len(data)
        out: list[Message] = []
        if self._buf:
            buf = self._buf
            buf += data
            del buf[: self._parse(buf, out)]
        else:
            # The common case (nothing left over): parse the received bytes where they are.
            pos = self._parse(data, out)
            if pos < len(data):
                self._buf += data[pos:]
        held = self._pending + len(self._buf)
        if held != self._accounted:
            self._account(held)
        return out

    @property
    def held_bytes(self) -> int:
        """Bytes held for messages not yet complete: their parts plus a chunk waiting for its body."""
        return self._pending + len(self._buf)

    def _account(self, held: int) -> None:
        budget = self.budget
        if budget is not None:
            budget.held += held - self._accounted
        self._accounted = held
        if held > self.max_pending_bytes:
            raise ChunkError(f"{held} bytes held in unfinished messages; the limit is {self.max_pending_bytes}")
        if budget is not None and budget.held > budget.limit and not self.budget_exempt:
            raise ChunkError(f"the server's budget of {budget.limit} bytes for unfinished messages is spent")

    def release(self) -> None:
        """Give back everything held (the connection is gone): to the budget and to the allocator."""
        if self.budget is not None:
            self.budget.held -= self._accounted
            self.budget.freed += self._accounted
        self._accounted = self._pending = 0
        self._buf = bytearray()
        self._streams.clear()

    def _parse(self, buf: bytes | bytearray, out: list[Message]) -> int:
        """Append the complete messages in ``buf`` to ``out``; return how many bytes were used."""
        pos = 0
        end = len(buf)
        streams = self._streams
        while pos < end:
            start = pos
            b0 = buf[pos]
            fmt = b0 >> 6
            csid = b0 & 0x3F
            pos += 1
            if csid == 0:
                if pos + 1 > end:
                    pos = start
                    break
                csid = 64 + buf[pos]
                pos += 1
            elif csid == 1:
                if pos + 2 > end:
                    pos = start
                    break
                csid = 64 + buf[pos] + (buf[pos + 1] << 8)
                pos += 2
            cs = streams.get(csid)
            if cs is None:
                if fmt != 0 and fmt != 1:
                    raise ChunkError(f"chunk stream {csid} starts with a type-{fmt} header")
                if len(streams) >= self.max_chunk_streams:
                    raise ChunkError(f"more than {self.max_chunk_streams} chunk streams in use")
                cs = streams[csid] = _ChunkStream()
            header_len = (11, 7, 3, 0)[fmt]
            if pos + header_len > end:
                pos = start
                break
            if fmt == 3:
                ts_field = EXTENDED_TIMESTAMP if cs.extended else 0
            else:
                ts_field = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
            ext_ts = None
            ext_pos = pos + header_len
            if ts_field == EXTENDED_TIMESTAMP:
                if ext_pos + 4 > end:
                    pos = start
                    break
                ext_ts = int.from_bytes(buf[ext_pos : ext_pos + 4], "big")
                if fmt == 3 and cs.received and ext_ts != cs.delta:
                    # A continuation chunk from an encoder that omits the extended timestamp
                    # on type-3 chunks: these 4 bytes are payload, not a timestamp.
                    ext_ts = None
                else:
                    ext_pos += 4
            body_pos = ext_pos
            if fmt <= 1:
                length = (buf[pos + 3] << 16) | (buf[pos + 4] << 8) | buf[pos + 5]
                type_id = buf[pos + 6]
            else:
                length = cs.length
                type_id = cs.type_id
            if cs.received and fmt != 3:
                raise ChunkError(f"chunk stream {csid}: new message header before the previous message ended")
            # Checked on the header, before waiting for the body: with a huge chunk size the whole
            # message is one chunk, which must not be buffered first.
            if not cs.received:
                limit = self.max_message_size if type_id in MEDIA_TYPES else self.max_other_size
                if length > limit:
                    raise ChunkError(f"message of type {type_id} and {length} bytes exceeds the {limit} byte limit")
            remaining = length - cs.received if cs.received else length
            take = remaining if remaining < self.chunk_size else self.chunk_size
            if body_pos + take > end:
                pos = start
                break
            # The whole chunk is present: commit its header.
            if not cs.received:
                value = ext_ts if ext_ts is not None else ts_field
                # As in FFmpeg and SRS, a type-0 header's timestamp also serves as the delta
                # that a following type-3 message header repeats.
                if fmt == 0:
                    cs.stream_id = int.from_bytes(buf[pos + 7 : pos + 11], "little")
                    cs.timestamp = value
                    cs.delta = value
                elif fmt == 3:
                    cs.timestamp = (cs.timestamp + cs.delta) & 0xFFFFFFFF
                else:
                    cs.delta = value
                    cs.timestamp = (cs.timestamp + value) & 0xFFFFFFFF
                if fmt != 3:
                    cs.extended = ts_field == EXTENDED_TIMESTAMP
                cs.length = length
                cs.type_id = type_id
            pos = body_pos + take
            if take == remaining and not cs.received:
                payload = bytes(buf[body_pos:pos])
            else:
                self._pending += take
                if self._pending > self.max_pending_bytes:
                    raise ChunkError(
                        f"{self._pending} bytes held in unfinished messages; the limit is {self.max_pending_bytes}"
                    )
                cs.parts.append(bytes(buf[body_pos:pos]))
                cs.received += take
                if cs.received < cs.length:
                    continue
                payload = b"".join(cs.parts)
                self._pending -= cs.received
                cs.parts = []
                cs.received = 0
            if type_id in (SET_CHUNK_SIZE, ABORT):
                self._control(type_id, payload)
            out.append(Message(csid, cs.timestamp, type_id, cs.stream_id, payload))
        return pos

    def _control(self, type_id: int, payload: bytes) -> None:
        if len(payload) < 4:
            raise ChunkError(f"protocol control message {type_id} is {len(payload)} bytes, expected 4")
        value = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        if type_id == SET_CHUNK_SIZE:
            if value < 1:
                raise ChunkError("Set Chunk Size to 0")
            self.chunk_size = value
        else:
            cs = self._streams.get(value)
            if cs is not None and cs.received:
                self._pending -= cs.received
                cs.parts = []
                cs.received = 0


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
