"""A stream and its renditions over HLS: the rendition's playlist follows the source's (same segments,
parts, dates), rendition reports, and the master playlist that lists them all."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from pathlib import Path

import aiohttp
import pytest

from relay.formats.hls import (
    HlsSettings,
    LivePlaylist,
    RenditionReport,
    Segment,
    Variant,
    codecs_of,
    master_playlist,
)
from relay.formats.packet import AUDIO, VIDEO, Packet
from tests.conftest import FFPROBE, needs_ffmpeg, publish, rtmp_url, run, wait_live
from tests.test_hls import fetch, parse

SPS, PPS = b"\x67\x42\x00\x1f\xaa\xbb", b"\x68\xce\x3c\x80"
AVC_CONFIG = Packet(
    VIDEO,
    0,
    b"\x17\x00\x00\x00\x00"
    + bytes((1, 0x42, 0, 0x1F, 0xFF, 0xE1))
    + len(SPS).to_bytes(2, "big")
    + SPS
    + b"\x01"
    + len(PPS).to_bytes(2, "big")
    + PPS,
    config=True,
)
AAC_CONFIG = Packet(AUDIO, 0, b"\xaf\x00\x12\x10", config=True)
FPS = 30


def picture(timestamp: int, keyframe: bool, composition: int = 0, size: int = 900) -> Packet:
    """An FLV H.264 frame: one NAL unit (IDR or not), its composition offset in the header."""
    nal = bytes((0x65 if keyframe else 0x41,)) + bytes(size)
    head = bytes((0x17 if keyframe else 0x27, 1)) + composition.to_bytes(3, "big", signed=True)
    return Packet(VIDEO, timestamp, head + len(nal).to_bytes(4, "big") + nal, keyframe)


def sound(timestamp: int) -> Packet:
    return Packet(AUDIO, timestamp, b"\xaf\x01" + bytes(200))


def stream(
    seconds: float,
    gop: int = FPS,
    composition: int = 0,
    size: int = 900,
    missing: range = range(0),
    audio: bool = True,
) -> list[Packet]:
    """``seconds`` of 30 fps video (a keyframe every ``gop`` pictures) and AAC, in decoding order.

    ``composition``: each picture's composition offset (a source with B-frames decodes a picture this
    long before it shows it); a rendition has none and is stamped with its source's picture times.
    ``missing``: picture numbers left out (a rendition that made nothing there)."""
    packets = []
    audio_next = 0
    for i in range(round(seconds * FPS)):
        shown = i * 1000 // FPS
        while audio and audio_next <= shown:
            packets.append(sound(audio_next))
            audio_next += 23
        if i not in missing:
            packets.append(picture(shown - composition, i % gop == 0, composition, size))
    return packets


def pair(settings: HlsSettings | None = None) -> tuple[LivePlaylist, LivePlaylist]:
    """A source's playlist and a rendition's that follows it."""
    settings = settings or HlsSettings()
    source = LivePlaylist(settings, "0000aaaa")
    return source, LivePlaylist(settings, "0000bbbb", leader=source)


def feed_behind(
    source: LivePlaylist, rendition: LivePlaylist, source_packets: list[Packet], made: list[Packet], lag_ms: int = 300
) -> None:
    """Both streams as the hub feeds them: the rendition's packets arrive ``lag_ms`` after the source's
    of the same time (a transcoder works behind its source)."""
    source.feed(AVC_CONFIG)
    source.feed(AAC_CONFIG)
    rendition.feed(AVC_CONFIG)
    rendition.feed(AAC_CONFIG)
    pending = list(made)
    for packet in source_packets:
        source.feed(packet)
        while pending and pending[0].timestamp + lag_ms <= packet.timestamp:
            rendition.feed(pending.pop(0))
    for packet in pending:
        rendition.feed(packet)


def complete(playlist: LivePlaylist) -> list[Segment]:
    return [segment for segment in playlist.segments if segment.complete]


def assert_aligned(source: LivePlaylist, rendition: LivePlaylist) -> None:
    """Every complete rendition segment is the source's of the same number: start (as presented),
    EXTINF, date, discontinuity sequence, and parts of the same number and durations."""
    followed = {segment.msn: segment for segment in complete(source)}
    mine = complete(rendition)
    assert mine, "the rendition completed segments"
    for segment in mine:
        theirs = followed[segment.msn]
        assert segment.start_pts == theirs.start_pts
        assert segment.duration == theirs.duration
        assert segment.wall_start == theirs.wall_start
        assert segment.discontinuity_sequence == theirs.discontinuity_sequence
        assert [p.duration for p in segment.parts] == [p.duration for p in theirs.parts], segment.msn
        assert [p.independent for p in segment.parts] == [p.independent for p in theirs.parts]


def test_a_rendition_cuts_its_segments_and_parts_where_its_source_did() -> None:
    """Keyframes every second, segments of two: the rendition opens a segment only at the keyframes
    where the source opened one, never at the others, and ends its parts where the source's ended."""
    source, rendition = pair()
    feed_behind(source, rendition, stream(12), stream(12, size=300))
    assert len(complete(source)) >= 5
    assert_aligned(source, rendition)
    assert [s.msn for s in rendition.segments] == [s.msn for s in source.segments][: len(rendition.segments)]
    assert all(s.duration == 2.0 for s in complete(rendition))
    assert all(len(s.parts) == 4 for s in complete(rendition))
    # The two playlists list the same segments with the same EXTINF and dates.
    ours, theirs = parse(rendition.playlist()), parse(source.playlist())
    assert [d for _, d in ours["segments"]] == [d for _, d in theirs["segments"]][: len(ours["segments"])]
    assert ours["sequence"] == theirs["sequence"]
    dates = [line for line in rendition.playlist().splitlines() if line.startswith("#EXT-X-PROGRAM-DATE-TIME")]
    assert dates == [line for line in source.playlist().splitlines() if line in dates]


