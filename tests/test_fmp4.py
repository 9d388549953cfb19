"""fMP4 (CMAF) HLS: the muxer's boxes read back, playlists with EXT-X-MAP, and real players reading it.

H.264 + AAC comes from Debian's ffmpeg over RTMP; HEVC (``hevc_media``, :mod:`tests.hevc`) is published
as legacy codec-id-12 FLV tags by our own RTMP client.
"""

from __future__ import annotations

import asyncio
import re
import struct
from dataclasses import dataclass

import aiohttp
import pytest

from api.config import ConfigError, load
from ingest.rtmp.client import connect
from relay.formats import hevc
from relay.formats.fmp4 import NON_SYNC_SAMPLE, SYNC_SAMPLE, Fmp4Muxer, boxes, decode_times, timescales
from relay.formats.hls import HlsSettings, LivePlaylist, Segment, Segmenter
from relay.formats.packet import AUDIO, VIDEO, Packet
from tests.conftest import (
    decode_cleanly,
    hub_stream,
    needs_ffmpeg,
    probe_frames,
    probe_streams,
    publish,
    rtmp_url,
    wait_live,
)
from tests.test_hls import fetch, hls_url, wait_segments
from tests.test_mpegts import make_flv

# ------------------------------------------------------------ reading boxes back

CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"mvex", b"moof", b"traf", b"dinf"}


def walk(data: bytes) -> list[tuple[bytes, bytes]]:
    """The boxes of ``data`` as (type, body); their sizes must tile it exactly."""
    boxes, pos = [], 0
    while pos < len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        assert size >= 8 and pos + size <= len(data), f"box size {size} at {pos} overruns {len(data)}"
        boxes.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + size]))
        pos += size
    assert pos == len(data)
    return boxes


def find(data: bytes, path: str) -> list[bytes]:
    """Bodies of every box at ``path`` ("moov/trak/tkhd"), descending into containers."""
    first, _, rest = path.partition("/")
    found = []
    for kind, body in walk(data):
        if kind == first.encode():
            if rest:
                assert kind in CONTAINERS
                found += find(body, rest)
            else:
                found.append(body)
    return found


@dataclass
class Run:
    track: int
    base: int
    offset: int
    samples: list[tuple[int, int, int, int]]  # duration, size, flags, composition offset


def fragment_runs(fragment: bytes) -> tuple[int, list[Run]]:
    """(mfhd sequence number, the runs of one moof + mdat), checking data offsets against the mdat."""
    (kind, moof), (mdat_kind, _) = walk(fragment)
    assert (kind, mdat_kind) == (b"moof", b"mdat")
    (mfhd,) = find(fragment, "moof/mfhd")
    runs = []
    for traf in find(fragment, "moof/traf"):
        (tfhd,) = find(traf, "tfhd")
        (tfdt,) = find(traf, "tfdt")
        (trun,) = find(traf, "trun")
        assert tfhd[1:4] == b"\x02\x00\x00", "default-base-is-moof"
        assert tfdt[0] == 1 and trun[0] == 1 and trun[1:4] == b"\x00\x0f\x01"
        count, offset = struct.unpack(">Ii", trun[4:12])
        samples = [struct.unpack(">IIIi", trun[12 + 16 * i : 28 + 16 * i]) for i in range(count)]
        assert len(trun) == 12 + 16 * count
        runs.append(Run(int.from_bytes(tfhd[4:8], "big"), int.from_bytes(tfdt[4:12], "big"), offset, samples))
    position = len(moof) + 16
    for r in runs:
        assert r.offset == position, "each run's data follows the previous one's in the mdat"
        position += sum(s[1] for s in r.samples)
    assert position == len(fragment), "the mdat holds exactly the samples"
    return int.from_bytes(mfhd[4:8], "big"), runs


# ------------------------------------------------------------ synthetic packets

