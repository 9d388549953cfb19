"""AMF0 codec (with AMF3 values decoded where clients switch to them).

RTMP commands and `onMetaData` are AMF0. Objects decode to ``dict``, ECMA arrays to
:class:`ECMAArray` (a ``dict``), null to ``None`` and undefined to :data:`UNDEFINED`.
Decoding is bounded: nesting depth, element counts and the total number of values in one
decode (nested ones included: 65,536 arrays of 250 nulls is 16 M values) are capped, and every length is
checked against the bytes actually present, so hostile input raises :class:`AMFError`
instead of allocating.
"""

from __future__ import annotations

import struct
from typing import Any

MAX_DEPTH = 32
MAX_ELEMENTS = 65536
# All values in one decode() call, at every depth: bounds its time, whatever the message size.
MAX_VALUES = 65536

_NUMBER = 0x00
_BOOLEAN = 0x01
_STRING = 0x02
_OBJECT = 0x03
_NULL = 0x05
_UNDEFINED = 0x06
_REFERENCE = 0x07
_ECMA_ARRAY = 0x08
_OBJECT_END = 0x09
_STRICT_ARRAY = 0x0A
_DATE = 0x0B
_LONG_STRING = 0x0C
_XML = 0x0F
_TYPED_OBJECT = 0x10
_AVMPLUS = 0x11

_double = struct.Struct(">d")


class AMFError(ValueError):
    """Malformed AMF data."""


class ECMAArray(dict):
    """An AMF0 ECMA array (associative array), as sent in onMetaData."""


class _Undefined:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED = _Undefined()


# ---------------------------------------------------------------- encoding


def encode(*values: Any) -> bytes:
    out = bytearray()
    for value in values:
        _encode_value(out, value)
    return bytes(out)


def _encode_key(out: bytearray, key: str) -> None:
    raw = key.encode()
    out += struct.pack(">H", len(raw))
    out += raw


def _encode_value(out: bytearray, value: Any) -> None:
    if value is None:
        out.append(_NULL)
    elif value is UNDEFINED:
        out.append(_UNDEFINED)
    elif isinstance(value, bool):
        out += bytes((_BOOLEAN, 1 if value else 0))
    elif isinstance(value, int | float):
        out.append(_NUMBER)
        out += _double.pack(float(value))
    elif isinstance(value, str):
        raw = value.encode()
        if len(raw) > 0xFFFF:
            out.append(_LONG_STRING)
            out += struct.pack(">I", len(raw))
        else:
            out.append(_STRING)
            out += struct.pack(">H", len(raw))
        out += raw
    elif isinstance(value, dict):
        if isinstance(value, ECMAArray):
            out.append(_ECMA_ARRAY)
            out += struct.pack(">I", len(value))
        else:
            out.append(_OBJECT)
        for key, item in value.items():
            _encode_key(out, key)
            _encode_value(out, item)
        out += b"\x00\x00\x09"
    elif isinstance(value, bytes | bytearray):
        # AMF0 has no byte array: AMF3's, behind the AVM+ marker, as the decoder reads one (a publisher's
        # onMetaData may hold one, and it is encoded again for viewers).
        out += bytes((_AVMPLUS, 0x0C)) + _u29(len(value) << 1 | 1)
        out += value
    elif isinstance(value, list | tuple):
        out.append(_STRICT_ARRAY)
        out += struct.pack(">I", len(value))
        for item in value:
            _encode_value(out, item)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as AMF0")


def _u29(value: int) -> bytes:
    """AMF3's variable-length integer: 7 bits a byte, the fourth byte all 8."""
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:
        return bytes((value >> 7 | 0x80, value & 0x7F))
    if value < 0x200000:
        return bytes((value >> 14 | 0x80, value >> 7 & 0x7F | 0x80, value & 0x7F))
    if value < 0x20000000:
        return bytes((value >> 22 | 0x80, value >> 15 & 0x7F | 0x80, value >> 8 & 0x7F | 0x80, value & 0xFF))
    raise ValueError(f"{value} does not fit AMF3's 29-bit integer")


# ---------------------------------------------------------------- decoding


def decode(data: bytes | memoryview) -> list[Any]:
    """Decode every AMF0 value in ``data``."""
    reader = _Reader(memoryview(data))
    values = []
    while reader.pos < len(reader.buf):
        values.append(reader.value(0))
        if len(values) > MAX_ELEMENTS:
            raise AMFError("too many values")
    return values