def test_keyframes_match_on_presentation_time_when_the_source_has_b_frames() -> None:
    """A source with B-frames stamps a keyframe with its decoding time, before the picture's; the
    rendition's keyframe carries the picture's time: they are matched on what is presented."""
    source, rendition = pair()
    feed_behind(source, rendition, stream(10, composition=67), stream(10))
    assert source.segments[1].start_ts == source.segments[1].start_pts - 67
    assert_aligned(source, rendition)


def test_a_rendition_that_starts_late_waits_for_the_source_s_next_segment() -> None:
    """A rendition packaged from a keyframe that begins no source segment drops what it has until one
    does, and then takes that segment's number: it never numbers on its own."""
    source, rendition = pair()
    made = [p for p in stream(12) if p.timestamp >= 3000]  # its first keyframe, at 3 s, is mid-segment
    feed_behind(source, rendition, stream(12), made)
    assert rendition.segments[0].msn == 2 and rendition.segments[0].start_ts == 4000
    assert_aligned(source, rendition)


def test_source_segments_a_rendition_has_no_keyframe_for_are_gaps() -> None:
    """A rendition with nothing from 4.5 s to 9 s (its worker restarting) misses the source segments
    that began at 6 s and 8 s: they are listed as EXT-X-GAP with the source's EXTINF, and the next
    segment is the source's again, so the media sequence numbers and the timeline stay the source's."""
    source, rendition = pair()
    feed_behind(source, rendition, stream(16), stream(16, missing=range(135, 270)))
    gaps = [s for s in rendition.segments if s.gap]
    assert [s.msn for s in gaps] == [3, 4]
    assert [s.msn for s in rendition.segments] == list(range(rendition.segments[0].msn, rendition.segments[-1].msn + 1))
    text = rendition.playlist()
    assert text.count("#EXT-X-GAP\n#EXTINF:2.000,") == 2
    mine = {s.msn: s.duration for s in complete(rendition)}
    assert mine == {s.msn: s.duration for s in complete(source) if s.msn in mine}
    assert rendition.has(4, None) and rendition.find(4).pieces == []


