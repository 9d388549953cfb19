"""Audio transcoding between WebRTC (Opus) and FLV (AAC) with PyAV.

Both classes are plain, blocking objects: callers run them on a single-thread executor per stream
or session, so that encoding never stalls the event loop and frames keep their order.
"""

from __future__ import annotations

from fractions import Fraction

import av

OPUS_RATE = 48000
OPUS_FRAME = 960  # 20 ms
AAC_FRAME = 1024


def audio_encoder(codec: str, sample_format: str, bit_rate: int) -> av.CodecContext:
    """An open 48 kHz stereo audio encoder."""
    encoder = av.CodecContext.create(codec, "w")
    encoder.sample_rate = OPUS_RATE
    encoder.layout = "stereo"
    encoder.format = sample_format
    encoder.bit_rate = bit_rate
    encoder.time_base = Fraction(1, OPUS_RATE)
    encoder.open()
    return encoder


class OpusToAac:
    """Decoded Opus frames (aiortc decodes them in its receiver thread) to raw AAC frames, 48 kHz."""

    def __init__(self, bit_rate: int = 128000) -> None:
        self.encoder = audio_encoder("aac", "fltp", bit_rate)
        self.resampler = av.AudioResampler(format="fltp", layout="stereo", rate=OPUS_RATE, frame_size=AAC_FRAME)
        self.samples = 0

    @property
    def audio_specific_config(self) -> bytes:
        return bytes(self.encoder.extradata or b"")

    def encode(self, frame: av.AudioFrame) -> list[tuple[int, bytes]]:
        """(pts in 1/48000 s from the first sample, raw AAC frame) for what the encoder has ready."""
        out = []
        for chunk in self.resampler.resample(frame):
            chunk.pts = self.samples
            chunk.time_base = self.encoder.time_base
            self.samples += chunk.samples
            out += [(max(0, p.pts or 0), bytes(p)) for p in self.encoder.encode(chunk)]
        return out


class AacToOpus:
    """Raw AAC frames (with their AudioSpecificConfig) to Opus packets, 48 kHz stereo, 20 ms each."""

    def __init__(self, audio_specific_config: bytes, bit_rate: int = 64000) -> None:
        self.decoder = av.CodecContext.create("aac", "r")
        self.decoder.extradata = audio_specific_config
        self.encoder = audio_encoder("libopus", "s16", bit_rate)
        self.resampler = av.AudioResampler(format="s16", layout="stereo", rate=OPUS_RATE, frame_size=OPUS_FRAME)
        self.start: int | None = None  # first input time, in 1/48000 s
        self.samples = 0

    def encode(self, timestamp_ms: int, frame: bytes) -> list[tuple[int, bytes]]:
        """(pts in 1/48000 s on the stream's timeline, Opus packet) for one AAC frame."""
        if self.start is None:
            self.start = timestamp_ms * OPUS_RATE // 1000
        out = []
        try:
            decoded = self.decoder.decode(av.Packet(frame))
        except av.FFmpegError:
            return out  # one corrupt frame: skip it, the decoder recovers on the next
        for pcm in decoded:
            pcm.pts = None
            for chunk in self.resampler.resample(pcm):
                chunk.pts = self.samples
                chunk.time_base = self.encoder.time_base
                self.samples += chunk.samples
                for packet in self.encoder.encode(chunk):
                    out.append((self.start + max(0, packet.pts or 0), bytes(packet)))
        return out
