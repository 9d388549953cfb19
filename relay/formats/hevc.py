"""HEVC as FLV carries it (legacy codec id 12, Enhanced RTMP ``hvc1``): the parameter sets of the
HEVCDecoderConfigurationRecord, the picture size its SPS declares and its RFC 6381 codec string.
Returns None (or nothing) for what it cannot read; never raises."""

from __future__ import annotations

from relay.formats.bits import BitReader, nal_array, plausible, unescape

SPS = 33  # NAL unit type
_ARRAYS = 22  # numOfArrays: the parameter set arrays follow it


def parameter_sets(record: bytes) -> list[bytes]:
    """The NAL units (VPS, SPS, PPS, SEI) of an HEVCDecoderConfigurationRecord's arrays, in order;
    from an array cut short on, none."""
    found: list[bytes] = []
    if len(record) <= _ARRAYS:
        return found
    pos = _ARRAYS + 1
    for _ in range(record[_ARRAYS]):
        # Each array: NAL unit type (1 byte), numNalus (2), the NAL units.
        array = nal_array(record, pos + 3, int.from_bytes(record[pos + 1 : pos + 3], "big"))
        if pos + 3 > len(record) or array is None:
            break
        found += array[0]
        pos = array[1]
    return found


def length_size(record: bytes) -> int:
    """The size of the length field before each NAL unit of the samples (lengthSizeMinusOne + 1); 4, as
    encoders write it, for a record too short to say."""
    return (record[21] & 0x03) + 1 if len(record) > 21 else 4


def dimensions(payload: bytes) -> tuple[int, int] | None:
    """Picture size from an FLV HEVC sequence header (legacy codec id 12 or Enhanced RTMP ``hvc1``):
    the first SPS of its HEVCDecoderConfigurationRecord, if a picture can have it."""
    size = declared_size(payload)
    return plausible(size) if size else None


def declared_size(payload: bytes) -> tuple[int, int] | None:
    """The picture size that an FLV HEVC sequence header's first SPS declares, believable or not;
    None when there is no SPS to read."""
    for nal in parameter_sets(payload[5:]):
        if (nal[0] >> 1) & 0x3F == SPS:
            try:
                return _sps_size(unescape(nal[2:]))
            except IndexError:
                return None
    return None


def codec_string(payload: bytes) -> str | None:
    """The RFC 6381 codec of an FLV HEVC sequence header, as ISO/IEC 14496-15 Annex E spells it from the
    record's general profile, tier, level and flags (``hvc1.1.6.L93.B0``: Main, level 3.1); None when
    the record is too short. ``hvc1``: the sample entry our fMP4 segments carry."""
    record = payload[5:]
    if len(record) < 13:
        return None
    space, tier, profile = record[1] >> 6, (record[1] >> 5) & 1, record[1] & 0x1F
    # The compatibility flags go in reverse bit order; the constraint bytes without the trailing zero ones.
    compatibility = int(f"{int.from_bytes(record[2:6], 'big'):032b}"[::-1], 2)
    constraints = bytes(record[6:12]).rstrip(b"\x00")
    parts = [
        "hvc1",
        ("", "A", "B", "C")[space] + str(profile),
        f"{compatibility:X}",
        ("H" if tier else "L") + str(record[12]),
        *(f"{byte:X}" for byte in constraints),
    ]
    return ".".join(parts)


def _sps_size(sps: bytes) -> tuple[int, int]:
    """``sps`` without its two-byte NAL header (H.265 7.3.2.2)."""
    r = BitReader(sps)
    r.bits(4)  # sps_video_parameter_set_id
    sub_layers = r.bits(3)  # sps_max_sub_layers_minus1
    r.bit()
    r.bits(96)  # general profile, tier, compatibility and constraint flags, level
    present = [(r.bit(), r.bit()) for _ in range(sub_layers)]
    if sub_layers:
        r.bits(2 * (8 - sub_layers))
    for profile, level in present:
        r.bits(88 * profile + 8 * level)
    r.ue()  # sps_seq_parameter_set_id
    chroma_format = r.ue()
    if chroma_format == 3:
        r.bit()
    width = r.ue()
    height = r.ue()
    crop = (r.ue(), r.ue(), r.ue(), r.ue()) if r.bit() else (0, 0, 0, 0)
    sub_w = 2 if chroma_format in (1, 2) else 1
    sub_h = 2 if chroma_format == 1 else 1
    return width - sub_w * (crop[0] + crop[1]), height - sub_h * (crop[2] + crop[3])
