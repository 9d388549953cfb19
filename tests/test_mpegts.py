"""The MPEG-TS muxer: packet framing, continuity across segments, PSI CRCs, and FFmpeg decoding it."""

from __future__ import annotations

from relay.formats import codecs, flv, mpegts
from relay.formats.mpegts import AUDIO_PID, PMT_PID, TS_SIZE, VIDEO_PID, TsMuxer, crc32_mpeg2
from relay.formats.packet import AUDIO, VIDEO, Packet
from tests.conftest import FFMPEG, decode_cleanly, needs_ffmpeg, probe_frames, run


def packets_of(data: bytes) -> list[bytes]:
    assert len(data) % TS_SIZE == 0
    return [data[i : i + TS_SIZE] for i in range(0, len(data), TS_SIZE)]


def pid(ts: bytes) -> int:
    return ((ts[1] & 0x1F) << 8) | ts[2]


def to_packets(tags: list[flv.Tag]) -> list[Packet]:
    out = []
    for tag in tags:
        if tag.kind == VIDEO:
            info = codecs.video_info(tag.payload)
            out.append(Packet(VIDEO, tag.timestamp, tag.payload, info.keyframe, info.config))
        elif tag.kind == AUDIO:
            out.append(Packet(AUDIO, tag.timestamp, tag.payload, False, codecs.audio_info(tag.payload).config))
    return out


async def make_flv(path, seconds: int = 3) -> list[Packet]:
    code, _, err = await run(
        FFMPEG,
        "-v",
        "error",
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=sample_rate=44100",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "25",
        "-bf",
        "2",
        "-c:a",
        "aac",
        "-t",
        str(seconds),
        str(path),
    )
    assert code == 0, err.decode()
    return to_packets(flv.FlvReader().feed(path.read_bytes()))


def _pts(pes: bytes) -> int:
    """The PTS of a PES header."""
    field = pes[9:14]
    return (field[0] >> 1 & 7) << 30 | field[1] << 22 | (field[2] >> 1) << 15 | field[3] << 7 | field[4] >> 1


def test_psi_sections_carry_valid_crcs() -> None:
    muxer = TsMuxer()
    pat, pmt = packets_of(bytes(muxer.part([], 0, True)))
    assert pid(pat) == 0 and pid(pmt) == PMT_PID
    for ts in (pat, pmt):
        section_length = ((ts[6] & 0x0F) << 8) | ts[7]
        section = ts[5 : 5 + 3 + section_length]
        assert crc32_mpeg2(section) == 0, "a section followed by its CRC checks to zero"


def test_every_pes_size_packs_into_whole_packets() -> None:
    muxer = TsMuxer(has_video=False, has_audio=True, audio_delay_ms=0)
    muxer.configure(Packet(AUDIO, 0, b"\xaf\x00\x12\x10", config=True))
    for size in range(1, 700):
        data = bytes(muxer.part([Packet(AUDIO, size, b"\xaf\x01" + b"\x11" * size)], size, False))
        assert data and len(data) % TS_SIZE == 0, size
        assert all(ts[0] == 0x47 for ts in packets_of(data))


@needs_ffmpeg
async def test_continuity_counters_run_on_across_segments_and_ffmpeg_decodes(tmp_path) -> None:
    packets = await make_flv(tmp_path / "in.flv")
    muxer = TsMuxer()
    segments: list[bytes] = []
    frames: list[Packet] = []
    for packet in [*packets, None]:
        if packet is not None and packet.config:
            muxer.configure(packet)
            continue
        if (packet is None or packet.keyframe) and frames:
            segments.append(bytes(muxer.part(frames, frames[-1].timestamp, True)))
            frames = []
        if packet is not None:
            frames.append(packet)
    assert len(segments) == 3
    last_cc: dict[int, int] = {}
    for ts in packets_of(b"".join(segments)):
        if ts[3] & 0x10:  # has payload
            p, cc = pid(ts), ts[3] & 0x0F
            if p in last_cc:
                assert cc == (last_cc[p] + 1) % 16, f"continuity broken on PID {p:#x}"
            last_cc[p] = cc
    assert {VIDEO_PID, AUDIO_PID} <= set(last_cc)
    out = tmp_path / "out.ts"
    out.write_bytes(b"".join(segments))
    await decode_cleanly(str(out))
    (video,) = [s for s in await probe_frames(str(out)) if s["codec_type"] == "video"]
    assert int(video["nb_read_frames"]) == 75, "all 3 s of frames"
    assert video["has_b_frames"] > 0, "B-frames (composition time offsets) are kept"


