"""What a stream carries: which tracks, their codecs and picture size, learned from its packets."""

from __future__ import annotations

from typing import Any

from relay.formats import aac, codecs, h264, hevc, vp8

_DIMENSIONS = {"h264": h264.dimensions, "hevc": hevc.dimensions}
# Codecs whose size is in each keyframe's header instead (Enhanced RTMP frames: the body after 5 bytes).
_KEYFRAME_DIMENSIONS = {"vp8": vp8.dimensions}


class Tracks:
    """A stream's audio and video tracks as its publishers have described them so far."""

    __slots__ = ("audio_codec", "channels", "has_audio", "has_video", "height", "sample_rate", "video_codec", "width")

    def __init__(self) -> None:
        self.has_video = False
        self.has_audio = False
        self.video_codec = ""
        self.audio_codec = ""
        self.width = 0
        self.height = 0
        self.sample_rate = 0
        self.channels = 0

    def video(self, payload: bytes) -> tuple[bool, bool]:
        """(keyframe, sequence header) of one FLV video tag body, noting what it says of the track."""
        info = codecs.video_info(payload)
        if info.config:
            self.has_video = True
            self.video_codec = info.codec or self.video_codec
            parse = _DIMENSIONS.get(info.codec)
            size = parse(payload) if parse else None
            if size:
                self.width, self.height = size
        elif not self.has_video:
            self.has_video = True
            self.video_codec = info.codec
        if info.keyframe and info.codec in _KEYFRAME_DIMENSIONS:
            size = _KEYFRAME_DIMENSIONS[info.codec](payload[5:])
            if size:
                self.width, self.height = size
        return info.keyframe, info.config

    def audio(self, payload: bytes) -> bool:
        """Whether one FLV audio tag body is a sequence header, noting what it says of the track."""
        info = codecs.audio_info(payload)
        if info.config:
            self.has_audio = True
            self.audio_codec = info.codec or self.audio_codec
            if info.codec == "aac":
                config = aac.AacConfig.parse(payload)
                if config is not None:
                    self.sample_rate, self.channels = config.sample_rate, config.channels
        elif not self.has_audio:
            self.has_audio = True
            self.audio_codec = info.codec
        return info.config

    def describe(self, meta: dict[str, Any], fps: float) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The video and audio parts of a stream's stats (picture size from onMetaData when the
        sequence header did not say)."""
        video = None
        if self.has_video:
            video = {
                "codec": self.video_codec,
                "width": self.width or _dimension(meta.get("width")),
                "height": self.height or _dimension(meta.get("height")),
                "fps": round(fps, 2),
            }
        audio = None
        if self.has_audio:
            audio = {"codec": self.audio_codec, "sample_rate": self.sample_rate, "channels": self.channels}
        return video, audio


def _dimension(value: Any) -> int:
    """A picture dimension from the publisher's onMetaData, which may hold anything."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1 << 16:
        return int(value)
    return 0