def test_an_audio_only_rendition_follows_at_its_first_audio_frame_of_each_source_segment() -> None:
    source, rendition = pair()
    audio = [p for p in stream(10) if p.kind == AUDIO]
    source.feed(AVC_CONFIG)
    source.feed(AAC_CONFIG)
    rendition.feed(AAC_CONFIG)
    for packet in stream(10):
        source.feed(packet)
        while audio and audio[0].timestamp + 200 <= packet.timestamp:
            rendition.feed(audio.pop(0))
    starts = {s.msn: s.start_ts for s in source.segments}
    assert len(complete(rendition)) >= 3
    for segment in rendition.segments:
        assert 0 <= segment.start_ts - starts[segment.msn] < 23, "the first audio frame at or after the source's start"
        assert segment.wall_start == source.find(segment.msn).wall_start


def test_a_rendition_marks_the_discontinuities_its_source_marks() -> None:
    """The source's publisher came back: the rendition (whose publisher, the transcoder, did not change)
    marks the discontinuity at the same segment, with the same discontinuity sequence."""
    source, rendition = pair(HlsSettings(window=3, keep_after_window=0))
    source_packets, made = stream(20), stream(20, size=300)
    source.feed(AVC_CONFIG)
    rendition.feed(AVC_CONFIG)
    lagging = list(made)
    for packet in source_packets:
        if packet.timestamp in (5000, 15000) and packet.kind == VIDEO:
            source.new_publisher()
        source.feed(packet)
        while lagging and lagging[0].timestamp + 300 <= packet.timestamp:
            rendition.feed(lagging.pop(0))
    assert_aligned(source, rendition)
    for playlist in (source, rendition):
        facts = parse(playlist.playlist())
        assert facts["tags"]["#EXT-X-DISCONTINUITY-SEQUENCE"] == "1", "one discontinuity left the window"
        assert facts["discontinuities"] == 1


def test_rendition_reports_name_each_sibling_s_last_part() -> None:
    source, rendition = pair()
    feed_behind(source, rendition, stream(5), stream(5))
    report = rendition.report("../tv_480p/index.m3u8")
    last = rendition.segments[-1]
    assert report == RenditionReport("../tv_480p/index.m3u8", last.msn, len(last.parts) - 1)
    text = source.playlist("txSecret=abc", (report,))
    assert text.rstrip().endswith(
        f'#EXT-X-RENDITION-REPORT:URI="../tv_480p/index.m3u8?txSecret=abc",LAST-MSN={last.msn},'
        f"LAST-PART={len(last.parts) - 1}"
    )
    assert "RENDITION-REPORT" not in source.playlist("txSecret=abc"), "rendered again when the reports change"


def test_the_master_playlist_lists_each_variant_with_its_attributes() -> None:
    text = master_playlist(
        [
            Variant("index.m3u8?k=1", 2_400_000, 2_000_000, ["avc1.64001f", "mp4a.40.2"], 1280, 720, 30.0),
            Variant("../tv_480p/index.m3u8?k=1", 1_200_000, 900_000, ["avc1.64001e", "mp4a.40.2"], 854, 480, 29.97),
            Variant("../tv_audio/index.m3u8?k=1", 140_000, 128_000, ["mp4a.40.2"]),
        ]
    )
    assert text == (
        "#EXTM3U\n"
        '#EXT-X-STREAM-INF:BANDWIDTH=2400000,AVERAGE-BANDWIDTH=2000000,CODECS="avc1.64001f,mp4a.40.2",'
        "RESOLUTION=1280x720,FRAME-RATE=30.000\n"
        "index.m3u8?k=1\n"
        '#EXT-X-STREAM-INF:BANDWIDTH=1200000,AVERAGE-BANDWIDTH=900000,CODECS="avc1.64001e,mp4a.40.2",'
        "RESOLUTION=854x480,FRAME-RATE=29.970\n"
        "../tv_480p/index.m3u8?k=1\n"
        '#EXT-X-STREAM-INF:BANDWIDTH=140000,AVERAGE-BANDWIDTH=128000,CODECS="mp4a.40.2"\n'
        "../tv_audio/index.m3u8?k=1\n"
    )


