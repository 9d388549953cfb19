"""AMF0 (and the AMF3 values clients switch to): round trips, hand-built bytes, hostile input."""

import math
import random
import struct
import time
import tracemalloc
from typing import Any

import pytest

from ingest.rtmp import amf
from ingest.rtmp.amf import MAX_DEPTH, MAX_ELEMENTS, UNDEFINED, AMFError, ECMAArray


def u16(n: int) -> bytes:
    return struct.pack(">H", n)


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def double(x: float) -> bytes:
    return struct.pack(">d", x)


def number(x: float) -> bytes:
    return b"\x00" + double(x)


def amf0_str(text: str) -> bytes:
    raw = text.encode()
    return b"\x02" + u16(len(raw)) + raw


def u29(n: int) -> bytes:
    """AMF3 variable-length 29-bit integer, written out from the spec (section 1.3.1)."""
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:
        return bytes((0x80 | n >> 7, n & 0x7F))
    if n < 0x200000:
        return bytes((0x80 | n >> 14, 0x80 | (n >> 7) & 0x7F, n & 0x7F))
    return bytes((0x80 | n >> 22, 0x80 | (n >> 15) & 0x7F, 0x80 | (n >> 8) & 0x7F, n & 0xFF))


def amf3_str(text: str) -> bytes:
    raw = text.encode()
    return u29(len(raw) << 1 | 1) + raw


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "value",
    [
        0.0,
        -1.5,
        42,
        1e300,
        -0.0,
        math.inf,
        True,
        False,
        "",
        "live",
        "直播间 🎥 ü",
        "x" * 0xFFFF,
        "y" * 0x10000,
        "长" * 30000,
        None,
        UNDEFINED,
        {},
        {"app": "live", "tcUrl": "rtmp://h/live", "fpad": False, "capabilities": 239.0},
        {"a": {"b": {"c": [1.0, "two", None, {"d": True}]}}, "": "empty key"},
        ECMAArray(),
        ECMAArray(duration=0.0, width=320.0, height=240.0, encoder="Lavf", stereo=True),
        [],
        [1.0, "a", None, UNDEFINED, [2.0, [3.0]], ECMAArray(k=1.0)],
    ],
    ids=lambda value: repr(value)[:30],
)
def test_round_trip(value: Any) -> None:
    (decoded,) = amf.decode(amf.encode(value))
    assert decoded == value if value is not UNDEFINED else decoded is UNDEFINED
    assert type(decoded) is (float if type(value) is int else type(value))


def test_round_trip_nan() -> None:
    (decoded,) = amf.decode(amf.encode(math.nan))
    assert math.isnan(decoded)


def test_ecma_arrays_keep_their_type_inside_objects() -> None:
    value = {"meta": ECMAArray(width=1.0), "plain": {"width": 1.0}}
    (decoded,) = amf.decode(amf.encode(value))
    assert type(decoded["meta"]) is ECMAArray and type(decoded["plain"]) is dict


def test_tuple_encodes_as_strict_array() -> None:
    assert amf.decode(amf.encode((1, "a"))) == [[1.0, "a"]]


def test_several_values() -> None:
    values = ["connect", 1.0, {"app": "live"}, None, "x"]
    data = amf.encode(*values)
    assert amf.decode(data) == values
    assert amf.decode(memoryview(data)) == values


def test_encoding_by_hand() -> None:
    assert amf.encode(1) == b"\x00" + double(1.0)
    assert amf.encode(True, False) == b"\x01\x01\x01\x00"
    assert amf.encode("ab") == b"\x02\x00\x02ab"
    assert amf.encode("y" * 0x10000)[:5] == b"\x0c\x00\x01\x00\x00"
    assert amf.encode(None, UNDEFINED) == b"\x05\x06"
    assert amf.encode({"k": None}) == b"\x03\x00\x01k\x05\x00\x00\x09"
    assert amf.encode(ECMAArray(k=None)) == b"\x08\x00\x00\x00\x01\x00\x01k\x05\x00\x00\x09"
    assert amf.encode([None]) == b"\x0a\x00\x00\x00\x01\x05"


def test_unencodable_type() -> None:
    # bytes are encodable: as AMF3's ByteArray, which the decoder gives as bytes (tests/test_fuzz_parsers.py)
    with pytest.raises(TypeError):
        amf.encode(object())


