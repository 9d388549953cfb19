"""Live HLS / LL-HLS with real players: ffmpeg publishes over RTMP; ffprobe, ffmpeg and HTTP read HLS."""

from __future__ import annotations

import asyncio
import re
import time
from urllib.parse import urljoin, urlsplit

import aiohttp
import pytest

from relay.formats import vp8
from relay.formats.hls import Segmenter, UnsupportedCodec
from relay.formats.packet import VIDEO, Packet
from tests.conftest import (
    decode_cleanly,
    hub_stream,
    make_room,
    metric,
    needs_ffmpeg,
    probe_streams,
    publish,
    rtmp_url,
    wait_live,
)
from tests.hevc import PacketPublisher

pytestmark = needs_ffmpeg


def hls_url(server, name: str) -> str:
    return f"http://127.0.0.1:{server.http_port}/live/{name}/index.m3u8"


def parse(playlist: str) -> dict:
    """The facts of a media playlist that the tests check."""
    lines = playlist.splitlines()
    tags = {line.split(":", 1)[0]: line.split(":", 1)[1] if ":" in line else "" for line in lines}
    segments, parts = [], []
    duration = None
    for line in lines:
        if line.startswith("#EXTINF:"):
            duration = float(line[8:].rstrip(","))
        elif line.startswith("#EXT-X-PART:"):
            parts.append(line)
        elif line and not line.startswith("#"):
            segments.append((line, duration))
    return {
        "target": int(tags["#EXT-X-TARGETDURATION"]),
        "sequence": int(tags["#EXT-X-MEDIA-SEQUENCE"]),
        "segments": segments,
        "parts": parts,
        "tags": tags,
        "discontinuities": playlist.count("#EXT-X-DISCONTINUITY\n"),
        "text": playlist,
    }


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes, dict]:
    async with session.get(url) as response:
        return response.status, await response.read(), dict(response.headers)


async def wait_segments(session, url: str, count: int, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, body, _ = await fetch(session, url)
        if status == 200:
            info = parse(body.decode())
            if len(info["segments"]) >= count:
                return info
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} segments after {timeout} s")
        await asyncio.sleep(0.3)


async def test_live_hls_plays_in_ffmpeg_with_rfc_8216_playlists(server):
    pub = await publish(rtmp_url(server, "hls"), size="320x240", rate=25, gop=25)
    try:
        await wait_live(server, "hls")
        stream = hub_stream(server, "live", "hls")
        assert stream.sinks == [], "no packaging until someone asks for HLS"
        async with aiohttp.ClientSession() as session:
            status, _, headers = await fetch(session, hls_url(server, "hls"))
            assert status == 200
            assert headers["Content-Type"].startswith("application/vnd.apple.mpegurl")
            assert headers["Access-Control-Allow-Origin"] == "*"
            assert len(stream.sinks) == 1
            info = await wait_segments(session, hls_url(server, "hls"), 4)
            text = info["text"]
            assert "#EXT-X-PROGRAM-DATE-TIME:" in text
            assert "#EXT-X-PART-INF:PART-TARGET=0.500" in text
            assert "CAN-BLOCK-RELOAD=YES" in text and "PART-HOLD-BACK=1.500" in text
            assert "#EXT-X-PRELOAD-HINT:TYPE=PART" in text
            for _, duration in info["segments"]:
                assert round(duration) <= info["target"], "RFC 8216 §4.3.3.1"
                assert 1.0 <= duration <= 3.0, f"segment of {duration} s: not within one GOP of the 2 s target"
            uri = info["segments"][-1][0]
            status, segment, headers = await fetch(session, hls_url(server, "hls").replace("index.m3u8", uri))
            assert status == 200 and headers["Content-Type"] == "video/mp2t"
            assert "immutable" in headers["Cache-Control"]
            assert segment[0] == 0x47 and len(segment) % 188 == 0
        streams = await probe_streams(hls_url(server, "hls"))
        assert sorted(s["codec_name"] for s in streams) == ["aac", "h264"]
        await decode_cleanly(hls_url(server, "hls"), seconds=10)
    finally:
        await pub.stop()