def test_a_new_muxer_after_a_codec_change_keeps_counting() -> None:
    first = TsMuxer(has_video=False, has_audio=True, audio_delay_ms=0)
    first.configure(Packet(AUDIO, 0, b"\xaf\x00\x12\x10", config=True))
    last = packets_of(bytes(first.part([Packet(AUDIO, 0, b"\xaf\x01" + b"\x11" * 500)], 0, True)))[-1]
    second = TsMuxer(has_video=False, has_audio=True, audio_delay_ms=0)
    second.continue_from(first)
    second.configure(Packet(AUDIO, 0, b"\xaf\x00\x11\x90", config=True))
    pat, _, following = packets_of(bytes(second.part([Packet(AUDIO, 23, b"\xaf\x01" + b"\x22" * 10)], 23, True)))
    assert pat[3] & 0x0F == 1, "PAT counter goes on"
    assert following[3] & 0x0F == ((last[3] & 0x0F) + 1) % 16, "audio PID counter goes on"


def test_aac_frames_are_gathered_into_one_pes_until_the_delay_or_the_part_ends() -> None:
    muxer = TsMuxer(has_video=True, has_audio=True, audio_delay_ms=300)
    muxer.configure(Packet(AUDIO, 0, b"\xaf\x00\x12\x10", config=True))
    frames = [Packet(AUDIO, 23 * i, b"\xaf\x01" + bytes([i]) * 200) for i in range(40)]

    def pes_starts(data: bytes) -> list[int]:
        """The PTS (90 kHz) of every PES that starts in ``data``."""
        starts = [ts for ts in packets_of(data) if ts[1] & 0x40]
        return [_pts(ts[4 + 1 + ts[4] :] if ts[3] & 0x20 else ts[4:]) for ts in starts]

    held = bytes(muxer.part(frames[:14], 23 * 14, False))
    assert pes_starts(held) == [0], "frames under 300 ms apart make one PES, written when the part ends"
    assert held.count(b"\xff\xf1") >= 14, "each frame keeps its ADTS header"
    gathered = bytes(muxer.part(frames[14:40], 23 * 40, False))
    # The frame 300 ms or more after the first of a PES is its last: 14 x 23 ms = 322 ms, 15 frames.
    assert pes_starts(gathered) == [14 * 23 * 90, 29 * 23 * 90]


@needs_ffmpeg
async def test_enhanced_rtmp_avc1_frames_are_muxed_like_legacy_ones(tmp_path) -> None:
    packets = await make_flv(tmp_path / "in.flv", seconds=1)

    def enhanced(packet: Packet) -> Packet:
        """The same H.264 as Enhanced RTMP: ExVideoTagHeader + avc1, CodedFrames with its SI24 offset."""
        if packet.kind != VIDEO:
            return packet
        frame_type = packet.payload[0] >> 4
        packet_type = packet.payload[1]  # 0 sequence start, 1 coded frames, 2 sequence end: as in legacy AVC
        head = bytes((0x80 | frame_type << 4 | packet_type,)) + b"avc1"
        body = packet.payload[2:5] + packet.payload[5:] if packet_type == 1 else packet.payload[5:]
        return Packet(VIDEO, packet.timestamp, head + body, packet.keyframe, packet.config)

    def nal_units(payload: bytes) -> int:
        count, pos = 0, 5
        while pos + 4 <= len(payload):
            pos += 4 + int.from_bytes(payload[pos : pos + 4], "big")
            count += 1
        return count

    # Frames of shapes that the ffmpeg stream does not have.
    def frame(timestamp: int, *units: bytes, keyframe: bool = False) -> Packet:
        body = b"".join(len(unit).to_bytes(4, "big") + unit for unit in units)
        return Packet(VIDEO, timestamp, bytes((0x17 if keyframe else 0x27, 1, 0, 0, 0)) + body, keyframe)

    slice_ = b"\x41" + bytes(range(256)) * 4
    packets += [
        frame(2000, b"\x09\xf0", slice_),  # the publisher's own AUD
        frame(2040, b"\x41\x9a\x02"),  # a frame that fits one packet
        frame(2080, slice_, b"\x06\x05"),  # the last packet's bytes reach back past the last NAL unit
        frame(2120, slice_, b""),  # an empty NAL unit
        frame(2160, b"\x65" + bytes(range(200)) * 9, keyframe=True),
    ]
    multi = [p for p in packets if p.kind == VIDEO and not p.config and nal_units(p.payload) > 1]
    assert multi, "frames of several NAL units"
    outputs = []
    for source in (packets, [enhanced(p) for p in packets]):
        muxer = TsMuxer()
        for packet in source:
            if packet.config:
                muxer.configure(packet)
        outputs.append(bytes(muxer.part([p for p in source if not p.config], 0, True)))
    assert len(outputs[1]) > 100 * TS_SIZE
    assert outputs[0] == outputs[1], "the same access units whatever the FLV video header"


