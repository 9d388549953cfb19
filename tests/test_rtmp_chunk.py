"""ChunkReader driven with chunk bytes written out by hand, and round trips with encode_message.

Headers are built here with struct rather than with relay.formats.rtmp_chunk, so that the reader is
checked against an independent reading of the chunk format (RTMP spec section 5.3).
"""

import random
import struct

import pytest

from relay.formats.rtmp_chunk import ChunkError, ChunkReader, Message, PendingBudget, basic_header, encode_message

AUDIO, VIDEO, COMMAND = 8, 9, 20
EXT = 0xFFFFFF


def basic(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes(((fmt << 6) | csid,))
    if csid < 320:
        return bytes((fmt << 6, csid - 64))
    return bytes(((fmt << 6) | 1,)) + struct.pack("<H", csid - 64)


def u24(value: int) -> bytes:
    return struct.pack(">I", value)[1:]


def type0(csid: int, ts: int, length: int, type_id: int, stream_id: int = 1) -> bytes:
    field = min(ts, EXT)
    head = basic(0, csid) + u24(field) + u24(length) + bytes((type_id,)) + struct.pack("<I", stream_id)
    return head + (struct.pack(">I", ts) if field == EXT else b"")


def type1(csid: int, delta: int, length: int, type_id: int) -> bytes:
    field = min(delta, EXT)
    head = basic(1, csid) + u24(field) + u24(length) + bytes((type_id,))
    return head + (struct.pack(">I", delta) if field == EXT else b"")


def type2(csid: int, delta: int) -> bytes:
    field = min(delta, EXT)
    return basic(2, csid) + u24(field) + (struct.pack(">I", delta) if field == EXT else b"")


def type3(csid: int, ext: int | None = None) -> bytes:
    return basic(3, csid) + (b"" if ext is None else struct.pack(">I", ext))


def control(type_id: int, value: int) -> bytes:
    return type0(2, 0, 4, type_id, 0) + struct.pack(">I", value)


def set_chunk_size(size: int) -> bytes:
    return control(1, size)


def chunked(first_header: bytes, csid: int, payload: bytes, size: int = 128, ext: int | None = None) -> bytes:
    """A message split in chunks of ``size``: the given first header, then type-3 continuations."""
    out = first_header + payload[:size]
    for offset in range(size, len(payload), size):
        out += type3(csid, ext) + payload[offset : offset + size]
    return out


def feed_bytewise(reader: ChunkReader, data: bytes) -> list[Message]:
    out: list[Message] = []
    for i in range(len(data)):
        out += reader.feed(data[i : i + 1])
    return out


def summary(messages: list[Message]) -> list[tuple[int, int, int, int, bytes]]:
    return [(m.csid, m.timestamp, m.type_id, m.stream_id, m.payload) for m in messages]


# ---------------------------------------------------------------- headers


def test_type0_single_chunk_by_hand() -> None:
    data = bytes.fromhex("06 0003e8 000005 09 01000000") + b"hello"
    (msg,) = ChunkReader().feed(data)
    assert msg == Message(csid=6, timestamp=1000, type_id=VIDEO, stream_id=1, payload=b"hello")


def test_stream_id_is_little_endian() -> None:
    (msg,) = ChunkReader().feed(type0(4, 0, 1, AUDIO, stream_id=0x01020304) + b"x")
    assert msg.stream_id == 0x01020304


def test_header_types_accumulate_deltas() -> None:
    data = (
        type0(4, 1000, 3, AUDIO) + b"aaa"
        # Type 1: delta 40, new length and type.
        + type1(4, 40, 2, VIDEO) + b"vv"
        # Type 2: delta 33, length and type carried over.
        + type2(4, 33) + b"ww"
        # Type 3 new messages: everything, including the last delta (33), repeats.
        + type3(4) + b"xx"
        + type3(4) + b"yy"
        + type2(4, 7) + b"zz"
        + type3(4) + b"qq"
    )  # fmt: skip
    got = ChunkReader().feed(data)
    assert [(m.timestamp, m.type_id, m.stream_id, m.payload) for m in got] == [
        (1000, AUDIO, 1, b"aaa"),
        (1040, VIDEO, 1, b"vv"),
        (1073, VIDEO, 1, b"ww"),
        (1106, VIDEO, 1, b"xx"),
        (1139, VIDEO, 1, b"yy"),
        (1146, VIDEO, 1, b"zz"),
        (1153, VIDEO, 1, b"qq"),
    ]


def test_type3_after_type0_repeats_type0_timestamp_as_delta() -> None:
    # FFmpeg and SRS: after a type-0 header, the delta a type-3 message header repeats is the
    # type-0 timestamp itself.
    data = type0(5, 40, 1, AUDIO) + b"a" + type3(5) + b"b" + type3(5) + b"c"
    assert [m.timestamp for m in ChunkReader().feed(data)] == [40, 80, 120]


def test_type0_resets_timestamp() -> None:
    data = type0(5, 500, 1, AUDIO) + b"a" + type2(5, 20) + b"b" + type0(5, 100, 1, AUDIO) + b"c"
    assert [m.timestamp for m in ChunkReader().feed(data)] == [500, 520, 100]


def test_first_chunk_of_stream_may_be_type1() -> None:
    # Some encoders start a chunk stream with a type-1 header; its delta counts from 0.
    (msg,) = ChunkReader().feed(type1(7, 25, 2, AUDIO) + b"ab")
    assert (msg.timestamp, msg.stream_id, msg.payload) == (25, 0, b"ab")


def test_timestamp_wraps_at_32_bits() -> None:
    data = type0(4, 0xFFFFFFF0, 1, AUDIO) + b"a" + type2(4, 0x20) + b"b"
    assert [m.timestamp for m in ChunkReader().feed(data)] == [0xFFFFFFF0, 0x10]


def test_zero_length_message() -> None:
    data = type0(4, 7, 0, AUDIO) + type0(4, 8, 1, AUDIO) + b"x"
    assert [(m.timestamp, m.payload) for m in ChunkReader().feed(data)] == [(7, b""), (8, b"x")]


@pytest.mark.parametrize(
    ("csid", "wire"),
    [
        (2, "02"),
        (3, "03"),
        (63, "3f"),
        (64, "00 00"),
        (65, "00 01"),
        (319, "00 ff"),
        (320, "01 00 01"),
        (321, "01 01 01"),
        (65599, "01 ff ff"),
    ],
)
def test_basic_header_sizes(csid: int, wire: str) -> None:
    header = bytes.fromhex(wire)
    assert basic(0, csid) == header
    assert basic_header(0, csid) == header
    payload = bytes(range(200))
    data = chunked(header + u24(12) + u24(200) + b"\x09" + b"\x01\x00\x00\x00", csid, payload)
    # Continuation chunks carry the same basic header with fmt 3.
    assert bytes((header[0] | 0xC0,)) + header[1:] in data[len(header) + 11 :]
    (msg,) = ChunkReader().feed(data)
    assert (msg.csid, msg.timestamp, msg.payload) == (csid, 12, payload)
    assert summary(feed_bytewise(ChunkReader(), data)) == summary([msg])


# ---------------------------------------------------------------- extended timestamps


def test_extended_timestamp_type0_with_continuations() -> None:
    ts = 0x01234567
    payload = bytes(range(256)) * 2
    # The spec and FFmpeg repeat the extended timestamp on every type-3 continuation chunk.
    data = chunked(type0(6, ts, len(payload), VIDEO), 6, payload, ext=ts)
    assert data[:4] == bytes.fromhex("06 ffffff")
    (msg,) = ChunkReader().feed(data)
    assert (msg.timestamp, msg.payload) == (ts, payload)
    assert summary(feed_bytewise(ChunkReader(), data)) == summary([msg])


def test_extended_timestamp_omitted_on_continuations() -> None:
    # Some encoders write the extended timestamp only in the message's first chunk.
    ts = 0x01234567
    payload = bytes(range(256)) * 2
    data = chunked(type0(6, ts, len(payload), VIDEO), 6, payload)
    (msg,) = ChunkReader().feed(data)
    assert (msg.timestamp, msg.payload) == (ts, payload)
    assert summary(feed_bytewise(ChunkReader(), data)) == summary([msg])


def test_extended_timestamp_exactly_0xffffff() -> None:
    data = type0(4, EXT, 1, AUDIO) + b"a"
    assert len(data) == 1 + 11 + 4 + 1
    (msg,) = ChunkReader().feed(data)
    assert msg.timestamp == EXT


def test_extended_delta_on_type1_and_type2() -> None:
    base = 1000
    big = 0x01000000
    payload = b"p" * 300
    data = (
        type0(4, base, 1, AUDIO) + b"a"
        + chunked(type1(4, big, len(payload), VIDEO), 4, payload, ext=big)
        + type2(4, big + 1) + payload[:128]
        + type3(4, big + 1) + payload[128:256]
        + type3(4, big + 1) + payload[256:]
        # A type-3 new message after an extended delta repeats it, extended field included.
        + type3(4, big + 1) + payload[:128] + type3(4, big + 1) + payload[128:256]
        + type3(4, big + 1) + payload[256:]
        + type2(4, 10) + payload[:128] + type3(4) + payload[128:256] + type3(4) + payload[256:]
    )  # fmt: skip
    got = ChunkReader().feed(data)
    assert [m.timestamp for m in got] == [
        base,
        base + big,
        base + 2 * big + 1,
        base + 3 * big + 2,
        base + 3 * big + 12,
    ]
    assert all(m.payload == payload for m in got[1:])
    assert summary(feed_bytewise(ChunkReader(), data)) == summary(got)


def test_type3_new_message_after_extended_type0() -> None:
    ts = 0x01000000
    data = type0(4, ts, 2, AUDIO) + b"ab" + type3(4, ts) + b"cd"
    got = ChunkReader().feed(data)
    assert [(m.timestamp, m.payload) for m in got] == [(ts, b"ab"), (2 * ts, b"cd")]


def test_omitted_extended_timestamp_on_short_last_chunk_is_delivered() -> None:
    # The last continuation holds 2 bytes and the encoder omits the extended timestamp: the
    # reader cannot tell yet whether 4 bytes of timestamp follow, but must deliver the message
    # intact once more data arrives.
    ts = 0x02000000
    payload = b"x" * 128 + b"yz"
    first = chunked(type0(6, ts, len(payload), VIDEO), 6, payload)
    following = type0(6, ts + 40, 1, VIDEO) + b"n"
    reader = ChunkReader()
    got = reader.feed(first) + reader.feed(following)
    assert [(m.timestamp, m.payload) for m in got] == [(ts, payload), (ts + 40, b"n")]


# ---------------------------------------------------------------- control messages


def test_set_chunk_size_takes_effect_on_next_chunk() -> None:
    big = bytes(range(256)) * 12  # 3072 bytes
    data = (
        chunked(type0(4, 0, len(big), VIDEO), 4, big, 128)
        + set_chunk_size(4096)
        + type0(4, 40, len(big), VIDEO) + big  # one chunk now
        + set_chunk_size(1000)
        + chunked(type0(4, 80, len(big), VIDEO), 4, big, 1000)
    )  # fmt: skip
    reader = ChunkReader()
    got = reader.feed(data)
    assert [(m.type_id, m.timestamp) for m in got] == [(VIDEO, 0), (1, 0), (VIDEO, 40), (1, 0), (VIDEO, 80)]
    assert got[0].payload == got[2].payload == got[4].payload == big
    assert reader.chunk_size == 1000
    assert summary(feed_bytewise(ChunkReader(), data)) == summary(got)


def test_set_chunk_size_between_chunks_of_another_message() -> None:
    # A Set Chunk Size on the control stream applies to the very next chunk, even to the
    # continuation of a message on another chunk stream that started with the old size.
    payload = bytes(range(200)) + bytes(range(200))
    data = (
        type0(6, 0, len(payload), VIDEO) + payload[:128]
        + set_chunk_size(300)
        + type3(6) + payload[128:]
    )  # fmt: skip
    got = ChunkReader().feed(data)
    assert got[-1].payload == payload


def test_huge_set_chunk_size() -> None:
    payload = random.Random(1).randbytes(100_000)
    data = set_chunk_size(0x7FFFFFFF) + type0(6, 5, len(payload), VIDEO) + payload + type0(4, 6, 1, AUDIO) + b"a"
    reader = ChunkReader()
    got = reader.feed(data)
    assert reader.chunk_size == 0x7FFFFFFF
    assert [(m.type_id, m.payload) for m in got[1:]] == [(VIDEO, payload), (AUDIO, b"a")]


def test_set_chunk_size_high_bit_is_ignored() -> None:
    # The spec says bit 31 must be 0; as FFmpeg does, we ignore it rather than fail.
    reader = ChunkReader()
    reader.feed(set_chunk_size(0x80001000))
    assert reader.chunk_size == 0x1000


def test_abort_discards_partial_message() -> None:
    payload = b"v" * 300
    data = (
        type0(6, 0, len(payload), VIDEO) + payload[:128] + type3(6) + payload[128:256]
        + control(2, 6)  # Abort chunk stream 6
        + type0(6, 40, 3, VIDEO) + b"new"
    )  # fmt: skip
    reader = ChunkReader()
    got = reader.feed(data)
    assert [(m.type_id, m.payload) for m in got] == [(2, struct.pack(">I", 6)), (VIDEO, b"new")]
    assert reader._pending == 0


def test_abort_of_unknown_or_idle_stream_is_harmless() -> None:
    data = control(2, 9) + type0(6, 0, 1, VIDEO) + b"v" + control(2, 6) + type3(6) + b"w"
    got = ChunkReader().feed(data)
    assert [m.payload for m in got if m.type_id == VIDEO] == [b"v", b"w"]


def test_interleaved_chunk_streams() -> None:
    audio = [bytes([i]) * 300 for i in range(3)]
    video = [bytes([0x80 + i]) * 500 for i in range(3)]
    # Split each message in chunks, then send audio and video chunks alternately.
    a_chunks: list[bytes] = []
    v_chunks: list[bytes] = []
    for i, (a, v) in enumerate(zip(audio, video, strict=True)):
        for target, csid, kind, payload, ts in (
            (a_chunks, 4, AUDIO, a, 23 * i),
            (v_chunks, 6, VIDEO, v, 40 * i),
        ):
            for offset in range(0, len(payload), 128):
                head = type0(csid, ts, len(payload), kind) if offset == 0 else type3(csid)
                target.append(head + payload[offset : offset + 128])
    data = b""
    for i in range(max(len(a_chunks), len(v_chunks))):
        data += v_chunks[i] if i < len(v_chunks) else b""
        data += a_chunks[i] if i < len(a_chunks) else b""
    got = ChunkReader().feed(data)
    assert sorted((m.type_id, m.timestamp, m.payload) for m in got) == sorted(
        [(AUDIO, 23 * i, a) for i, a in enumerate(audio)] + [(VIDEO, 40 * i, v) for i, v in enumerate(video)]
    )
    # Each stream keeps its own order.
    assert [m.payload for m in got if m.csid == 4] == audio
    assert [m.payload for m in got if m.csid == 6] == video
    assert summary(feed_bytewise(ChunkReader(), data)) == summary(got)


def test_bytes_received_counts_everything() -> None:
    reader = ChunkReader()
    data = type0(4, 0, 3, AUDIO) + b"abc"
    reader.feed(data[:5])
    reader.feed(data[5:])
    assert reader.bytes_received == len(data)


# ---------------------------------------------------------------- limits


def test_message_bigger_than_limit() -> None:
    reader = ChunkReader(max_message_size=1000)
    with pytest.raises(ChunkError, match="limit"):
        reader.feed(type0(6, 0, 1001, VIDEO) + b"x" * 128)


def test_message_bigger_than_limit_fails_at_its_header() -> None:
    # With a huge chunk size the whole message is one chunk: the limit must apply on the
    # header, not after the body has been buffered.
    reader = ChunkReader(max_message_size=1000)
    reader.feed(set_chunk_size(0x7FFFFFFF))
    with pytest.raises(ChunkError, match="limit"):
        reader.feed(type0(6, 0, 0xFFFFFF, VIDEO))


def test_too_many_chunk_streams() -> None:
    reader = ChunkReader(max_chunk_streams=8)
    data = b"".join(type0(csid, 0, 1, AUDIO) + b"a" for csid in range(3, 11))
    assert len(reader.feed(data)) == 8
    with pytest.raises(ChunkError, match="chunk streams"):
        reader.feed(type0(11, 0, 1, AUDIO) + b"a")


@pytest.mark.parametrize("fmt", [2, 3])
def test_first_chunk_of_stream_needs_message_header(fmt: int) -> None:
    data = type2(5, 10) + b"x" if fmt == 2 else type3(5) + b"x"
    with pytest.raises(ChunkError, match="starts with a type"):
        ChunkReader().feed(data)


@pytest.mark.parametrize("value", [0, 0x80000000])
def test_set_chunk_size_zero(value: int) -> None:
    with pytest.raises(ChunkError, match="Set Chunk Size"):
        ChunkReader().feed(set_chunk_size(value))


@pytest.mark.parametrize("type_id", [1, 2])
def test_short_control_message(type_id: int) -> None:
    with pytest.raises(ChunkError, match="expected 4"):
        ChunkReader().feed(type0(2, 0, 2, type_id, 0) + b"\x00\x01")


def test_new_header_in_middle_of_message() -> None:
    data = type0(6, 0, 300, VIDEO) + b"v" * 128 + type0(6, 0, 10, VIDEO) + b"w" * 10
    with pytest.raises(ChunkError, match="before the previous message ended"):
        ChunkReader().feed(data)


def test_pending_bytes_are_capped() -> None:
    reader = ChunkReader(max_pending_bytes=10_000)
    reader.feed(set_chunk_size(1000))
    data = b"".join(type0(csid, 0, 5000, VIDEO) + b"v" * 1000 for csid in range(3, 20))
    with pytest.raises(ChunkError, match="held in unfinished messages; the limit is 10000"):
        reader.feed(data)


def test_incomplete_input_waits() -> None:
    data = type0(5000, 0, 3, AUDIO) + b"abc"
    for cut in range(len(data)):
        reader = ChunkReader()
        assert reader.feed(data[:cut]) == []
        assert summary(reader.feed(data[cut:])) == [(5000, 0, AUDIO, 1, b"abc")]


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("chunk_size", [1, 2, 127, 128, 129, 1000, 4096, 65536, 0x7FFFFFFF])
def test_round_trip_random_messages(chunk_size: int) -> None:
    rng = random.Random(chunk_size)
    csids = [2, 3, 4, 6, 63, 64, 200, 319, 320, 1000, 65599]
    sent: list[tuple[int, int, int, int, bytes]] = []
    wire = bytearray(set_chunk_size(chunk_size))
    for _ in range(150):
        csid = rng.choice(csids)
        ts = rng.choice([0, rng.randrange(EXT), EXT, rng.randrange(EXT, 1 << 32)])
        type_id = rng.choice([AUDIO, VIDEO, 18, COMMAND])
        stream_id = rng.choice([0, 1, 7, 0xFFFFFFFF])
        size = rng.choice([0, 1, rng.randrange(chunk_size + 2) if chunk_size < 5000 else 10, rng.randrange(6000)])
        payload = rng.randbytes(size)
        sent.append((csid, ts, type_id, stream_id, payload))
        wire += encode_message(csid, ts, type_id, stream_id, payload, chunk_size)
    wire = bytes(wire)

    def check(got: list[Message]) -> None:
        assert summary(got)[0][2] == 1
        assert summary(got)[1:] == sent

    check(ChunkReader().feed(wire))
    reader = ChunkReader()
    got: list[Message] = []
    pos = 0
    while pos < len(wire):
        step = rng.choice([1, 2, 3, 7, 100, 1500, 70_000])
        got += reader.feed(wire[pos : pos + step])
        pos += step
    check(got)
    assert reader._buf == b"" and reader._pending == 0


def test_round_trip_bytewise() -> None:
    rng = random.Random(7)
    wire = b""
    sent = []
    for i in range(20):
        payload = rng.randbytes(rng.randrange(400))
        ts = i * 33 + (0x01000000 if i % 3 == 0 else 0)
        sent.append((6, ts, VIDEO, 1, payload))
        wire += encode_message(6, ts, VIDEO, 1, payload, 128)
    assert summary(feed_bytewise(ChunkReader(), wire)) == sent


def test_pending_budget_is_shared_and_released() -> None:
    """Readers sharing a PendingBudget: together they cannot hold more than its limit (the one that
    passes it fails), and release() gives back what a closed connection held (finding #2)."""
    budget = PendingBudget(limit=250_000)
    message = encode_message(6, 0, 9, 1, b"v" * 1_000_000, 4096)
    readers = [ChunkReader(max_pending_bytes=200_000, budget=budget) for _ in range(3)]
    for reader in readers:
        reader.feed(set_chunk_size(4096))
    readers[0].feed(message[:100_000])
    readers[1].feed(message[:100_000])
    assert budget.held == readers[0].held_bytes + readers[1].held_bytes > 190_000
    with pytest.raises(ChunkError, match="budget of 250000 bytes"):
        readers[2].feed(message[:100_000])
    for reader in readers:
        reader.release()
    assert budget.held == 0


def test_small_types_are_capped_on_the_header() -> None:
    reader = ChunkReader(max_other_size=4096)
    reader.feed(set_chunk_size(0x7FFFFFFF))
    header = encode_message(3, 0, 20, 0, b"\x05" * 5000, 0x7FFFFFFF)[:12]  # the body never comes
    with pytest.raises(ChunkError, match="type 20 and 5000 bytes exceeds the 4096 byte limit"):
        reader.feed(header)