async def test_ffprobe_as_the_first_client_of_a_stream_finds_a_whole_segment(server):
    """A client that does not speak LL-HLS (ffprobe, an older `video` component) reads only whole segments:
    the playlist that starts a stream's packaging is held until it lists one (a 3 s GOP here)."""
    pub = await publish(rtmp_url(server, "first"), size="320x240", rate=25, gop=75)
    try:
        await wait_live(server, "first")
        assert hub_stream(server, "live", "first").sinks == [], "nobody asked for HLS yet"
        streams = await probe_streams(hls_url(server, "first"))
        assert sorted(s["codec_name"] for s in streams) == ["aac", "h264"]
        async with aiohttp.ClientSession() as session:
            status, body, _ = await fetch(session, hls_url(server, "first"))
            assert status == 200 and parse(body.decode())["segments"]
    finally:
        await pub.stop()


async def test_hls_players_count_in_the_audience_until_they_go_quiet(make_server):
    """An HLS viewer is a client (address and User-Agent) that asked lately: counted per protocol and in
    the total, in /api/v1/streams and /metrics, and no longer once it stops asking."""
    server = await make_server(audience_seconds=2)
    pub = await publish(rtmp_url(server, "aud"))
    try:
        await wait_live(server, "aud")
        streams_url = f"http://127.0.0.1:{server.http_port}/api/v1/streams"
        async with aiohttp.ClientSession() as session:
            for agent in ("Safari", "hls.js", "hls.js"):  # two players: the third request is the second's again
                async with session.get(hls_url(server, "aud"), headers={"User-Agent": agent}) as response:
                    assert response.status == 200
            async with session.get(streams_url) as response:
                (stream,) = (await response.json())["streams"]
            assert stream["viewers_by_protocol"] == {"hls": 2} and stream["viewers"] == 2
            async with session.get(f"http://127.0.0.1:{server.http_port}/metrics") as response:
                assert metric(await response.text(), "minilive_viewers", protocol="hls") == 2
            deadline = time.monotonic() + 10
            while server.hub.audience("live", "aud"):
                assert time.monotonic() < deadline, "players that went quiet are still counted"
                await asyncio.sleep(0.2)
    finally:
        await pub.stop()


async def test_media_sequence_advances_and_parts_make_up_segments(server):
    pub = await publish(rtmp_url(server, "parts"), gop=25)
    try:
        await wait_live(server, "parts")
        async with aiohttp.ClientSession() as session:
            first = await wait_segments(session, hls_url(server, "parts"), 2)
            deadline = time.monotonic() + 30
            while (later := await wait_segments(session, hls_url(server, "parts"), 6))["sequence"] == 0:
                assert time.monotonic() < deadline, "the playlist never slid"
                await asyncio.sleep(0.5)
            assert later["sequence"] > first["sequence"], "the playlist slides"
            assert len(later["segments"]) == 6, "six segments in the window"
            # The oldest segment with all its parts listed: parts and segment agree byte for byte.
            part_uris = [re.search(r'URI="([^"]+)"', p)[1] for p in later["parts"]]
            base = hls_url(server, "parts").replace("index.m3u8", "")
            complete = [uri for uri, _ in later["segments"]]
            for uri in complete:
                stem = uri[: -len(".ts")]
                mine = [p for p in part_uris if p.startswith(stem + ".")]
                if len(mine) >= 2:
                    break
            else:
                pytest.fail("no complete segment with its parts listed")
            _, whole, _ = await fetch(session, base + uri)
            pieces = [(await fetch(session, base + p))[1] for p in mine]
            assert b"".join(pieces) == whole
            assert len(mine) in (3, 4, 5), f"about 0.5 s parts in a 2 s segment, got {len(mine)}"
            for line in later["parts"]:
                if re.search(r'URI="[^"]+\.0\.ts"', line):
                    assert line.endswith("INDEPENDENT=YES"), f"a segment's first part starts on a keyframe: {line}"
    finally:
        await pub.stop()