Frames = list[Packet]


def random_frames(seed: int, length_size: int = 4, frames: int = 600) -> tuple[Frames, Frames, Frames]:
    """Config packets, then the same random H.264 and AAC frames as legacy FLV AVC and as Enhanced RTMP
    avc1: frames of every shape (several NAL units, empty or overrunning ones, the publisher's own AUDs,
    tiny and large frames, negative composition offsets), audio frames of every size."""
    import random

    rng = random.Random(seed)
    sps, pps = b"\x67\x42\x00\x1f\xaa\xbb", b"\x68\xce\x3c\x80"
    record = bytes((1, 0x42, 0, 0x1F, 0xFC | (length_size - 1), 0xE1)) + len(sps).to_bytes(2, "big") + sps
    record += b"\x01" + len(pps).to_bytes(2, "big") + pps
    configs = [
        Packet(VIDEO, 0, b"\x17\x00\x00\x00\x00" + record, config=True),
        Packet(AUDIO, 0, b"\xaf\x00\x12\x10", config=True),
    ]
    legacy: list[Packet] = []
    enhanced: list[Packet] = []
    largest = (1 << 8 * length_size) - 1
    for i in range(frames):
        timestamp = i * 20
        if rng.random() < 0.4:
            audio = Packet(AUDIO, timestamp, b"\xaf\x01" + rng.randbytes(rng.randrange(1, 700)))
            legacy.append(audio)
            enhanced.append(audio)
            continue
        keyframe = rng.random() < 0.1
        units = []
        for _ in range(rng.randrange(1, 5)):
            kind = rng.choice([1, 1, 1, 5, 6, 9]) if rng.random() < 0.3 else (5 if keyframe else 1)
            size = rng.choice([0, 1, 2, rng.randrange(3, 40), rng.randrange(40, 400), rng.randrange(400, 30000)])
            size = min(size, largest)
            units.append(size.to_bytes(length_size, "big") + (bytes((kind,)) + rng.randbytes(size))[:size])
        body = b"".join(units)
        if rng.random() < 0.05:
            body = body[: rng.randrange(len(body) + 1)]  # a length that runs past the frame
        cts = rng.randrange(-300, 300)
        frame_type = 1 if keyframe else 2
        legacy.append(
            Packet(
                VIDEO, timestamp, bytes((frame_type << 4 | 7, 1)) + cts.to_bytes(3, "big", signed=True) + body, keyframe
            )
        )
        if cts or rng.random() < 0.5:  # CodedFrames, with its SI24 offset
            head = bytes((0x80 | frame_type << 4 | 1,)) + b"avc1" + cts.to_bytes(3, "big", signed=True)
        else:  # CodedFramesX: no offset
            head = bytes((0x80 | frame_type << 4 | 3,)) + b"avc1"
        enhanced.append(Packet(VIDEO, timestamp, head + body, keyframe))
    return configs, legacy, enhanced


