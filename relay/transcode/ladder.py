"""A source stream's ladder of renditions with PyAV: the hub's packets in, each rendition's packets out.

The source is decoded once; every decoded frame is scaled for each rung (swscale through PyAV's
reformatter) and encoded by that rung's encoder. A rung's keyframes fall where the source's are (the
decoder's key frames are sent to the encoder as forced IDR pictures; the encoder makes none of its
own), so renditions cut into segments and parts at the same timestamps as the source, and a player
can switch between them seamlessly. Audio passes through unchanged, the same packets for every rung.

Blocking and single-threaded: a worker process runs a :class:`Ladder` per source (decoding and
encoding never run on the event loop). Bad input never raises: a frame that does not decode is
counted, and the rungs wait for the source's next keyframe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction

import av
from av.video.frame import PictureType
from av.video.reformatter import Interpolation, VideoReformatter

from relay.formats import codecs
from relay.formats.bits import MAX_DIMENSION
from relay.formats.h264 import AnnexBToFlv
from relay.formats.packet import AUDIO, VIDEO, Packet

log = logging.getLogger("minilive.transcode")

MS = Fraction(1, 1000)  # the hub's timestamps
# Audio frames held until the rungs start: a few decoder frames' worth (about a second of AAC).
MAX_EARLY_AUDIO = 48
# The encoder makes no keyframe of its own: only the forced ones, at the source's.
_NO_KEYFRAMES_OF_ITS_OWN = "keyint=infinite:min-keyint=1:scenecut=0"


@dataclass(slots=True, frozen=True)
class Rung:
    """One rendition: H.264 at ``height`` lines (width from the source's aspect ratio, even)."""

    name: str
    height: int
    video_bitrate: int  # bit/s
    max_rate: int  # bit/s, the VBV's
    fps_cap: float = 30.0


PRESETS = {
    "1080p": Rung("1080p", 1080, 3_500_000, 4_200_000),
    "720p": Rung("720p", 720, 1_800_000, 2_160_000),
    "480p": Rung("480p", 480, 800_000, 960_000),
    "360p": Rung("360p", 360, 500_000, 600_000),
}


def scaled_width(width: int, height: int, rung_height: int) -> int:
    """The rung's width that keeps the source's aspect ratio, rounded to an even number."""
    return max(2, round(width * rung_height / height / 2) * 2)


class _Encoder:
    """One rung's encoder, opened for one picture size, and its output as FLV video tag bodies."""

    def __init__(self, rung: Rung, width: int, height: int, preset: str, tune: str, codec: str) -> None:
        self.rung = rung
        context = av.CodecContext.create(codec, "w")
        context.thread_count = 1
        context.width, context.height = width, height
        context.pix_fmt = "yuv420p"
        context.time_base = MS
        context.framerate = Fraction(round(rung.fps_cap))
        context.bit_rate = rung.video_bitrate
        vbv = f"vbv-maxrate={rung.max_rate // 1000}:vbv-bufsize={rung.max_rate // 1000}"
        context.options = {
            "preset": preset,
            "tune": tune,
            "forced-idr": "1",
            "x264-params": f"{_NO_KEYFRAMES_OF_ITS_OWN}:{vbv}",
        }
        self.context = context
        self.flv = AnnexBToFlv()
        self.last_pts: int | None = None
        # Its own reformatter keeps one scaling context for every frame (a frame's reformat() makes one
        # per call). Bicubic, as FFmpeg's scale filter.
        self.scaler = VideoReformatter()

    def scale(self, picture: av.VideoFrame) -> av.VideoFrame:
        context = self.context
        return self.scaler.reformat(
            picture, context.width, context.height, "yuv420p", interpolation=Interpolation.BICUBIC
        )

    def encode(self, frame: av.VideoFrame | None) -> list[Packet]:
        out = []
        for packet in self.context.encode(frame):
            timestamp = int(packet.dts if packet.dts is not None else packet.pts)
            for keyframe, body in self.flv.push(bytes(packet)):
                config = not keyframe and body[1] == 0
                out.append(Packet(VIDEO, timestamp, body, keyframe, config))
        return out


class Ladder:
    """Renditions of one source. Feed it the source's packets in order; each call returns what the
    rungs made of them, as ``(rung name, packet)`` in timestamp order per rung."""

    def __init__(self, rungs: list[Rung], preset: str = "veryfast", tune: str = "zerolatency", codec: str = "libx264"):
        self.rungs = rungs
        self.preset = preset
        self.tune = tune
        self.codec = codec
        self.decoder: av.CodecContext | None = None
        self.encoders: dict[str, _Encoder] = {}
        self.size: tuple[int, int] | None = None
        self.active: list[Rung] = []  # the rungs below the source's height: none is ever upscaled
        self.waiting = True  # for the source's next keyframe (at the start, after a decoding error)
        self.errors = 0
        self.frames_in = 0
        self.audio_config: Packet | None = None  # for rungs that start after it came
        # Audio that came while the decoder had no picture out yet (it holds a few frames when the source
        # has B-frames): it goes to the rungs when they start, so that none of their audio is missing.
        self._early_audio: list[Packet] = []

    def feed(self, packet: Packet) -> list[tuple[str, Packet]]:
        if packet.kind == AUDIO:
            if packet.config:
                self.audio_config = packet
            elif not self.active and len(self._early_audio) < MAX_EARLY_AUDIO:
                self._early_audio.append(packet)
            return [(rung.name, packet) for rung in self.active]
        if packet.kind != VIDEO:
            return []
        if packet.config:
            self._configure(packet.payload)
            return []
        frame = codecs.coded_frame(packet.payload)
        if frame is None or self.decoder is None:
            return []
        if self.waiting and not packet.keyframe:
            return []
        composition, data = frame
        source = av.Packet(bytes(data))
        source.dts, source.pts, source.time_base = packet.timestamp, packet.timestamp + composition, MS
        try:
            decoded = self.decoder.decode(source)
        except av.FFmpegError as exc:
            self._failed(f"decoding: {exc}")
            return []
        self.waiting = False
        out: list[tuple[str, Packet]] = []
        for picture in decoded:
            out += self._encode(picture)
        return out

    def flush(self) -> list[tuple[str, Packet]]:
        """The source ended: what the encoders still hold."""
        out: list[tuple[str, Packet]] = []
        if self.decoder is not None:
            try:
                for picture in self.decoder.decode(None):
                    out += self._encode(picture)
            except av.FFmpegError as exc:
                self._failed(f"decoding: {exc}")
        for name, encoder in self.encoders.items():
            out += [(name, p) for p in encoder.encode(None)]
        return out

    # ------------------------------------------------------------ inside

    def _configure(self, payload: bytes) -> None:
        codec = codecs.video_info(payload).codec
        if codec not in ("h264", "hevc"):
            self.decoder = None
            log.info("transcode: no decoder for %r video", codec)
            return
        decoder = av.CodecContext.create(codec, "r")
        decoder.thread_count = 1
        decoder.extradata = bytes(payload[5:])
        self.decoder = decoder
        self.waiting = True

    def _failed(self, reason: str) -> None:
        self.errors += 1
        self.waiting = True
        log.info("transcode: %s; waiting for the next keyframe", reason)

    def _encode(self, picture: av.VideoFrame) -> list[tuple[str, Packet]]:
        self.frames_in += 1
        size = (picture.width, picture.height)
        if not (0 < size[0] <= MAX_DIMENSION and 0 < size[1] <= MAX_DIMENSION):
            self._failed(f"a picture of {size[0]}x{size[1]}")
            return []
        out: list[tuple[str, Packet]] = []
        if size != self.size:
            out += self._resize(size)
        keyframe = picture.key_frame
        for rung in self.active:
            encoder = self.encoders[rung.name]
            if (
                not keyframe
                and encoder.last_pts is not None
                and picture.pts - encoder.last_pts < 1000 / rung.fps_cap - 2
            ):
                continue  # over the rung's frame rate
            encoder.last_pts = picture.pts
            scaled = encoder.scale(picture)
            scaled.pts, scaled.time_base = picture.pts, MS
            scaled.pict_type = PictureType.I if keyframe else PictureType.NONE
            out += [(rung.name, p) for p in encoder.encode(scaled)]
        return out

    def _resize(self, size: tuple[int, int]) -> list[tuple[str, Packet]]:
        """A new source picture size: the rungs below it, each with an encoder for its new size; the
        audio configuration for the rungs that start now."""
        width, height = size
        self.size = size
        started = [rung for rung in self.rungs if rung.height < height and rung not in self.active]
        self.active = [rung for rung in self.rungs if rung.height < height]
        self.encoders = {
            rung.name: _Encoder(
                rung, scaled_width(width, height, rung.height), rung.height, self.preset, self.tune, self.codec
            )
            for rung in self.active
        }
        audio = ([self.audio_config] if self.audio_config is not None else []) + self._early_audio
        self._early_audio = []
        return [(rung.name, packet) for rung in started for packet in audio]