async def test_blocking_playlist_reload(server):
    pub = await publish(rtmp_url(server, "block"), gop=25)
    try:
        await wait_live(server, "block")
        async with aiohttp.ClientSession() as session:
            info = await wait_segments(session, hls_url(server, "block"), 1)
            hint = re.search(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="[0-9a-f]+-(\d+)\.(\d+)\.ts"', info["text"])
            msn, part = int(hint[1]), int(hint[2])
            started = time.monotonic()
            url = f"{hls_url(server, 'block')}?_HLS_msn={msn}&_HLS_part={part}"
            status, body, _ = await fetch(session, url)
            waited = time.monotonic() - started
            assert status == 200
            assert f"-{msn}.{part}.ts" in body.decode(), "the answer lists the part that was asked for"
            assert waited < 2.0, f"answered {waited:.2f} s later: as soon as the part exists"
            # The preload-hinted part itself is held until it exists, then served.
            hint = re.search(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="([^"]+)"', body.decode())[1]
            status, data, _ = await fetch(session, hls_url(server, "block").replace("index.m3u8", hint))
            assert status == 200 and data[0] == 0x47
            status, _, _ = await fetch(session, f"{hls_url(server, 'block')}?_HLS_msn={msn + 3}&_HLS_part=0")
            assert status == 400, "more than two segments ahead is refused"
            status, _, _ = await fetch(session, f"{hls_url(server, 'block')}?_HLS_part=1")
            assert status == 400
    finally:
        await pub.stop()


async def test_publisher_reconnect_marks_a_discontinuity(make_server):
    server = await make_server(grace_seconds=15)
    pub = await publish(rtmp_url(server, "re"), gop=25)
    async with aiohttp.ClientSession() as session:
        try:
            await wait_live(server, "re")
            await wait_segments(session, hls_url(server, "re"), 2)
            await pub.stop()
            await asyncio.sleep(1)
            pub = await publish(rtmp_url(server, "re"), gop=25)
            deadline = time.monotonic() + 20
            while True:
                info = await wait_segments(session, hls_url(server, "re"), 1)
                if info["discontinuities"]:
                    break
                assert time.monotonic() < deadline, "no EXT-X-DISCONTINUITY after the publisher came back"
                await asyncio.sleep(0.3)
        finally:
            await pub.stop()


async def test_unknown_streams_and_stale_segments_are_404(server):
    async with aiohttp.ClientSession() as session:
        status, _, _ = await fetch(session, hls_url(server, "nobody"))
        assert status == 404
        pub = await publish(rtmp_url(server, "old"), gop=25)
        try:
            await wait_live(server, "old")
            await wait_segments(session, hls_url(server, "old"), 1)
            status, _, _ = await fetch(session, hls_url(server, "old").replace("index.m3u8", "deadbeef-0.ts"))
            assert status == 404
        finally:
            await pub.stop()


async def test_audio_only_hls(server):
    pub = await publish(rtmp_url(server, "radio"), video=False)
    try:
        for _ in range(100):
            stream = hub_stream(server, "live", "radio")
            if stream is not None and stream.audio_frames > 10:
                break
            await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as session:
            await wait_segments(session, hls_url(server, "radio"), 2)
        streams = await probe_streams(hls_url(server, "radio"))
        assert [s["codec_name"] for s in streams] == ["aac"]
    finally:
        await pub.stop()