def mux_parts(muxer: TsMuxer, configs: list[Packet], source: list[Packet], per_part: int = 25) -> list[bytes]:
    for config in configs:
        muxer.configure(config)
    return [
        bytes(muxer.part(source[start : start + per_part], start * 20, start % (4 * per_part) == 0))
        for start in range(0, len(source), per_part)
    ]


def test_random_frames_mux_the_same_whichever_video_header_they_come_with(monkeypatch) -> None:
    """The Python muxer gives legacy AVC and Enhanced RTMP avc1 frames of every shape the same packets."""
    monkeypatch.setattr(mpegts, "_tsmux", None)
    configs, legacy, enhanced = random_frames(7)
    outputs = [mux_parts(TsMuxer(), configs, source) for source in (legacy, enhanced)]
    assert outputs[0] == outputs[1]
    data = b"".join(outputs[0])
    assert len(data) > 1000 * TS_SIZE and len(data) % TS_SIZE == 0
    assert all(ts[0] == 0x47 for ts in packets_of(data))


def test_the_c_muxer_gives_the_python_muxers_bytes(monkeypatch) -> None:
    """relay.formats._tsmux (built by the install; scripts/dev installs a C compiler) lays out parts exactly as
    the Python muxer: the same random frames, with every NAL length size, with and without video, muxed
    into parts both ways, give the same bytes and leave the same continuity counters."""
    assert mpegts._tsmux is not None, "relay.formats._tsmux is not built: run scripts/dev setup (gcc, python3-dev)"
    calls: list[bool] = []
    c_way = TsMuxer._part_in_c

    def counted(self, *args):  # type: ignore[no-untyped-def]
        data = c_way(self, *args)
        calls.append(data is not None)
        return data

    monkeypatch.setattr(TsMuxer, "_part_in_c", counted)
    cases = []
    for seed, length_size in ((11, 4), (12, 2), (13, 1), (14, 3)):
        configs, legacy, enhanced = random_frames(seed, length_size, frames=300)
        cases += [(configs, legacy, True), (configs, enhanced, True)]
    cases.append((configs[1:], [p for p in legacy if p.kind == AUDIO], False))  # audio only: PCR on audio
    for configs, source, has_video in cases:
        muxers = []
        outputs = []
        for way in (mpegts._tsmux, None):
            monkeypatch.setattr(mpegts, "_tsmux", way)
            muxers.append(TsMuxer(has_video=has_video))
            outputs.append(mux_parts(muxers[-1], configs, source, per_part=20))
        assert outputs[0] == outputs[1]
        assert muxers[0]._cc == muxers[1]._cc
        assert len(b"".join(outputs[0])) > 100 * TS_SIZE
    assert calls and all(calls), "every part took the C way"


def test_the_c_muxer_leaves_what_it_cannot_take_to_the_python_muxer() -> None:
    """A payload that is not ``bytes`` is muxed the Python way, in the same muxer, with the same result."""
    configs, legacy, _ = random_frames(21, frames=100)
    viewed = [Packet(p.kind, p.timestamp, memoryview(p.payload), p.keyframe) for p in legacy]  # type: ignore[arg-type]
    assert mux_parts(TsMuxer(), configs, legacy) == mux_parts(TsMuxer(), configs, viewed)


def test_the_c_muxer_takes_garbage_as_the_python_muxer_does(monkeypatch) -> None:
    """Payloads of random bytes behind every FLV header the muxer looks at, huge and negative
    timestamps: the C way neither crashes nor differs from the Python way (output, or the error raised)."""
    import random

    assert mpegts._tsmux is not None, "relay.formats._tsmux is not built: run scripts/dev setup (gcc, python3-dev)"
    rng = random.Random(5)
    configs, _, _ = random_frames(3, frames=10)
    leads = [b"", b"\x17\x01", b"\x27\x01", b"\xaf\x01", b"\x91avc1", b"\x93avc1", b"\x17\x00", b"\xaf\x00"]
    leads.append(b"\x9fhvc1")
    for _ in range(60):
        packets = [
            Packet(
                rng.choice([AUDIO, VIDEO, 18]),
                rng.choice([0, 20 * i, rng.randrange(-(10**6), 10**12)]),
                rng.choice(leads) + rng.randbytes(rng.choice([0, 1, 3, 5, 50, 300, 3000])),
                rng.random() < 0.2,
            )
            for i in range(40)
        ]
        has_video = rng.random() < 0.8
        results = []
        for way in (mpegts._tsmux, None):
            monkeypatch.setattr(mpegts, "_tsmux", way)
            try:
                results.append(mux_parts(TsMuxer(has_video=has_video), configs, packets, per_part=10))
            except (ValueError, OverflowError) as error:
                results.append(repr(error))
        assert results[0] == results[1]