class _Reader:
    __slots__ = ("budget", "buf", "pos")

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0
        self.budget = MAX_VALUES  # values this decode may still produce

    def spend(self) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise AMFError(f"too many values: more than {MAX_VALUES} in one message")

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.buf):
            raise AMFError(f"truncated: need {n} bytes at offset {self.pos}, have {len(self.buf) - self.pos}")
        chunk = self.buf[self.pos : end]
        self.pos = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def text(self, n: int) -> str:
        return bytes(self.take(n)).decode("utf-8", "replace")

    def value(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise AMFError("nesting too deep")
        self.spend()
        marker = self.u8()
        if marker == _NUMBER:
            return _double.unpack(self.take(8))[0]
        if marker == _BOOLEAN:
            return self.u8() != 0
        if marker == _STRING:
            return self.text(self.u16())
        if marker in (_LONG_STRING, _XML):
            return self.text(self.u32())
        if marker == _NULL:
            return None
        if marker == _UNDEFINED:
            return UNDEFINED
        if marker == _OBJECT:
            return self.properties(dict(), depth)
        if marker == _TYPED_OBJECT:
            self.text(self.u16())  # class name: irrelevant to us
            return self.properties(dict(), depth)
        if marker == _ECMA_ARRAY:
            self.u32()  # advisory count: parse to the end marker instead
            return self.properties(ECMAArray(), depth)
        if marker == _STRICT_ARRAY:
            count = self.u32()
            if count > MAX_ELEMENTS or count > len(self.buf) - self.pos:
                raise AMFError(f"strict array of {count} elements does not fit the message")
            return [self.value(depth + 1) for _ in range(count)]
        if marker == _DATE:
            millis = _double.unpack(self.take(8))[0]
            self.take(2)  # time zone, unused by the format
            return millis
        if marker == _REFERENCE:
            self.u16()
            return None
        if marker == _AVMPLUS:
            return _Amf3Reader(self).value(depth + 1)
        raise AMFError(f"unknown AMF0 marker 0x{marker:02x} at offset {self.pos - 1}")

    def properties(self, target: dict, depth: int) -> dict:
        while True:
            if len(target) > MAX_ELEMENTS:
                raise AMFError("too many object properties")
            if self.pos >= len(self.buf):
                # Some encoders omit the end marker (00 00 09, or its 09) on the last object of a
                # message; FFmpeg and SRS read such an object to the end of the message too.
                return target
            key = self.text(self.u16())
            if not key and self.pos < len(self.buf) and self.buf[self.pos] == _OBJECT_END:
                self.pos += 1
                return target
            if self.pos >= len(self.buf):
                return target
            target[key] = self.value(depth + 1)


class _Amf3Reader:
    """AMF3 values, decoded far enough to skip or use them (some clients send AMF3 commands)."""

    __slots__ = ("r", "strings")

    def __init__(self, reader: _Reader) -> None:
        self.r = reader
        self.strings: list[str] = []

    def u29(self) -> int:
        value = 0
        for i in range(4):
            b = self.r.u8()
            if i == 3:
                return (value << 8) | b
            value = (value << 7) | (b & 0x7F)
            if not b & 0x80:
                return value
        return value

    def string(self) -> str:
        ref = self.u29()
        if not ref & 1:
            index = ref >> 1
            if index >= len(self.strings):
                raise AMFError("bad AMF3 string reference")
            return self.strings[index]
        text = self.r.text(ref >> 1)
        if text:
            self.strings.append(text)
        return text

    def value(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise AMFError("nesting too deep")
        self.r.spend()
        marker = self.r.u8()
        if marker == 0x00:
            return UNDEFINED
        if marker == 0x01:
            return None
        if marker in (0x02, 0x03):
            return marker == 0x03
        if marker == 0x04:
            value = self.u29()
            return value - (1 << 29) if value & (1 << 28) else value
        if marker == 0x05:
            return _double.unpack(self.r.take(8))[0]
        if marker in (0x06, 0x07, 0x0B):
            return self.string()
        if marker == 0x08:
            if self.u29() & 1:
                return _double.unpack(self.r.take(8))[0]
            return None
        if marker == 0x09:
            ref = self.u29()
            if not ref & 1:
                return None
            result: dict[str, Any] = {}
            while key := self.string():
                result[key] = self.value(depth + 1)
            dense = [self.value(depth + 1) for _ in range(min(ref >> 1, MAX_ELEMENTS))]
            return result if result else dense
        if marker == 0x0A:
            ref = self.u29()
            if not ref & 1:
                return None
            # U29O-traits: bit 1 inline traits (else a traits reference), bit 2 externalizable,
            # bit 3 dynamic, the rest the number of sealed member names.
            if not ref & 0x02 or ref & 0x04:
                raise AMFError("AMF3 traits references and externalizable objects are not supported")
            self.string()  # class name
            sealed = [self.string() for _ in range(min(ref >> 4, MAX_ELEMENTS))]
            obj: dict[str, Any] = {key: self.value(depth + 1) for key in sealed}
            if ref & 0x08:
                while key := self.string():
                    obj[key] = self.value(depth + 1)
            return obj
        if marker == 0x0C:
            ref = self.u29()
            return bytes(self.r.take(ref >> 1)) if ref & 1 else b""
        raise AMFError(f"unsupported AMF3 marker 0x{marker:02x}")


def decode_amf3_command(data: bytes | memoryview) -> list[Any]:
    """Decode an AMF3 command message body (RTMP type 17): one format byte, then AMF0 values."""
    if not data:
        raise AMFError("empty AMF3 command")
    return decode(memoryview(data)[1:])