# ---------------------------------------------------------------- decoding AMF0 by hand


def test_typed_object() -> None:
    data = b"\x10" + u16(9) + b"flex.Info" + u16(1) + b"a" + number(2.0) + u16(0) + b"\x09"
    assert amf.decode(data) == [{"a": 2.0}]


def test_date() -> None:
    millis = 1_700_000_000_123.0
    data = b"\x0b" + double(millis) + b"\x00\x00" + b"\x05"
    assert amf.decode(data) == [millis, None]


def test_ecma_array_count_is_advisory() -> None:
    # Encoders write 0 (or a wrong count); the end marker is what ends the array.
    data = b"\x08" + u32(0) + u16(1) + b"w" + number(320.0) + u16(0) + b"\x09" + amf0_str("next")
    assert amf.decode(data) == [ECMAArray(w=320.0), "next"]


def test_object_without_end_marker_at_end_of_message() -> None:
    data = amf0_str("onMetaData") + b"\x08" + u32(1) + u16(1) + b"w" + number(320.0)
    assert amf.decode(data) == ["onMetaData", {"w": 320.0}]
    assert amf.decode(data + u16(0)) == ["onMetaData", {"w": 320.0}]


def test_xml_reference_and_empty() -> None:
    data = b"\x0f" + u32(5) + b"<a/>!" + b"\x07" + u16(3)
    assert amf.decode(data) == ["<a/>!", None]
    assert amf.decode(b"") == []


def test_invalid_utf8_is_replaced() -> None:
    assert amf.decode(b"\x02\x00\x02\xff\xfe") == ["\ufffd\ufffd"]


# ---------------------------------------------------------------- AMF3


def test_amf3_command_message() -> None:
    # RTMP message type 17: one format byte (0), then the command in AMF0.
    body = b"\x00" + amf.encode("connect", 1.0, {"app": "live", "objectEncoding": 3.0})
    assert amf.decode_amf3_command(body) == ["connect", 1.0, {"app": "live", "objectEncoding": 3.0}]


def test_amf3_command_with_switched_values() -> None:
    body = b"\x00" + amf0_str("publish") + number(5) + b"\x05" + b"\x11\x06" + amf3_str("room1")
    assert amf.decode_amf3_command(body) == ["publish", 5.0, None, "room1"]


@pytest.mark.parametrize(
    ("amf3", "expected"),
    [
        (b"\x00", UNDEFINED),
        (b"\x01", None),
        (b"\x02", False),
        (b"\x03", True),
        (b"\x04" + u29(0), 0),
        (b"\x04" + u29(127), 127),
        (b"\x04\x82\x2c", 300),
        (b"\x04" + u29(0x1FFFFF), 0x1FFFFF),
        (b"\x04" + u29(0x0FFFFFFF), 0x0FFFFFFF),
        (b"\x04\xff\xff\xff\xff", -1),
        (b"\x04\xc0\x80\x80\x00", -(1 << 28)),
        (b"\x05" + double(-2.5), -2.5),
        (b"\x06" + amf3_str(""), ""),
        (b"\x06" + amf3_str("直播"), "直播"),
        (b"\x06" + amf3_str("z" * 200), "z" * 200),
        (b"\x0c" + u29(3 << 1 | 1) + b"\x01\x02\x03", b"\x01\x02\x03"),
        (b"\x08" + u29(1) + double(1e12), 1e12),
        # Dense array [1, "a"].
        (b"\x09" + u29(2 << 1 | 1) + b"\x01" + b"\x04\x01" + b"\x06" + amf3_str("a"), [1, "a"]),
        # Associative array.
        (b"\x09" + u29(1) + amf3_str("k") + b"\x03" + b"\x01", {"k": True}),
        # Dynamic anonymous object {a: 1, b: "x"}: traits 0x0B, empty class name.
        (
            b"\x0a\x0b"
            + amf3_str("")
            + amf3_str("a")
            + b"\x04\x01"
            + amf3_str("b")
            + b"\x06"
            + amf3_str("x")
            + b"\x01",
            {"a": 1, "b": "x"},
        ),
        # Sealed object of class "P" with members x, y: traits 2 << 4 | 0x03.
        (
            b"\x0a" + u29(2 << 4 | 0x03) + amf3_str("P") + amf3_str("x") + amf3_str("y") + b"\x04\x01\x04\x02",
            {"x": 1, "y": 2},
        ),
        # Sealed (x) and dynamic (z) members.
        (
            b"\x0a" + u29(1 << 4 | 0x0B) + amf3_str("") + amf3_str("x") + b"\x04\x01" + amf3_str("z") + b"\x02\x01",
            {"x": 1, "z": False},
        ),
    ],
    ids=lambda v: v.hex() if isinstance(v, bytes) else None,
)
def test_amf0_value_switching_to_amf3(amf3: bytes, expected: Any) -> None:
    decoded = amf.decode(b"\x11" + amf3 + amf0_str("after"))
    if expected is UNDEFINED:
        assert decoded == [UNDEFINED, "after"]
    else:
        assert decoded == [expected, "after"]
        assert type(decoded[0]) is type(expected)