@needs_ffmpeg
async def test_a_ladder_s_rendition_follows_its_source_with_b_frames(tmp_path) -> None:
    """The real thing, without a server: ffmpeg's H.264 with B-frames through the transcoding ladder;
    the rendition's playlist has the source's segments, parts and durations."""
    from relay.transcode.ladder import Ladder, Rung
    from tests.test_ladder import source as ffmpeg_source

    packets = await ffmpeg_source(tmp_path, "640x360", seconds=9)
    ladder = Ladder([Rung("240p", 240, 300_000, 360_000)])
    leader, follower = pair()
    for packet in packets:
        leader.feed(packet)
        for _, made in ladder.feed(packet):
            follower.feed(made)
    assert any(segment.start_pts != segment.start_ts for segment in leader.segments), "keyframes after B-frames"
    assert len(complete(follower)) >= 3
    assert_aligned(leader, follower)


def test_codecs_come_from_the_sequence_headers() -> None:
    assert codecs_of(AVC_CONFIG.payload, AAC_CONFIG.payload) == ["avc1.42001f", "mp4a.40.2"]
    assert codecs_of(None, AAC_CONFIG.payload) == ["mp4a.40.2"]
    assert codecs_of(b"\x17\x00\x00", b"\x2f\x00") == [], "what does not parse (here: MP3) is left out"


# ---------------------------------------------------------------- a server, ffmpeg publishing, HTTP clients


def parse_master(text: str) -> list[tuple[dict[str, str], str]]:
    """(attributes, URI) of each EXT-X-STREAM-INF of a master playlist."""
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U"
    found = []
    for line, uri in itertools.pairwise(lines):
        if line.startswith("#EXT-X-STREAM-INF:"):
            attrs = {k: v.strip('"') for k, v in re.findall(r'([A-Z-]+)=("[^"]*"|[^,]*)', line[18:])}
            found.append((attrs, uri))
    return found


def listed(text: str) -> dict[int, dict]:
    """The complete segments of a media playlist by media sequence number: URI, EXTINF, date, parts."""
    segments: dict[int, dict] = {}
    facts: dict = {"parts": 0}
    for line in text.splitlines():
        if line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            facts["date"] = line.split(":", 1)[1]
        elif line.startswith("#EXT-X-PART:"):
            facts["parts"] += 1
        elif line.startswith("#EXTINF:"):
            facts["extinf"] = line[8:].rstrip(",")
        elif line and not line.startswith("#"):
            msn = int(re.match(r"[0-9a-f]{8}-(\d+)\.ts", line)[1])
            segments[msn] = {**facts, "uri": line}
            facts = {"parts": 0}
    return segments


def rates(segments: dict[int, dict], sizes: dict[int, int]) -> tuple[int, int]:
    """(peak, average) bit/s of the segments, as RFC 8216 defines BANDWIDTH and AVERAGE-BANDWIDTH."""
    per_segment = [sizes[msn] * 8 / float(seg["extinf"]) for msn, seg in segments.items()]
    total = sum(float(seg["extinf"]) for seg in segments.values())
    return round(max(per_segment)), round(sum(sizes.values()) * 8 / total)


async def measured_master(session: aiohttp.ClientSession, base: str, names: list[str]) -> tuple[dict, dict]:
    """The master playlist's attributes by stream, and the (peak, average) a client measures on the
    segments each media playlist lists around it (fetched again until nothing completed in between)."""
    for _ in range(20):
        before = {name: listed((await fetch(session, f"{base}/{name}/index.m3u8"))[1].decode()) for name in names}
        status, body, _ = await fetch(session, f"{base}/{names[0]}/master.m3u8")
        assert status == 200
        after = {name: listed((await fetch(session, f"{base}/{name}/index.m3u8"))[1].decode()) for name in names}
        if before == after:
            break
    else:
        raise AssertionError("segments kept completing while the master playlist was fetched")
    attrs = {uri.split("/")[-2] if "/" in uri else names[0]: a for a, uri in parse_master(body.decode())}
    measured = {}
    for name, segments in after.items():
        sizes = {msn: len((await fetch(session, f"{base}/{name}/{seg['uri']}"))[1]) for msn, seg in segments.items()}
        measured[name] = rates(segments, sizes)
    return attrs, measured


async def first_picture(session: aiohttp.ClientSession, url: str, path: Path) -> dict:
    """ffprobe's first video frame of the segment at ``url``: its time on the 90 kHz clock, key or not."""
    status, body, _ = await fetch(session, url)
    assert status == 200
    path.write_bytes(body)
    code, out, err = await run(
        FFPROBE, "-v", "error", "-select_streams", "v", "-show_frames", "-read_intervals", "%+#1",
        "-show_entries", "frame=pts,key_frame,pict_type", "-of", "json", str(path),
    )  # fmt: skip
    assert code == 0, err.decode()
    return json.loads(out)["frames"][0]


