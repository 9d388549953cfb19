"""HEVC as FLV carries it (legacy codec id 12, Enhanced RTMP ``hvc1``): the picture size that the
HEVCDecoderConfigurationRecord's SPS declares. Returns None for what it cannot read; never raises."""

from __future__ import annotations

from relay.formats.bits import BitReader, plausible, unescape

SPS = 33  # NAL unit type


def dimensions(payload: bytes) -> tuple[int, int] | None:
    """Picture size from an FLV HEVC sequence header (legacy codec id 12 or Enhanced RTMP ``hvc1``):
    the first SPS of its HEVCDecoderConfigurationRecord."""
    record = payload[5:]
    if len(record) < 23:
        return None
    pos = 23
    try:
        for _ in range(record[22]):
            nal_type = record[pos] & 0x3F
            count = int.from_bytes(record[pos + 1 : pos + 3], "big")
            pos += 3
            for _ in range(count):
                size = int.from_bytes(record[pos : pos + 2], "big")
                if nal_type == SPS:
                    return plausible(_sps_size(unescape(record[pos + 4 : pos + 2 + size])))
                pos += 2 + size
    except IndexError:
        return None
    return None


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
