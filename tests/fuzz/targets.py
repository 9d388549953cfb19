"""Fuzz targets for every parser that reads bytes from the network or a file an operator writes (issue 16).

Each target feeds one input to a parser the way the server does and lets through only the errors the
server catches around that parser and turns into a log line and a counter (or a 4xx answer); anything
else (IndexError, struct.error, KeyError, TypeError, RecursionError, UnicodeDecodeError...) escapes and
is a crash. Memory is bounded where a declared length could drive an allocation: the target checks what
the parser holds after each feed.

They are driven by a short seeded run in the suite (tests/test_fuzz_parsers.py) and by atheris, coverage
guided, for millions of inputs (``python -m bench.fuzz``). Seeds: tests/fuzz/seeds/<target>/ (real
captures, ``python -m bench.fuzz_seeds``); inputs that once crashed: tests/fuzz/crashes/<target>/.
"""

from __future__ import annotations

import atexit
import contextlib
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from api import config
from ingest.rtmp import amf
from ingest.rtmp.connection import Connect, Limits, Media, Metadata, Play, ProtocolError, Publish, ServerConnection
from ingest.rtmp.handshake import HandshakeError, ServerHandshake
from relay.formats.flv import SCRIPT, VIDEO, FlvError, FlvReader
from relay.formats.rtmp_chunk import ChunkError, ChunkReader
from relay.http import fast, hls
from relay.hub.tracks import Tracks
from signaling.sdp import OfferError, narrow_offer

HERE = Path(__file__).resolve().parent
SEEDS = HERE / "seeds"
CRASHES = HERE / "crashes"


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    # What the server catches around this parser (a protocol error: log line, counter, 4xx); nothing else may escape.
    errors: tuple[type[BaseException], ...]
    max_len: int  # the longest input worth trying: past the seeds' size nothing new is reached

    def seeds(self) -> list[bytes]:
        return [path.read_bytes() for path in sorted((SEEDS / self.name).iterdir())]

    def crashes(self) -> list[tuple[str, bytes]]:
        folder = CRASHES / self.name
        return [(path.name, path.read_bytes()) for path in sorted(folder.iterdir())] if folder.is_dir() else []

    def check(self, data: bytes) -> None:
        """Run one input; an error the server does not catch propagates."""
        with contextlib.suppress(self.errors):
            self.run(data)


def pieces(data: bytes) -> Iterator[bytes]:
    """``data`` in three reads, as TCP may split it: every parser must resume at any byte."""
    third = len(data) // 3
    yield data[:third]
    yield data[third : 2 * third]
    yield data[2 * third :]


# ---------------------------------------------------------------- RTMP


def handshake(data: bytes) -> None:
    """The server's side (ingest.server), fed as TCP may split it; it answers C0+C1 with S0+S1+S2."""
    server = ServerHandshake()
    for piece in pieces(data):
        if server.done:
            break
        reply = server.receive_data(piece)
        assert len(reply) in (0, 1 + 2 * 1536), len(reply)


# The server's limits (ingest.rtmp.connection.Limits) after connect and before publish.
_LIMITS = Limits()


def rtmp_chunk(data: bytes) -> None:
    reader = ChunkReader(
        max_message_size=_LIMITS.max_message_size,
        max_pending_bytes=_LIMITS.prepublish_bytes,
        max_other_size=_LIMITS.command_message_size,
    )
    for piece in pieces(data):
        for message in reader.feed(piece):
            assert len(message.payload) <= _LIMITS.max_message_size
        assert reader.held_bytes <= _LIMITS.prepublish_bytes, reader.held_bytes
    reader.release()


def rtmp(data: bytes) -> None:
    """A whole RTMP session as ingest.server drives it: handshake, chunks, AMF commands, every event
    accepted (connect, publish, play), media through the hub's track reading."""
    connection = ServerConnection()
    tracks = Tracks()
    events: list = []
    for piece in pieces(data):
        events += connection.receive_data(piece)
        while events:
            event = events.pop(0)
            if isinstance(event, Connect):
                events += connection.accept_connect(event)
            elif isinstance(event, Publish):
                connection.accept_publish(event)
            elif isinstance(event, Play):
                connection.accept_play(event)
            elif isinstance(event, Media):
                tracks.video(event.payload) if event.type_id == VIDEO else tracks.audio(event.payload)
            elif isinstance(event, Metadata):
                tracks.describe(event.values, 0.0)
        connection.data_to_send()
    connection.reader.release()


def amf0(data: bytes) -> None:
    values = amf.decode(data)
    assert len(values) <= amf.MAX_VALUES


def amf3(data: bytes) -> None:
    """AMF3 values as they arrive, after AMF0's AVM+ marker (an AMF3 command, type 17, is AMF0 after its
    first byte: the amf0 target)."""
    amf.decode(b"\x11" + data)


# ---------------------------------------------------------------- FLV


