"""A source stream's ladder of renditions with PyAV: the hub's packets in, each rendition's packets out.

The source is decoded once; every decoded frame is scaled for each rung (swscale through PyAV's
reformatter) and encoded by that rung's encoder. A rung's keyframes fall where the source's are (the
decoder's key frames are sent to the encoder as forced IDR pictures; the encoder makes none of its
own), so renditions cut into segments and parts at the same timestamps as the source, and a player
can switch between them seamlessly. Audio passes through unchanged, the same packets for every rung.

Rungs can be switched on and off while the source runs (:meth:`Ladder.select`): a rung switched on
starts at the source's next keyframe, with the audio configuration and the audio from that time on,
given out after the rung's video configuration: a sink that watches the rendition from its first
packet (an HLS packager) then knows it has video before any audio frame comes.

Blocking and single-threaded: a worker process runs a :class:`Ladder` per source (decoding and
encoding never run on the event loop). Bad input never raises: a frame that does not decode, or that
the decoder could only conceal errors in, is counted (``errors``) and the rungs wait for the source's
next keyframe; a source that cannot be transcoded at all (no decoder for its codec, a sequence header
declaring a picture size no picture has) is counted once (``unsupported``) and nothing is made of it
until its next sequence header.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import av
from av.codec.hwaccel import HWAccel
from av.video.frame import PictureType
from av.video.reformatter import Interpolation, VideoReformatter

from relay.formats import codecs, h264, hevc
from relay.formats.bits import MAX_DIMENSION, plausible
from relay.formats.h264 import AnnexBToFlv
from relay.formats.packet import AUDIO, VIDEO, Packet
from relay.transcode.encoders import DECODE_DEVICES, encoder_options

log = logging.getLogger("minilive.transcode")

MS = Fraction(1, 1000)  # the hub's timestamps
# Recent audio frames kept for a rung that starts: the ones at or after its first picture (the
# decoder holds a few pictures back when the source has B-frames; about a second of AAC).
RECENT_AUDIO = 48
# A rung switched on waits this long (source milliseconds) for a source keyframe to start at; then it
# starts at the next picture, made an IDR (its first segment is then not aligned with the source's).
MAX_START_WAIT_MS = 2500
# Audio frames held for a video rung until its encoder gives out its first picture (about 6 s of AAC:
# an encoder silent for longer is not coming, and what comes past this is dropped, not kept without end).
HELD_AUDIO = 256
# PyAV's decoder for each codec the hub may carry.
DECODERS = {"h264": "h264", "hevc": "hevc", "vp8": "vp8", "vp9": "vp9", "av1": "libdav1d"}
# Codecs whose sequence header declares the picture size, read before a decoder is opened for it.
DECLARED_SIZE = {"h264": h264.declared_size, "hevc": hevc.declared_size}


@dataclass(slots=True, frozen=True)
class Rung:
    """One rendition: H.264 at ``height`` lines (width from the source's aspect ratio, even), or
    the source's audio alone (``height`` 0)."""

    name: str
    height: int
    video_bitrate: int = 0  # bit/s
    max_rate: int = 0  # bit/s, the VBV's
    fps_cap: float = 30.0
    # The source's own height, at most ``height`` (a stream re-encoded to H.264 for compatibility).
    source_size: bool = False

    @property
    def audio_only(self) -> bool:
        return self.height == 0

    def fits(self, source_height: int) -> bool:
        """Whether the rung is made from a source this high: never by upscaling."""
        return not self.audio_only and (self.source_size or self.height < source_height)

    def for_source(self, source_height: int) -> Rung:
        """The rung as it is made from a source this high (a source-size rung takes the size, and the
        bitrate of the preset nearest to it)."""
        if not self.source_size:
            return self
        height = min(source_height, self.height)
        preset = min(PRESETS.values(), key=lambda r: abs(r.height - height) if r.height else 1 << 30)
        return Rung(self.name, height - height % 2, preset.video_bitrate, preset.max_rate, self.fps_cap)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rung:
        return cls(**data)


PRESETS = {
    "1080p": Rung("1080p", 1080, 3_500_000, 4_200_000),
    "720p": Rung("720p", 720, 1_800_000, 2_160_000),
    "480p": Rung("480p", 480, 800_000, 960_000),
    "360p": Rung("360p", 360, 500_000, 600_000),
    "audio": Rung("audio", 0),
}


def undecodable(codec: str) -> str:
    """Why a source in ``codec`` (as relay.formats.codecs names it, "" if unknown) is not transcoded."""
    return f"no decoder for {codec} video" if codec else "its video codec is unknown"


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
        context.gop_size = 1 << 30  # keyframes only where they are forced
        context.options = encoder_options(codec, preset, tune, rung.max_rate)
        self.context = context
        self.flv = AnnexBToFlv()
        # Its own reformatter keeps one scaling context for every frame (a frame's reformat() makes one
        # per call). Bicubic, as FFmpeg's scale filter.
        self.scaler = VideoReformatter()

    def scale(self, picture: av.VideoFrame) -> av.VideoFrame:
        context = self.context
        # One thread, like the decoder and the encoder: a worker per core runs the ladders (PyAV's
        # default, a thread per core for every scale, only adds context switches).
        return self.scaler.reformat(
            picture, context.width, context.height, "yuv420p", interpolation=Interpolation.BICUBIC, threads=1
        )

    def encode(self, frame: av.VideoFrame | None) -> list[Packet]:
        out = []
        for packet in self.context.encode(frame):
            timestamp = int(packet.dts if packet.dts is not None else packet.pts)
            for keyframe, body in self.flv.push(bytes(packet)):
                config = not keyframe and body[1] == 0
                out.append(Packet(VIDEO, timestamp, body, keyframe, config))
        return out


@dataclass(slots=True)
class RungState:
    """A rung while it is switched on: whether it has started, its encoder, what it made."""

    rung: Rung
    started: bool = False
    encoder: _Encoder | None = None
    # A video rung's audio while its encoder has not given out its configuration yet.
    held: list[Packet] | None = None
    last_pts: int | None = None
    waiting_since: int | None = None  # the first picture it saw before it started
    frames_out: int = 0
    frames_dropped: int = 0  # over its frame rate cap, or dropped to catch up with real time


class Ladder:
    """Renditions of one source. Feed it the source's packets in order; each call returns what the
    rungs made of them, as ``(rung name, packet)`` in timestamp order per rung."""

    def __init__(
        self,
        rungs: list[Rung],
        preset: str = "veryfast",
        tune: str = "zerolatency",
        codec: str = "libx264",
        enabled: Iterable[str] | None = None,
        resume_after: int | None = None,
    ) -> None:
        self.rungs = rungs
        self.preset = preset
        self.tune = tune
        self.codec = codec
        self.decoder: av.CodecContext | None = None
        self.source_codec = ""
        self.states: dict[str, RungState] = {}
        self.size: tuple[int, int] | None = None
        self.waiting = True  # for the source's next keyframe (at the start, after a decoding error)
        self.errors = 0  # frames that did not decode, or decoded with errors concealed
        self.unsupported = 0  # sources refused: see refusal
        self.refusal = ""  # why the source is not transcoded now ("" while it is)
        self.frames_in = 0
        self.audio_config: Packet | None = None  # for rungs that start after it came
        self._recent_audio: deque[Packet] = deque(maxlen=RECENT_AUDIO)
        self._began_at: int | None = None  # the picture the first rungs started at
        # After a worker restart: what the renditions already have. Nothing at or before it is made
        # again, and the rungs start at the first picture after it, keyframe or not.
        self.resume_after = resume_after
        self.gpu_decode = True  # with a hardware encoder, tried until it fails once
        self.select(enabled if enabled is not None else [rung.name for rung in rungs])

    @property
    def active(self) -> list[Rung]:
        """The switched-on video rungs below the source's height: none is ever upscaled."""
        height = self.size[1] if self.size else 0
        return [s.rung for s in self.states.values() if s.rung.fits(height)]

    def select(self, names: Iterable[str]) -> list[tuple[str, Packet]]:
        """Switch on the rungs named (the others off). Video rungs start at the next keyframe; an
        audio-only rung at once, with the audio configuration it returns."""
        wanted = set(names)
        for name in [name for name in self.states if name not in wanted]:
            del self.states[name]
        out: list[tuple[str, Packet]] = []
        for rung in self.rungs:
            if rung.name in wanted and rung.name not in self.states:
                state = self.states[rung.name] = RungState(rung)
                if rung.audio_only:
                    state.started = True
                    if self.audio_config is not None:
                        out.append((rung.name, self.audio_config))
        return out

    def feed(self, packet: Packet, encode: bool = True) -> list[tuple[str, Packet]]:
        """What the rungs make of one source packet. ``encode`` False: keyframes only, the other
        pictures are decoded (the next ones need them) but dropped, to catch up with real time."""
        if packet.kind == AUDIO:
            return self._audio(packet)
        if packet.kind != VIDEO:
            return []
        if packet.config:
            self._configure(packet.payload)
            return []
        if self.decoder is None:
            codec = codecs.video_info(packet.payload).codec
            if codec not in DECODERS:  # an unknown FourCC, or legacy FLV video with no sequence header (VP6...)
                self._refuse(undecodable(codec))
            return []
        frame = codecs.coded_frame(packet.payload, any_codec=True)
        if frame is None:
            return []
        if self.waiting and not packet.keyframe:
            return []
        composition, data = frame
        source = av.Packet(bytes(data))
        source.dts, source.pts, source.time_base = packet.timestamp, packet.timestamp + composition, MS
        try:
            decoded = self.decoder.decode(source)
        except (av.FFmpegError, ValueError) as exc:
            self._failed(f"decoding: {exc}")
            return []
        self.waiting = False
        out: list[tuple[str, Packet]] = []
        for picture in decoded:
            if picture.is_corrupt:
                self._failed("a picture decoded with errors concealed")
                break
            out += self._picture(picture, encode)
        return out

    def new_publisher(self) -> None:
        """The source's next packets come from another encoder: decode them from their first keyframe."""
        self.waiting = True

    def flush(self) -> list[tuple[str, Packet]]:
        """The source ended: what the encoders still hold."""
        out: list[tuple[str, Packet]] = []
        if self.decoder is not None:
            try:
                for picture in self.decoder.decode(None):
                    out += self._picture(picture, True)
            except (av.FFmpegError, ValueError) as exc:
                self._failed(f"decoding: {exc}")
        for name, state in self.states.items():
            if state.encoder is not None:
                out += [(name, p) for p in state.encoder.encode(None)]
        return out

    # ------------------------------------------------------------ inside

    def _audio(self, packet: Packet) -> list[tuple[str, Packet]]:
        if packet.config:
            self.audio_config = packet
        else:
            if self.resume_after is not None and packet.timestamp <= self.resume_after:
                return []  # the renditions have it already
            self._recent_audio.append(packet)
        out = []
        for name, state in self.states.items():
            if state.held is not None:
                if len(state.held) < HELD_AUDIO:
                    state.held.append(packet)
            elif state.started:
                out.append((name, packet))
        return out

    def _configure(self, payload: bytes) -> None:
        codec = codecs.video_info(payload).codec
        self.decoder, self.source_codec = None, codec
        self.waiting = True
        decoder_name = DECODERS.get(codec)
        if decoder_name is None:
            self._refuse(undecodable(codec))
            return
        declared = DECLARED_SIZE[codec](payload) if codec in DECLARED_SIZE else None
        if declared is not None and plausible(declared) is None:
            self._refuse(f"its sequence header declares {declared[0]}x{declared[1]} pictures")
            return
        try:
            decoder = self._gpu_decoder(decoder_name) or av.CodecContext.create(decoder_name, "r")
        except (av.FFmpegError, ValueError) as exc:
            self._refuse(f"cannot open a {codec} decoder: {exc}")
            return
        decoder.thread_count = 1
        extradata = bytes(payload[5:])
        if extradata:
            decoder.extradata = extradata
        self.decoder, self.refusal = decoder, ""

    def _refuse(self, reason: str) -> None:
        """Nothing is made of the source until its next sequence header; counted and logged once per reason."""
        if reason != self.refusal:
            self.unsupported += 1
            log.warning("transcode: the source cannot be transcoded: %s", reason)
        self.refusal = reason

    def _gpu_decoder(self, name: str) -> av.CodecContext | None:
        """A decoder on the encoder's device (frames come back to memory for scaling), or None: no such
        device, or it cannot be opened here (logged once; the CPU decodes from then on)."""
        device = DECODE_DEVICES.get(self.codec) if self.gpu_decode else None
        if device is None:
            return None
        try:
            return av.CodecContext.create(name, "r", hwaccel=HWAccel(device, allow_software_fallback=True))
        except (av.FFmpegError, ValueError, OSError) as exc:
            log.info("transcode: cannot decode on %s (%s): decoding on the CPU", device, exc)
            self.gpu_decode = False
            return None

    def _failed(self, reason: str) -> None:
        self.errors += 1
        self.waiting = True
        if self.decoder is not None:
            # Pictures it holds from before the error (B-frames) would come out after the next keyframe.
            self.decoder.flush_buffers()
        log.info("transcode: %s; waiting for the next keyframe", reason)

    def _picture(self, picture: av.VideoFrame, encode: bool) -> list[tuple[str, Packet]]:
        self.frames_in += 1
        size = (picture.width, picture.height)
        if not (0 < size[0] <= MAX_DIMENSION and 0 < size[1] <= MAX_DIMENSION):
            self._failed(f"a picture of {size[0]}x{size[1]}")
            return []
        if size != self.size:
            self.size = size
            for state in self.states.values():
                state.encoder = None  # each opens again for its new size when it next encodes
        pts = picture.pts
        resume = self.resume_after
        if resume is not None:
            if pts <= resume:
                return []
            self.resume_after = None
        # The first picture after a restart starts the rungs like a keyframe would (forced IDR).
        keyframe = picture.key_frame or resume is not None
        width, height = size
        out: list[tuple[str, Packet]] = []
        for name, state in self.states.items():
            rung = state.rung
            if not rung.fits(height):
                continue
            starting = not state.started
            if starting:
                # At the source's next keyframe, so that it lines up with the source; but a source that
                # makes keyframes only when asked (a browser's WebRTC encoder) is not waited for long.
                if state.waiting_since is None:
                    state.waiting_since = pts
                if not keyframe and pts - state.waiting_since < MAX_START_WAIT_MS:
                    continue
                state.started = True
                state.held = self._start(pts)
            if (
                not keyframe
                and not starting
                and (not encode or (state.last_pts is not None and pts - state.last_pts < 1000 / rung.fps_cap - 2))
            ):
                state.frames_dropped += 1
                continue
            encoder = state.encoder
            idr = keyframe or starting
            if encoder is None:
                made_as = rung.for_source(height)
                encoder = state.encoder = _Encoder(
                    made_as,
                    scaled_width(width, height, made_as.height),
                    made_as.height,
                    self.preset,
                    self.tune,
                    self.codec,
                )
                idr = True  # a new encoder starts with one anyway: say so
            state.last_pts = pts
            scaled = encoder.scale(picture)
            scaled.pts, scaled.time_base = pts, MS
            scaled.pict_type = PictureType.I if idr else PictureType.NONE
            made = encoder.encode(scaled)
            state.frames_out += sum(1 for p in made if not p.config)
            if state.held is not None and made:
                # The video configuration first, then the audio held until now, then the pictures.
                configs = [p for p in made if p.config]
                made = configs + state.held + [p for p in made if not p.config]
                state.held = None
            out += [(name, p) for p in made]
        return out

    def _start(self, pts: int) -> list[Packet]:
        """A rung's audio as it starts at picture ``pts``: the configuration, then what came from then on."""
        audio = [self.audio_config] if self.audio_config is not None else []
        # The first rung to start gets the source's audio from its beginning (which often starts before
        # the first picture's time, B-frames delaying it); a later one from its first picture on.
        if self._began_at is None:
            self._began_at = pts
        first = self._began_at == pts
        audio += [p for p in self._recent_audio if first or p.timestamp >= pts]
        return audio