def test_amf3_string_references() -> None:
    # {"name": "name"}: the value refers back to the key by string-table index 0.
    data = b"\x11\x0a\x0b" + amf3_str("") + amf3_str("name") + b"\x06" + u29(0 << 1) + b"\x01"
    assert amf.decode(data) == [{"name": "name"}]
    with pytest.raises(AMFError, match="reference"):
        amf.decode(b"\x11\x06" + u29(5 << 1))


def test_amf3_object_references_decode_as_none() -> None:
    assert amf.decode(b"\x11\x0a" + u29(0) + b"\x11\x09" + u29(2)) == [None, None]


# ---------------------------------------------------------------- hostile input


VALID = amf.encode(
    "connect",
    1.0,
    {
        "app": "live",
        "tcUrl": "rtmp://127.0.0.1/live",
        "list": [1.0, "a", {"x": None}],
        "meta": ECMAArray(a=1.0),
    },
    "x" * 300,
)


def test_truncated_anywhere() -> None:
    # Cut anywhere, a message either raises AMFError or, where an encoder may legitimately stop
    # (an object's missing end marker), decodes to what was complete; nothing else escapes.
    outcomes = set()
    for cut in range(1, len(VALID)):
        try:
            values = amf.decode(VALID[:cut])
        except AMFError:
            outcomes.add("error")
            continue
        outcomes.add("partial")
        assert values == amf.decode(VALID)[: len(values)] or isinstance(values[-1], dict)
    assert outcomes == {"error", "partial"}


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x01\x02",  # number needs 8 bytes
        b"\x01",
        b"\x02\x00",
        b"\x02\x00\x10abc",
        b"\x0c\x00\x00\x01",
        b"\x0b" + double(1.0) + b"\x00",  # date without its full time zone
        b"\x10\x00\x05Cl",
        b"\x07\x00",
        b"\x03\x00",
        b"\x11",
        b"\x11\x04\x80",
        b"\x11\x05\x00",
        b"\x11\x06\x07ab",
        b"\x11\x0c\x07ab",
        b"\x11\x09\x05\x01",
    ],
    ids=bytes.hex,
)
def test_truncated_raises(data: bytes) -> None:
    with pytest.raises(AMFError):
        amf.decode(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x02\xff\xff",
        b"\x0c\xff\xff\xff\xff",
        b"\x0f\xff\xff\xff\xff" + b"<x/>",
        b"\x0a\xff\xff\xff\xff",
        b"\x0a\x7f\xff\xff\xff" + b"\x05" * 100,
        b"\x08\xff\xff\xff\xff\x00\x05ab",
        b"\x10\xff\xffClass",
        b"\x11\x06\xff\xff\xff\xff",
        b"\x11\x0c\xff\xff\xff\xff",
        b"\x11\x09\xff\xff\xff\xff\x01",
        b"\x11\x09\xff\xff\xff\xff\x01" + b"\x01" * 1000,
        b"\x11\x0a" + u29(0x0FFFFFF3) + b"\x01",
    ],
    ids=bytes.hex,
)
def test_absurd_lengths_do_not_allocate(data: bytes) -> None:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(AMFError):
            amf.decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000
    assert time.perf_counter() - started < 1.0


def nested_objects(depth: int) -> bytes:
    return (b"\x03" + u16(1) + b"k") * depth + b"\x05" + (u16(0) + b"\x09") * depth


def nested_arrays(depth: int) -> bytes:
    return (b"\x0a" + u32(1)) * depth + b"\x05"


