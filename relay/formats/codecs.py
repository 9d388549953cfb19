"""FLV audio and video tag headers: which codec, keyframe or not, sequence header or frame.

Covers legacy FLV (H.264 codec id 7, HEVC codec id 12 as Chinese CDNs use it, AAC and the
other SoundFormats) and Enhanced RTMP (FourCC ``avc1``/``hvc1``/``av01``/``vp09``/``vp08`` video,
FourCC audio such as ``Opus`` and ``mp4a``). What each codec's configuration says is in its own module
(:mod:`relay.formats.h264`, :mod:`~relay.formats.hevc`, :mod:`~relay.formats.vp8`, :mod:`~relay.formats.aac`).
"""

from __future__ import annotations

from dataclasses import dataclass

VIDEO_CODEC_IDS = {2: "h263", 3: "screen", 4: "vp6", 5: "vp6a", 6: "screen2", 7: "h264", 12: "hevc"}
VIDEO_FOURCC = {b"avc1": "h264", b"hvc1": "hevc", b"av01": "av1", b"vp09": "vp9", b"vp08": "vp8"}
AUDIO_FORMATS = {
    0: "pcm",
    1: "adpcm",
    2: "mp3",
    3: "pcm_le",
    4: "nellymoser",
    5: "nellymoser",
    6: "nellymoser",
    7: "g711a",
    8: "g711u",
    10: "aac",
    11: "speex",
    14: "mp3",
}
AUDIO_FOURCC = {
    b"Opus": "opus",
    b"mp4a": "aac",
    b".mp3": "mp3",
    b"fLaC": "flac",
    b"ac-3": "ac3",
    b"ec-3": "eac3",
}

# Enhanced RTMP video packet types
_EX_SEQUENCE_START = 0
_EX_CODED_FRAMES = 1
_EX_CODED_FRAMES_X = 3
_EX_MPEG2TS_SEQUENCE_START = 5


@dataclass(slots=True)
class VideoInfo:
    keyframe: bool
    config: bool
    codec: str


@dataclass(slots=True)
class AudioInfo:
    config: bool
    codec: str


def video_info(payload: bytes) -> VideoInfo:
    if not payload:
        return VideoInfo(False, False, "")
    b0 = payload[0]
    if b0 & 0x80:  # Enhanced RTMP ExVideoTagHeader
        frame_type = (b0 >> 4) & 0x07
        packet_type = b0 & 0x0F
        codec = VIDEO_FOURCC.get(bytes(payload[1:5]), "")
        config = packet_type in (_EX_SEQUENCE_START, _EX_MPEG2TS_SEQUENCE_START)
        coded = packet_type in (_EX_CODED_FRAMES, _EX_CODED_FRAMES_X)
        return VideoInfo(frame_type == 1 and coded, config, codec)
    frame_type = b0 >> 4
    codec_id = b0 & 0x0F
    codec = VIDEO_CODEC_IDS.get(codec_id, "")
    packet_type = payload[1] if codec_id in (7, 12) and len(payload) > 1 else 1
    # AVCPacketType 0 is the sequence header, 2 the end of sequence: neither starts a GOP.
    return VideoInfo(frame_type == 1 and packet_type == 1, packet_type == 0, codec)


def coded_frame(payload: bytes, any_codec: bool = False) -> tuple[int, bytes] | None:
    """(composition time offset in ms, NAL units as they are) of an FLV H.264/HEVC coded frame, legacy
    or Enhanced RTMP; None for sequence headers, ends of sequence and other codecs' frames. With
    ``any_codec``, also an Enhanced RTMP VP8, VP9 or AV1 frame (which has no composition offset)."""
    if len(payload) < 5:
        return None
    if payload[0] & 0x80:
        packet_type = payload[0] & 0x0F
        fourcc = bytes(payload[1:5])
        if fourcc not in (b"avc1", b"hvc1"):
            if any_codec and fourcc in VIDEO_FOURCC and packet_type in (_EX_CODED_FRAMES, _EX_CODED_FRAMES_X):
                return 0, payload[5:]
            return None
        if packet_type == _EX_CODED_FRAMES_X:
            return 0, payload[5:]
        if packet_type == _EX_CODED_FRAMES and len(payload) >= 8:
            return int.from_bytes(payload[5:8], "big", signed=True), payload[8:]
        return None
    if payload[0] & 0x0F not in (7, 12) or payload[1] != 1:
        return None
    return int.from_bytes(payload[2:5], "big", signed=True), payload[5:]


def audio_info(payload: bytes) -> AudioInfo:
    if not payload:
        return AudioInfo(False, "")
    sound_format = payload[0] >> 4
    if sound_format == 9:  # Enhanced RTMP ExAudioTagHeader
        packet_type = payload[0] & 0x0F
        return AudioInfo(packet_type == 0, AUDIO_FOURCC.get(bytes(payload[1:5]), ""))
    codec = AUDIO_FORMATS.get(sound_format, "")
    return AudioInfo(sound_format == 10 and len(payload) > 1 and payload[1] == 0, codec)