async def test_video_hls_cannot_carry_is_refused_with_a_reason(server):
    """VP8 (a WHIP publisher's) has no muxer here: 503 saying so, never segments without the video;
    the stream itself plays on."""
    publisher = await PacketPublisher.start(rtmp_url(server, "vp8"))
    (_, start), (_, keyframe) = vp8.Vp8ToFlv().push(b"\x10\x02\x00\x9d\x01\x2a\x40\x01\xf0\x00" + bytes(100))
    await publisher.send(
        [Packet(VIDEO, 0, start, config=True)] + [Packet(VIDEO, i * 40, keyframe, True) for i in range(5)]
    )
    await wait_live(server, "vp8")
    async with aiohttp.ClientSession() as session:
        answers = [await fetch(session, hls_url(server, "vp8")) for _ in range(20)]
    assert {status for status, _, _ in answers} == {503}
    assert all(b"VP8 video cannot be packaged as HLS (H.264 and HEVC can)" in body for _, body, _ in answers)
    stream = hub_stream(server, "live", "vp8")
    assert stream.publisher is not None
    assert stream.sink_failures == 1, "a player polling is answered from memory, not with a packager a request"
    await publisher.stop()


def test_the_segmenter_refuses_video_it_cannot_mux() -> None:
    for config in (vp8.sequence_start(), b"\x90av01\x81\x00\x0c\x00", b"\x90vp09\x01\x00", b"\x90zzzz"):
        with pytest.raises(UnsupportedCodec, match="cannot be packaged as HLS"):
            Segmenter(2, 0.5).feed(Packet(VIDEO, 0, config, config=True))


def test_a_part_past_the_end_of_a_finished_segment_waits_for_the_next_segment() -> None:
    from relay.formats.hls import HlsSettings, LivePlaylist, Part, Segment

    playlist = LivePlaylist(HlsSettings(), "abcd0123")
    done = Segment(5, 0, 0.0, False, parts=[Part(0, b"x", 0.5, True), Part(1, b"y", 0.5, False)], complete=True)
    playlist.segments = [done]
    assert playlist.has(5, 1) and playlist.has(5, None)
    assert not playlist.has(5, 2), "part 2 of a two-part segment is part 0 of segment 6, not there yet"
    playlist.segments.append(Segment(6, 1000, 0.0, False, parts=[Part(0, b"z", 0.5, True)]))
    assert playlist.has(5, 2)


def test_a_segment_is_its_parts_bytes_never_a_copy() -> None:
    from relay.formats.hls import Part, Segment

    parts = [Part(i, bytes([i]) * 188 * (i + 1), 0.5, i == 0) for i in range(3)]
    segment = Segment(0, 0, 0.0, False, parts=list(parts))
    segment.complete_at(1500)
    assert segment.complete and segment.duration == 1.5
    assert all(a is b.data for a, b in zip(segment.pieces, parts, strict=True)), "served from the parts themselves"
    assert segment.data == b"".join(p.data for p in parts)
    single = Segment(1, 1500, 1.5, False, parts=[parts[0]])
    assert single.data is parts[0].data, "a one-part segment (a recording's) is its part, not a copy"


async def test_a_signed_play_url_plays_its_segments_and_parts_too(make_server):
    """Players resolve segment URIs against the playlist URL without its query: the playlist carries
    the signature on to every URI it lists, so a signed HLS URL plays and an unsigned one does not."""
    from api.models import LiveStatus
    from tests.test_rooms_live import wait_status

    server = await make_server(allow_anonymous_publish=False)
    app, room = await make_room(server)
    await server.apps.update_app(app, {"play_key": "pl4y-k3y"})
    app = await server.store.get_app(app.appid)
    pub = await publish(server.urls.push_url(app, room), gop=25)
    try:
        await wait_status(server, room, LiveStatus.LIVE)
        signed = server.urls.play_urls(app, room)["hls"]
        query = urlsplit(signed).query
        assert "txSecret=" in query
        async with aiohttp.ClientSession() as session:
            listed = await wait_segments(session, signed, 2)
            uris = [uri for uri, _ in listed["segments"]] + [re.search(r'URI="([^"]+)"', p)[1] for p in listed["parts"]]
            assert uris and all(uri.endswith("?" + query) for uri in uris), uris
            for uri in uris[:2] + uris[-2:]:
                status, body, _ = await fetch(session, urljoin(signed, uri))
                assert status == 200 and body[:1] == b"\x47", (uri, status)
            unsigned = signed.split("?")[0]
            assert (await fetch(session, unsigned))[0] == 403
            assert (await fetch(session, urljoin(unsigned, uris[0].split("?")[0])))[0] == 403
        streams = await probe_streams(signed)  # ffmpeg's HLS demuxer, following the URIs as listed
        assert sorted(s["codec_name"] for s in streams) == ["aac", "h264"]
    finally:
        await pub.stop()