def nested_amf3_arrays(depth: int) -> bytes:
    return b"\x11" + (b"\x09" + u29(1 << 1 | 1) + b"\x01") * depth + b"\x01"


@pytest.mark.parametrize("build", [nested_objects, nested_arrays, nested_amf3_arrays])
def test_nesting_limit(build: Any) -> None:
    (value,) = amf.decode(build(MAX_DEPTH - 1))
    assert value is not None
    for depth in (MAX_DEPTH + 2, 10_000, 200_000):
        with pytest.raises(AMFError, match="too deep"):
            amf.decode(build(depth))


def test_nesting_limit_through_ecma_and_typed_objects() -> None:
    layer = b"\x08" + u32(1) + u16(1) + b"e" + b"\x10" + u16(1) + b"T" + u16(1) + b"t"
    with pytest.raises(AMFError, match="too deep"):
        amf.decode(layer * 5000 + b"\x05")


@pytest.mark.parametrize("marker", [0x04, 0x0D, 0x0E, 0x12, 0x7F, 0xFF])
def test_unknown_amf0_marker(marker: int) -> None:
    with pytest.raises(AMFError, match="marker"):
        amf.decode(amf0_str("ok") + bytes((marker,)) + b"\x00" * 16)


@pytest.mark.parametrize("marker", [0x0D, 0x0E, 0x0F, 0x10, 0x11, 0xFF])
def test_unknown_amf3_marker(marker: int) -> None:
    with pytest.raises(AMFError, match="marker"):
        amf.decode(b"\x11" + bytes((marker,)) + b"\x00" * 16)


def test_externalizable_and_trait_references_are_refused() -> None:
    with pytest.raises(AMFError, match="externalizable"):
        amf.decode(b"\x11\x0a\x07" + amf3_str("flex.messaging.io.ArrayCollection") + b"\x01")
    with pytest.raises(AMFError, match="traits reference"):
        amf.decode(b"\x11\x0a\x01")


def test_too_many_values() -> None:
    with pytest.raises(AMFError, match="too many"):
        amf.decode(b"\x05" * (MAX_ELEMENTS + 2))


def test_too_many_properties() -> None:
    props = b"".join(u16(5) + f"{i:05x}".encode() + b"\x05" for i in range(MAX_ELEMENTS + 2))
    with pytest.raises(AMFError, match="too many"):
        amf.decode(b"\x03" + props + u16(0) + b"\x09")


def test_empty_amf3_command() -> None:
    with pytest.raises(AMFError):
        amf.decode_amf3_command(b"")


def test_random_mutations_raise_only_amf_error() -> None:
    rng = random.Random(1935)
    seeds = [
        VALID,
        nested_objects(20),
        b"\x11" + b"\x0a\x0b" + amf3_str("") + amf3_str("a") + b"\x04\x01\x01",
    ]
    started = time.perf_counter()
    for i in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 6)):
            if not data:
                break
            pos = rng.randrange(len(data))
            action = rng.randrange(3)
            if action == 0:
                data[pos] = rng.randrange(256)
            elif action == 1:
                del data[pos : pos + rng.randrange(1, 8)]
            else:
                data[pos:pos] = rng.randbytes(rng.randrange(1, 8))
        try:
            amf.decode(bytes(data))
        except AMFError:
            pass
        except Exception as exc:  # pragma: no cover - the failure message is the point
            raise AssertionError(f"mutation {i} {bytes(data).hex()} raised {exc!r}") from exc
    assert time.perf_counter() - started < 20


def test_total_values_are_capped_at_every_depth() -> None:
    """The probe's bomb, scaled down: arrays of arrays of nulls pass every per-array cap but not the
    cap on values per message, which bounds decode time whatever the size (issue 16, finding #1)."""
    inner = b"\x0a" + struct.pack(">I", 250) + b"\x05" * 250
    bomb = amf.encode("connect", 0) + b"\x0a" + struct.pack(">I", 300) + inner * 300
    with pytest.raises(amf.AMFError, match=f"too many values: more than {amf.MAX_VALUES}"):
        amf.decode(bomb)
    fits = amf.encode("connect", 0) + b"\x0a" + struct.pack(">I", 200) + inner * 200  # 50,203 values
    assert len(amf.decode(fits)[2]) == 200