def flv(data: bytes) -> None:
    """HTTP-FLV as an edge pulls it from its origin (relay.cluster.pull): tags into the hub's tracks,
    whose codec reading covers the FLV audio and video tag headers, Enhanced RTMP's included."""
    reader = FlvReader()
    tracks = Tracks()
    for piece in pieces(data):
        for tag in reader.feed(piece):
            if tag.kind == VIDEO:
                tracks.video(tag.payload)
            elif tag.kind != SCRIPT:
                tracks.audio(tag.payload)
        assert len(reader._buf) <= 13 + 1024 + reader.max_tag_size + 15, len(reader._buf)


# ---------------------------------------------------------------- HTTP


_FAST_ROUTES = (hls.PLAYLIST_PATH, hls.MASTER_PATH, hls.MEDIA_PATH)


def http(data: bytes) -> None:
    """What relay.http.fast does with a connection's bytes: find a head, read it or leave it to aiohttp."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > fast.MAX_HEAD:
        return
    request = fast.parse_head(data[:end])
    if request is None:
        return
    assert request.path.startswith("/") and ".." not in request.path.split("/"), request.path
    for pattern in _FAST_ROUTES:
        pattern.fullmatch(request.path)


# ---------------------------------------------------------------- SDP


def sdp(data: bytes) -> None:
    """A WHIP or WHEP offer as signaling.endpoint reads it: UTF-8 (else 400), then narrowed (else OfferError)."""
    text = data.decode()
    for codecs in (("h264",), ("h264", "vp8")):
        try:
            narrow_offer(text, codecs)
        except OfferError as exc:
            assert exc.status in (400, 406, 413), exc.status


# ---------------------------------------------------------------- config


_CONFIG_FILE: list[Path] = []


def config_file(data: bytes) -> None:
    """A config file as ``minilive serve --config`` reads it: settings, or a ConfigError that names the fix."""
    if not _CONFIG_FILE:
        folder = tempfile.mkdtemp(prefix="minilive-fuzz-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _CONFIG_FILE.append(Path(folder) / "minilive.toml")
    path = _CONFIG_FILE[0]
    path.write_bytes(data)
    try:
        config.load(path, {})
    except config.ConfigError as exc:
        assert str(exc), "a config error says what is wrong"
        raise


TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        Target("handshake", handshake, (HandshakeError,), 4096),
        Target("rtmp_chunk", rtmp_chunk, (ChunkError,), 16384),
        Target("rtmp", rtmp, (HandshakeError, ChunkError, amf.AMFError, ProtocolError), 16384),
        Target("amf0", amf0, (amf.AMFError,), 4096),
        Target("amf3", amf3, (amf.AMFError,), 4096),
        Target("flv", flv, (FlvError,), 16384),
        Target("http", http, (), 8192),
        Target("sdp", sdp, (UnicodeDecodeError,), 16384),
        Target("config", config_file, (config.ConfigError,), 8192),
    )
}


# ---------------------------------------------------------------- mutation (the suite's short runs)

_INTERESTING = (0x00, 0x01, 0x03, 0x7F, 0x80, 0xFF)
_HUGE = (b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\xff\xff\xff", b"\xff\xff", b"\x80\x00\x00\x00")


def mutate(data: bytes, rng: random.Random, seeds: list[bytes]) -> bytes:
    """A real input broken as a hostile or buggy peer would: bits flipped, bytes overwritten, huge length
    fields, cut short, a slice duplicated, spliced with another seed, junk inserted."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        action = rng.randrange(8)
        pos = rng.randrange(len(out)) if out else 0
        if action == 0 and out:
            out[pos] ^= 1 << rng.randrange(8)
        elif action == 1 and out:
            out[pos] = rng.choice(_INTERESTING)
        elif action == 2:
            out[pos : pos + 4] = rng.choice(_HUGE)
        elif action == 3:
            del out[rng.randint(0, len(out)) :]
        elif action == 4 and out:
            start = rng.randrange(len(out))
            piece = out[start : start + rng.randint(1, 64)]
            out[pos:pos] = piece * rng.randint(1, 4)
        elif action == 5:
            other = rng.choice(seeds)
            cut = rng.randint(0, len(other))
            out[pos:] = other[cut:]
        elif action == 6:
            out[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif out:
            del out[pos : pos + rng.randint(1, 32)]
    return bytes(out)


def inputs(target: Target, count: int, seed: int = 16) -> Iterator[bytes]:
    """``count`` deterministic inputs for ``target``: its seeds, its old crashes, then mutations of them
    and a few random byte strings."""
    rng = random.Random(seed)
    seeds = target.seeds()
    yield from seeds
    yield from (data for _, data in target.crashes())
    for index in range(count):
        if index % 16 == 15:
            yield rng.randbytes(rng.randint(0, 512))
        else:
            yield mutate(rng.choice(seeds), rng, seeds)