@needs_ffmpeg
@pytest.mark.serial  # live encoders fill both cores: runs alone (scripts/dev test)
async def test_master_playlist_lists_the_stream_and_its_renditions_aligned(make_server, tmp_path) -> None:
    """ffmpeg pushes 720p30 with a keyframe a second. The master playlist lists the source and its 480p
    and 360p renditions with every attribute; the renditions' playlists have the source's segments
    (numbers, EXTINF, dates, parts) and report each other; a segment of each starts with the same
    picture; bitrates are the segments' as a client measures them once there are some."""
    server = await make_server()
    pub = await publish(rtmp_url(server, "demo"), seconds=60, size="1280x720", rate=30, gop=30)
    base = f"http://127.0.0.1:{server.http_port}/live"
    try:
        await wait_live(server, "demo")
        async with aiohttp.ClientSession() as session:
            assert (await fetch(session, f"{base}/nothing/master.m3u8"))[0] == 404
            status, body, headers = await fetch(session, f"{base}/demo/master.m3u8?room=7")
            assert status == 200 and headers["Content-Type"] == "application/vnd.apple.mpegurl"
            first = parse_master(body.decode())
            assert [uri for _, uri in first] == [
                "index.m3u8?room=7",
                "../demo_480p/index.m3u8?room=7",
                "../demo_360p/index.m3u8?room=7",
            ], "the source first, then each rendition, the query carried on"
            source, r480, r360 = (attrs for attrs, _ in first)
            # ffmpeg's x264 at preset ultrafast: Constrained Baseline, level 3.1; AAC-LC.
            assert source["CODECS"] == "avc1.42c01f,mp4a.40.2"
            assert (source["RESOLUTION"], source["FRAME-RATE"]) == ("1280x720", "30.000")
            # The renditions, before they have made a segment: their encoder's codec as it will write
            # it (x264 veryfast: High, at the level for the size), bitrates from their rungs (plus the
            # audio, 64 kbit/s a channel: ffmpeg's sine is mono, and 10 % for the container).
            assert (r480["RESOLUTION"], r480["FRAME-RATE"], r480["CODECS"]) == (
                "854x480",
                "30.000",
                "avc1.64001f,mp4a.40.2",
            )
            assert (r360["RESOLUTION"], r360["FRAME-RATE"], r360["CODECS"]) == (
                "640x360",
                "30.000",
                "avc1.64001e,mp4a.40.2",
            )
            for attrs, (target, peak) in ((r480, (800_000, 960_000)), (r360, (500_000, 600_000))):
                assert int(attrs["AVERAGE-BANDWIDTH"]) == round((target + 64_000) * 1.1)
                assert int(attrs["BANDWIDTH"]) == round((peak + 64_000) * 1.1)
            assert 0 < int(source["AVERAGE-BANDWIDTH"]) <= int(source["BANDWIDTH"])
            # The master started the renditions and their packaging: a few seconds on, they have segments.
            names = ["demo", "demo_480p", "demo_360p"]
            deadline = time.monotonic() + 30
            while True:
                lists = {n: listed((await fetch(session, f"{base}/{n}/index.m3u8"))[1].decode()) for n in names}
                if len(lists["demo_360p"]) >= 2 and len(lists["demo_480p"]) >= 2:
                    break
                assert time.monotonic() < deadline, f"renditions made no segments: {lists}"
                await asyncio.sleep(0.5)
            attrs, measured = await measured_master(session, base, names)
            for name in names:
                assert (int(attrs[name]["BANDWIDTH"]), int(attrs[name]["AVERAGE-BANDWIDTH"])) == measured[name], name
            assert attrs["demo_480p"]["CODECS"] == r480["CODECS"], "the codec named before it ran is the one it has"
            assert attrs["demo_360p"]["CODECS"] == r360["CODECS"]
            assert measured["demo_480p"][0] <= int(r480["BANDWIDTH"]), "the estimate did not understate the peak"
            # Aligned: the segments both list have the same EXTINF, date and number of parts.
            text = {n: (await fetch(session, f"{base}/{n}/index.m3u8"))[1].decode() for n in names}
            segments = {n: listed(text[n]) for n in names}
            for name in names[1:]:
                common = sorted(set(segments[name]) & set(segments["demo"]))
                assert len(common) >= 2, (name, segments)
                for msn in common:
                    ours, theirs = segments[name][msn], segments["demo"][msn]
                    assert (ours["extinf"], ours["date"]) == (theirs["extinf"], theirs["date"]), (name, msn)
                    assert ours["parts"] == theirs["parts"] or 0 in (ours["parts"], theirs["parts"]), (name, msn)
                # Each playlist reports the others' last part: a blocking reload for it answers at once.
                report = re.search(
                    rf'#EXT-X-RENDITION-REPORT:URI="../{name}/index.m3u8",LAST-MSN=(\d+),LAST-PART=(\d+)', text["demo"]
                )
                assert report, text["demo"]
                started = time.monotonic()
                url = f"{base}/{name}/index.m3u8?_HLS_msn={report[1]}&_HLS_part={report[2]}"
                assert (await fetch(session, url))[0] == 200
                assert time.monotonic() - started < 0.5, "the reported part exists already"
                assert '#EXT-X-RENDITION-REPORT:URI="../demo/index.m3u8"' in text[name]
                # The same picture starts the segment in both: a keyframe at the same time.
                msn = common[-1]
                pictures = [
                    await first_picture(session, f"{base}/{n}/{segments[n][msn]['uri']}", tmp_path / f"{n}.ts")
                    for n in ("demo", name)
                ]
                assert pictures[0]["pts"] == pictures[1]["pts"], pictures
                assert all(p["key_frame"] == 1 for p in pictures), pictures
            status, body, _ = await fetch(session, f"{base}/demo_480p/master.m3u8")
            assert status == 404 and b"/live/demo/master.m3u8" in body, "a rendition has no master playlist"
    finally:
        await pub.stop()


