"""Reading codec headers: the Exp-Golomb codes of H.264 and HEVC parameter sets, bit by bit, and the
parameter set arrays of their decoder configuration records."""

from __future__ import annotations

# The largest picture side a parameter set may declare and still be believed (H.264 and HEVC levels
# stop at 8192; beyond this it is a corrupt or hostile header).
MAX_DIMENSION = 16384


class BitReader:
    """Bits of a byte string, most significant first. Reading past the end raises IndexError."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def bit(self) -> int:
        byte = self.data[self.pos >> 3]
        value = (byte >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return value

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise IndexError("bad exp-golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        value = self.ue()
        return (value + 1) // 2 if value & 1 else -(value // 2)


def unescape(nal: bytes) -> bytes:
    """A NAL unit's payload without its emulation prevention bytes."""
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


def plausible(size: tuple[int, int]) -> tuple[int, int] | None:
    """``size`` if it can be a picture's, else None."""
    width, height = size
    return size if 0 < width <= MAX_DIMENSION and 0 < height <= MAX_DIMENSION else None


def nal_array(record: bytes, pos: int, count: int) -> tuple[list[bytes], int] | None:
    """The ``count`` NAL units at ``pos`` of a decoder configuration record, each after its 16-bit
    size, and where they end; None when one is empty or cut short."""
    found = []
    for _ in range(count):
        size = int.from_bytes(record[pos : pos + 2], "big")
        if size == 0 or pos + 2 + size > len(record):
            return None
        found.append(bytes(record[pos + 2 : pos + 2 + size]))
        pos += 2 + size
    return found, pos