def test_the_c_muxer_holds_the_packets_while_python_code_runs() -> None:
    """Reading a packet's attributes can run Python code: a part is muxed from the packets the list held
    when the call began, even if that code changes the list (frees items, or adds more than the part's
    buffer was sized for)."""
    assert mpegts._tsmux is not None, "relay.formats._tsmux is not built: run scripts/dev setup (gcc, python3-dev)"
    configs, legacy, _ = random_frames(7, frames=40)
    big = Packet(VIDEO, 0, b"\x27\x01\x00\x00\x00" + (60000).to_bytes(4, "big") + b"\x41" * 60000)

    class Meddling:
        """A frame whose payload, when read, floods the list it is in and drops its neighbours."""

        def __init__(self, packet: Packet, packets: list) -> None:
            self.kind, self.timestamp, self.keyframe = packet.kind, packet.timestamp, packet.keyframe
            self._payload, self._packets = packet.payload, packets

        @property
        def payload(self) -> bytes:
            del self._packets[1:]
            self._packets += [big] * 200
            return self._payload

    def muxer() -> TsMuxer:
        m = TsMuxer()
        for packet in configs:
            m.configure(packet)
        return m

    expected = bytes(muxer().part(legacy, 2000, True))
    meddled: list = []
    meddled += [Meddling(p, meddled) for p in legacy]
    assert bytes(muxer().part(meddled, 2000, True)) == expected


def test_aac_frames_too_big_for_an_adts_header_are_left_out_both_ways(monkeypatch) -> None:
    """ADTS says a frame's length, header included, in 13 bits (8191 bytes; FFmpeg's ADTS muxer refuses
    more): a bigger "frame" (no real one is: AAC holds at most 768 bytes per channel) is left out by both
    muxers, the C one as the Python one, and the frames around it keep lengths their headers state."""
    assert mpegts._tsmux is not None, "relay.formats._tsmux is not built: run scripts/dev setup (gcc, python3-dev)"
    config = Packet(AUDIO, 0, b"\xaf\x00\x12\x10", config=True)
    largest = mpegts.MAX_ADTS_FRAME
    cases = [
        [100, largest, largest + 1, 8 * 1024 + 1, 30 * 1024, 200],
        [100, 100 * 1024, 512 * 1024 - 9, 512 * 1024, 200],  # past a PES's 16-bit length too
    ]
    for sizes in cases:
        frames = [Packet(AUDIO, 23 * i, b"\xaf\x01" + bytes([i + 1]) * size) for i, size in enumerate(sizes)]
        outputs = []
        for way in (mpegts._tsmux, None):
            monkeypatch.setattr(mpegts, "_tsmux", way)
            muxer = TsMuxer(has_video=False, audio_delay_ms=10_000)
            muxer.configure(config)
            outputs.append(bytes(muxer.part(frames, 23 * len(frames), True)))
        assert outputs[0] == outputs[1], f"the C muxer writes what the Python muxer writes: {sizes}"
        audio = b"".join(
            (ts[4 + 1 + ts[4] :] if ts[3] & 0x20 else ts[4:]) for ts in packets_of(outputs[0]) if pid(ts) == AUDIO_PID
        )
        es = audio[14:]  # after the one PES header (PTS only)
        lengths = []
        while es:
            assert es[:2] == b"\xff\xf1"
            assert es[2] == 0x50 and es[3] >> 6 == 2, "profile, rate and channels as configured"
            length = (es[3] & 3) << 11 | es[4] << 3 | es[5] >> 5
            lengths.append(length)
            es = es[length:]
        assert lengths == [size + 7 for size in sizes if size <= largest]