@needs_ffmpeg
@pytest.mark.serial  # live encoders fill both cores: runs alone (scripts/dev test)
async def test_renditions_keep_running_while_players_of_the_master_playlist_play(make_server) -> None:
    """On demand, a rendition nobody watches stops after [transcode] idle_seconds. One that a master
    playlist listed stays while a player that fetched it plays any of the stream (the source here), so
    that its switch down finds the rendition made; once that player is gone, it stops."""
    server = await make_server(audience_seconds=2, renditions=[{"name": "240p", "height": 240, "video_bitrate": 300}])
    server.settings.transcode.idle_seconds = 3  # (make_server's idle_seconds is HLS packaging's); sweeps every 1 s
    pub = await publish(rtmp_url(server, "warm"), seconds=40, size="640x360", rate=30, gop=30)
    base = f"http://127.0.0.1:{server.http_port}/live"
    try:
        await wait_live(server, "warm")
        async with aiohttp.ClientSession() as session:
            status, body, _ = await fetch(session, f"{base}/warm/master.m3u8")
            assert status == 200 and [uri for _, uri in parse_master(body.decode())][1] == "../warm_240p/index.m3u8"
            assert server.hub.has("live", "warm_240p"), "listed, so started"
            for _ in range(10):  # 5 s of playing the source
                assert (await fetch(session, f"{base}/warm/index.m3u8"))[0] == 200
                await asyncio.sleep(0.5)
            assert server.hub.has("live", "warm_240p"), "kept while the master's player plays"
            deadline = time.monotonic() + 15
            while server.hub.has("live", "warm_240p"):
                assert time.monotonic() < deadline, "still running with no player left"
                await asyncio.sleep(0.25)
    finally:
        await pub.stop()


def test_a_rendition_before_its_first_segment_takes_blocking_requests_in_its_source_s_numbers() -> None:
    """A player switching to a rendition that has just started asks for the source's next segment
    (``_HLS_msn``): not "too far ahead" of a playlist that has none yet."""
    source, rendition = pair()
    source.feed(AVC_CONFIG)
    for packet in stream(9):
        source.feed(packet)
    assert rendition.segments == [] and rendition.last_msn == source.last_msn == 4
