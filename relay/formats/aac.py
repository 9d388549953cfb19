"""AAC as FLV carries it: the AudioSpecificConfig of the sequence header, the RFC 6381 codec it names,
and ADTS headers built from it (MPEG-TS carries AAC in ADTS). Returns None for what it cannot read;
never raises."""

from __future__ import annotations

# An ADTS header holds a frame's length, header included, in 13 bits: bigger "frames" cannot be carried
# (and are no AAC frame: one holds at most 6144 bits per channel).
MAX_ADTS_FRAME = 0x1FFF - 7

RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


class AacConfig:
    """An AudioSpecificConfig's facts, and the ADTS headers they make."""

    __slots__ = ("_headers", "channels", "object_type", "profile", "rate_index")

    def __init__(self, object_type: int, rate_index: int, channels: int) -> None:
        self.object_type = object_type
        self.profile = max(0, min(object_type - 1, 3))
        self.rate_index = rate_index
        self.channels = channels
        # ADTS headers by frame size: at most MAX_ADTS_FRAME + 1 of them.
        self._headers: dict[int, bytes] = {}

    @classmethod
    def parse(cls, payload: bytes) -> AacConfig | None:
        """The configuration in an FLV AAC sequence header (its AudioSpecificConfig); None when short."""
        asc = payload[2:]
        if len(asc) < 2:
            return None
        return cls(asc[0] >> 3, ((asc[0] & 0x07) << 1) | (asc[1] >> 7), (asc[1] >> 3) & 0x0F)

    @property
    def sample_rate(self) -> int:
        """In Hz; 0 for an index with no rate (15 means an explicit rate follows, unread here)."""
        return RATES[self.rate_index] if self.rate_index < len(RATES) else 0

    @property
    def codec_string(self) -> str:
        """RFC 6381: ``mp4a.40.`` and the audio object type (2 AAC-LC, 5 HE-AAC, 29 HE-AAC v2)."""
        return f"mp4a.40.{self.object_type}"

    def adts(self, size: int) -> bytes:
        """The ADTS header of a frame of ``size`` bytes, at most :data:`MAX_ADTS_FRAME` (callers leave
        bigger ones out)."""
        header = self._headers.get(size)
        if header is None:
            header = self._headers[size] = self._adts(size)
        return header

    def _adts(self, size: int) -> bytes:
        length = size + 7
        return bytes(
            (
                0xFF,
                0xF1,
                (self.profile << 6) | (self.rate_index << 2) | (self.channels >> 2),
                ((self.channels & 3) << 6) | (length >> 11),
                (length >> 3) & 0xFF,
                ((length & 7) << 5) | 0x1F,
                0xFC,
            )
        )