async def test_a_blocking_wait_ends_when_its_segment_exists_or_the_stream_ends() -> None:
    from relay.formats.hls import HlsSettings, LivePlaylist, Part, Segment

    playlist = LivePlaylist(HlsSettings(), "0123abcd")
    first = Segment(0, 0, 0.0, False, parts=[Part(0, b"a", 0.5, True)])
    playlist._on_open(first)
    for_segment_1 = asyncio.create_task(playlist.wait_for(1, None, 5))
    for_part_2 = asyncio.create_task(playlist.wait_for(0, 2, 5))
    for_segment_9 = asyncio.create_task(playlist.wait_for(9, None, 5))
    await asyncio.sleep(0)
    first.parts.append(Part(1, b"b", 0.5, False))
    playlist._on_part(first, first.parts[-1])
    await asyncio.sleep(0)
    assert not any(t.done() for t in (for_segment_1, for_part_2, for_segment_9)), "nothing asked for exists yet"
    first.parts.append(Part(2, b"c", 0.5, False))
    playlist._on_part(first, first.parts[-1])
    assert await for_part_2 is True
    first.complete_at(1500)
    playlist._on_segment(first)
    second = Segment(1, 1500, 1.5, False, parts=[Part(0, b"d", 0.5, True)])
    playlist._on_open(second)
    await asyncio.sleep(0)
    assert not for_segment_1.done(), "segment 1 is open, not complete"
    second.complete_at(3000)
    playlist._on_segment(second)
    assert await for_segment_1 is True
    playlist.finish()
    assert await for_segment_9 is False, "the stream ended first"
    assert await playlist.wait_for(1, None, 5) is True


def test_discontinuity_sequence_counts_what_left_the_playlist_and_never_goes_down() -> None:
    """RFC 8216 6.2.2: EXT-X-DISCONTINUITY-SEQUENCE is the number of discontinuities before the first
    segment listed, however many the server still keeps: it must not drop when one leaves its window."""
    from relay.formats.hls import HlsSettings, LivePlaylist
    from relay.formats.packet import AUDIO, Packet

    playlist = LivePlaylist(HlsSettings(segment_seconds=1, part_seconds=0, window=3, keep_after_window=1), "abcd0123")
    playlist.feed(Packet(AUDIO, 0, b"\xaf\x00\x12\x10", config=True))
    marked: list[int] = []  # media sequence numbers that start with a discontinuity
    last_sequence = 0
    for i in range(400):  # 40 s of audio, a discontinuity every 3.5 s
        if i and i % 35 == 0:
            playlist.new_publisher()
            marked.append(playlist.segmenter.next_msn)
        playlist.feed(Packet(AUDIO, i * 100, b"\xaf\x01" + bytes(20)))
        if not any(segment.complete for segment in playlist.segments):
            continue
        facts = parse(playlist.playlist())
        sequence = int(facts["tags"].get("#EXT-X-DISCONTINUITY-SEQUENCE", 0))
        assert sequence >= last_sequence, f"went down from {last_sequence} to {sequence} at {i / 10} s"
        assert sequence == len([msn for msn in marked if msn < facts["sequence"]])
        last_sequence = sequence
    assert last_sequence >= 8, "discontinuities left the window and were counted"