# x264's for 320x240, baseline
AVC_CONFIG = bytes.fromhex("17000000000142c00dffe100166742c00dda0507ec0440000003004000000c83c50aa801000468ce0fc8")
AVC_RECORD = AVC_CONFIG[5:]
AAC_CONFIG = b"\xaf\x00\x12\x10"  # AAC-LC, 44.1 kHz, stereo
HEVC_RECORD = b"\x01" + bytes(21) + b"\x0f\x00"  # no parameter set arrays: enough for the boxes


def h264_frame(keyframe: bool, cts: int, body: bytes) -> bytes:
    nal = (b"\x65" if keyframe else b"\x41") + body
    header = bytes((0x17 if keyframe else 0x27, 1)) + cts.to_bytes(3, "big", signed=True)
    return header + len(nal).to_bytes(4, "big") + nal


def synthetic_stream(seconds: float, video_config: bytes = AVC_CONFIG, start: int = 0) -> list[Packet]:
    """25 fps video (a keyframe a second, alternating composition offsets) and 44.1 kHz AAC, interleaved."""
    packets = [Packet(VIDEO, start, video_config, config=True), Packet(AUDIO, start, AAC_CONFIG, config=True)]
    media = []
    for i in range(int(seconds * 25)):
        key = i % 25 == 0
        media.append(Packet(VIDEO, start + i * 40, h264_frame(key, 0 if key else 40 * (i % 2), bytes(i % 50)), key))
    for k in range(int(seconds * 44100 / 1024)):
        media.append(Packet(AUDIO, start + k * 1024 * 1000 // 44100, b"\xaf\x01" + bytes(10 + k % 7)))
    media.sort(key=lambda p: (p.timestamp, p.kind != VIDEO))
    return packets + media


def segment(seconds: float, packets: list[Packet], **kwargs) -> list[Segment]:
    segments: list[Segment] = []
    segmenter = Segmenter(seconds, 0.25, on_segment=segments.append, fmp4=True, **kwargs)
    for packet in packets:
        segmenter.feed(packet)
    segmenter.finish()
    return segments


# ------------------------------------------------------------ unit


def test_init_segment_carries_avc_and_aac_configs() -> None:
    muxer = Fmp4Muxer()
    muxer.configure(Packet(VIDEO, 0, AVC_CONFIG, config=True))
    muxer.configure(Packet(AUDIO, 0, AAC_CONFIG, config=True))
    init = muxer.init_segment()
    (ftyp,) = find(init, "ftyp")
    assert ftyp[:4] == b"iso6" and {ftyp[i : i + 4] for i in range(8, len(ftyp), 4)} == {b"iso6", b"cmfc"}
    assert len(find(init, "moov/mvhd")) == 1
    tkhds = find(init, "moov/trak/tkhd")
    assert [int.from_bytes(t[12:16], "big") for t in tkhds] == [1, 2]
    assert struct.unpack(">II", tkhds[0][-8:]) == (320 << 16, 240 << 16), "the picture size from the SPS"
    assert [int.from_bytes(m[12:16], "big") for m in find(init, "moov/trak/mdia/mdhd")] == [90000, 44100]
    assert [h[8:12] for h in find(init, "moov/trak/mdia/hdlr")] == [b"vide", b"soun"]
    video_stsd, audio_stsd = find(init, "moov/trak/mdia/minf/stbl/stsd")
    ((kind, avc1),) = walk(video_stsd[8:])
    assert kind == b"avc1" and walk(avc1[78:]) == [(b"avcC", AVC_RECORD)]
    ((kind, mp4a),) = walk(audio_stsd[8:])
    assert kind == b"mp4a" and struct.unpack(">HH", mp4a[16:20]) == (2, 16)
    ((kind, esds),) = walk(mp4a[28:])
    assert kind == b"esds" and esds.endswith(b"\x05\x02\x12\x10\x06\x01\x02"), "the AudioSpecificConfig"
    assert [int.from_bytes(t[4:8], "big") for t in find(init, "moov/mvex/trex")] == [1, 2]


@pytest.mark.parametrize(
    "config",
    [b"\x1c\x00\x00\x00\x00" + HEVC_RECORD, b"\x90hvc1" + HEVC_RECORD],
    ids=["legacy-codec-12", "enhanced-rtmp-hvc1"],
)
def test_hevc_sample_entry_from_either_sequence_header(config: bytes) -> None:
    muxer = Fmp4Muxer()
    muxer.configure(Packet(VIDEO, 0, config, config=True))
    (stsd,) = find(muxer.init_segment(), "moov/trak/mdia/minf/stbl/stsd")
    ((kind, hvc1),) = walk(stsd[8:])
    assert kind == b"hvc1" and walk(hvc1[78:]) == [(b"hvcC", HEVC_RECORD)]
    assert hevc.dimensions(config) is None, "no SPS: no picture size, and no exception"


def test_fragments_read_back_with_sequence_numbers_decode_times_and_sync_flags() -> None:
    segments = segment(1.0, synthetic_stream(4.2))
    assert len(segments) == 5
    sequence = 0
    next_base = {}
    video_samples = audio_samples = 0
    for seg in segments:
        assert seg.data == b"".join(p.data for p in seg.parts)
        assert len(seg.parts) == 4 or seg is segments[-1]
        for part in seg.parts:
            number, runs = fragment_runs(part.data)
            assert number == sequence + 1, "mfhd sequence numbers go up by one"
            sequence = number
            for r in runs:
                if r.track in next_base:
                    assert r.base == next_base[r.track], "each fragment starts where the last one ended"
                next_base[r.track] = r.base + sum(s[0] for s in r.samples)
            video = next(r for r in runs if r.track == 1)
            audio = next(r for r in runs if r.track == 2)
            assert all(s[0] == 3600 for s in video.samples), "40 ms frames on the 90 kHz clock"
            assert all(s[0] == 1024 and s[2] == SYNC_SAMPLE for s in audio.samples)
            flags = [s[2] for s in video.samples]
            assert flags[0] == (SYNC_SAMPLE if part.independent else NON_SYNC_SAMPLE)
            assert set(flags[1:]) == {NON_SYNC_SAMPLE}
            assert {s[3] for s in video.samples} <= {0, 3600}, "composition offsets in 90 kHz units"
            video_samples += len(video.samples)
            audio_samples += len(audio.samples)
        assert seg.parts[0].independent and not any(p.independent for p in seg.parts[1:])
    assert video_samples == 105 and audio_samples == int(4.2 * 44100 / 1024)


def test_timescales_and_decode_times_read_back_from_init_and_fragments() -> None:
    segments = segment(1.0, synthetic_stream(4.2))
    init = segments[0].init
    assert init is not None and timescales(init.data) == {1: 90000, 2: 44100}
    for seg in segments:
        for part in seg.parts:
            _, runs = fragment_runs(part.data)
            (_, moof), _ = walk(part.data)
            expected = {r.track: (r.base, r.base + sum(s[0] for s in r.samples)) for r in runs}
            assert decode_times(moof) == expected and set(expected) == {1, 2}
    whole = segments[0].parts[0].data
    assert [kind for kind, _ in boxes(whole)] == [b"moof", b"mdat"]
    assert [kind for kind, _ in boxes(whole[:-1])] == [b"moof"], "a box cut short is not read"


def live_playlist(**settings) -> LivePlaylist:
    return LivePlaylist(HlsSettings(**settings), "0123abcd")


def test_playlist_maps_init_segments_and_a_new_codec_config_gets_a_new_one() -> None:
    playlist = live_playlist(format="fmp4", segment_seconds=1.0, part_seconds=0)
    for packet in synthetic_stream(3.0):
        playlist.feed(packet)
    other_config = AVC_CONFIG[:-1] + b"\xc9"  # another PPS
    for packet in synthetic_stream(3.0, other_config, start=3000):
        playlist.feed(packet)
    playlist.finish()
    text = playlist.playlist()
    assert "#EXT-X-VERSION:7" in text
    maps = re.findall(r'#EXT-X-MAP:URI="([^"]+)"', text)
    assert maps == ["0123abcd-init0.mp4", "0123abcd-init1.mp4"]
    assert text.index('#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI="0123abcd-init1.mp4"') > text.index("init0")
    assert re.findall(r"^0123abcd-\d+\.m4s$", text, re.M) and ".ts" not in text
    first, second = playlist.find_init(0), playlist.find_init(1)
    assert first is not None and second is not None and first.data != second.data
    assert walk(second.data)[0][0] == b"ftyp"


def test_hevc_gets_fmp4_even_when_ts_is_the_setting() -> None:
    playlist = live_playlist(segment_seconds=1.0)
    for p in synthetic_stream(2.5, b"\x1c\x00\x00\x00\x00" + HEVC_RECORD):
        if p.kind == VIDEO and not p.config:  # the H.264 frames as codec id 12
            p = Packet(VIDEO, p.timestamp, bytes((p.payload[0] & 0xF0 | 12,)) + p.payload[1:], p.keyframe)
        playlist.feed(p)
    text = playlist.playlist()
    assert "#EXT-X-VERSION:9" in text and '#EXT-X-MAP:URI="0123abcd-init0.mp4"' in text
    assert "\n0123abcd-1.m4s\n" in text and 'URI="0123abcd-1.1.m4s"' in text and ".ts" not in text
    assert all(seg.init is not None for seg in playlist.segments)


def test_format_setting_is_checked(tmp_path) -> None:
    path = tmp_path / "minilive.toml"
    path.write_text('[hls]\nformat = "fmp4"\n')
    assert load(path, {}).hls.format == "fmp4"
    path.write_text('[hls]\nformat = "mp4"\n')
    with pytest.raises(ConfigError, match="ts or fmp4"):
        load(path, {})


@needs_ffmpeg
async def test_ffmpeg_decodes_init_and_fragments_made_from_an_flv(tmp_path) -> None:
    packets = await make_flv(tmp_path / "in.flv")
    segments = segment(1.0, packets)
    init = segments[0].init
    assert init is not None
    out = tmp_path / "out.mp4"
    out.write_bytes(init.data + b"".join(s.data for s in segments))
    await decode_cleanly(str(out))
    video, audio = await probe_frames(str(out))
    assert video["codec_name"] == "h264" and int(video["nb_read_frames"]) == 75, "all 3 s of frames"
    assert video["has_b_frames"] > 0, "B-frames (composition time offsets) are kept"
    assert audio["codec_name"] == "aac" and audio["sample_rate"] == "44100"


# ------------------------------------------------------------ live, with real players


@needs_ffmpeg
async def test_live_fmp4_hls_plays_in_ffmpeg(make_server) -> None:
    server = await make_server(format="fmp4")
    pub = await publish(rtmp_url(server, "cmaf"), gop=25)
    try:
        await wait_live(server, "cmaf")
        url = hls_url(server, "cmaf")
        base = url.replace("index.m3u8", "")
        async with aiohttp.ClientSession() as session:
            info = await wait_segments(session, url, 4)
            text = info["text"]
            assert "#EXT-X-VERSION:9" in text
            (init_uri,) = re.findall(r'#EXT-X-MAP:URI="([^"]+)"', text)
            status, init, headers = await fetch(session, base + init_uri)
            assert status == 200 and headers["Content-Type"] == "video/mp4" and init[4:8] == b"ftyp"
            uri = info["segments"][-2][0]  # one with its parts still listed
            assert uri.endswith(".m4s")
            status, whole, headers = await fetch(session, base + uri)
            assert status == 200 and headers["Content-Type"] == "video/iso.segment"
            assert "immutable" in headers["Cache-Control"]
            assert (await fetch(session, base + uri.replace(".m4s", ".ts")))[0] == 404
            stem = uri[: -len(".m4s")]
            parts = [re.search(r'URI="([^"]+)"', p)[1] for p in info["parts"]]
            mine = [p for p in parts if p.startswith(stem + ".")]
            assert len(mine) in (3, 4, 5), f"about 0.5 s parts in a 2 s segment, got {len(mine)}"
            pieces = [(await fetch(session, base + p))[1] for p in mine]
            assert b"".join(pieces) == whole
            assert all(walk(p)[0][0] == b"moof" for p in pieces), "each part is one fragment"
        streams = await probe_streams(url)
        assert sorted(s["codec_name"] for s in streams) == ["aac", "h264"]
        await decode_cleanly(url, seconds=6, timeout=30)
    finally:
        await pub.stop()


# ------------------------------------------------------------ HEVC from libx265


def test_hevc_picture_size_and_parameter_sets_from_x265s_record(hevc_media) -> None:
    packets, _ = hevc_media
    assert hevc.dimensions(packets[0].payload) == (320, 240)
    record = packets[0].payload[5:]
    sets = hevc.parameter_sets(record)
    assert [(nal[0] >> 1) & 0x3F for nal in sets] == [32, 33, 34], "VPS, SPS, PPS"
    assert all(nal in record for nal in sets) and hevc.length_size(record) == 4
    assert hevc.parameter_sets(record[:-1]) == sets[:2], "a record cut short gives its whole NAL units only"


@needs_ffmpeg
async def test_hevc_published_as_codec_id_12_plays_as_fmp4_hls(server, hevc_media) -> None:
    packets, folder = hevc_media
    publisher = await connect(f"rtmp://127.0.0.1:{server.rtmp_port}/live")
    await publisher.publish("hevc")
    url = hls_url(server, "hevc")
    gop = next(i for i, p in enumerate(packets) if p.kind == VIDEO and p.timestamp >= 1000)
    try:
        for packet in packets[:gop]:
            publisher.send_media(packet.kind, packet.timestamp, packet.payload)
        await wait_live(server, "hevc")
        stream = hub_stream(server, "live", "hevc")
        assert (stream.tracks.video_codec, stream.tracks.width, stream.tracks.height) == ("hevc", 320, 240), (
            "size from the HEVC SPS"
        )
        async with aiohttp.ClientSession() as session:
            # Packaging starts from the GOP cache; the first playlist waits for its first whole segment.
            first = asyncio.create_task(fetch(session, url))
            for packet in packets[gop:]:
                publisher.send_media(packet.kind, packet.timestamp, packet.payload)
                await asyncio.sleep(0)
            status, text, _ = await first
            assert status == 200 and b"#EXTINF:" in text, "the first playlist lists a complete segment"
            info = await wait_segments(session, url, 2)
            assert '#EXT-X-MAP:URI="' in info["text"] and info["segments"][0][0].endswith(".m4s")
            init_uri = re.search(r'#EXT-X-MAP:URI="([^"]+)"', info["text"])[1]
            base = url.replace("index.m3u8", "")
            body = (await fetch(session, base + init_uri))[1]
            for uri, _ in info["segments"]:
                body += (await fetch(session, base + uri))[1]
        streams = await probe_streams(url)
        video = next(s for s in streams if s["codec_type"] == "video")
        assert (video["codec_name"], video["width"], video["height"]) == ("hevc", 320, 240)
        assert sorted(s["codec_name"] for s in streams) == ["aac", "hevc"]
        out = folder / "out.mp4"
        out.write_bytes(body)
        await decode_cleanly(str(out))
        (video,) = [s for s in await probe_frames(str(out)) if s["codec_type"] == "video"]
        frames = (video["codec_tag_string"], int(video["nb_read_frames"]))
        assert frames == ("hvc1", 50 * len(info["segments"])), "every frame of the 2 s segments"
    finally:
        publisher.close()
