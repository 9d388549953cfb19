"""WHIP ingest and WHEP playback with aiortc as the remote peer (real PyAV encoders and decoders)."""

from __future__ import annotations

import asyncio
import fractions
import gc
import os
import threading

import aiohttp
import av
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from api.models import LiveStatus
from relay.formats.h264 import AnnexBToFlv, FlvToAnnexB, split_annexb
from signaling import ice
from signaling.ice import IceSettings
from signaling.sdp import OfferError, narrow_offer
from signaling.sessions import WebRtcSettings
from tests.conftest import flv_url, hub_stream, make_room, needs_ffmpeg, probe_streams, publish, rtmp_url, wait_live
from tests.test_compat_rendition import assert_plays_h264_and_aac

LOOPBACK = IceSettings(addresses=["127.0.0.1"])


def webrtc_settings(**fields) -> WebRtcSettings:  # type: ignore[no-untyped-def]
    return WebRtcSettings(ice=IceSettings(addresses=["127.0.0.1"], port_min=40000, port_max=40999), **fields)


class Pattern(VideoStreamTrack):
    """Moving 320x240 frames, 30 fps, which aiortc encodes with libx264."""

    sent = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        self.sent += 1
        frame = av.VideoFrame(320, 240, "yuv420p")
        shade = (pts // 3000) % 200
        for i, plane in enumerate(frame.planes):
            plane.update(bytes([(shade + 40 * i) & 0xFF]) * plane.buffer_size)
        frame.pts, frame.time_base = pts, time_base
        return frame


class Tone(AudioStreamTrack):
    """A 20 ms frame of 48 kHz stereo square wave at a time, which aiortc encodes with libopus."""

    async def recv(self) -> av.AudioFrame:
        if not hasattr(self, "_samples"):
            self._samples = 0
            self._start = asyncio.get_running_loop().time()
        wait = self._start + self._samples / 48000 - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
        wave = (b"\x00\x10\x00\x10" * 24 + b"\x00\xf0\x00\xf0" * 24) * 20
        frame.planes[0].update(wave)
        frame.sample_rate = 48000
        frame.pts, frame.time_base = self._samples, fractions.Fraction(1, 48000)
        self._samples += 960
        return frame


def prefer_vp8(transceiver) -> None:  # type: ignore[no-untyped-def]
    """Offer VP8 alone, as a browser that has no H.264 encoder does."""
    vp8 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType in ("video/VP8", "video/rtx")]
    transceiver.setCodecPreferences(vp8)


def client_pc() -> RTCPeerConnection:
    with ice.policy(LOOPBACK):
        return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def post_offer(url: str, pc: RTCPeerConnection, token: str | None = None) -> aiohttp.ClientResponse:
    with ice.policy(LOOPBACK):
        await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as http, http.post(url, data=pc.localDescription.sdp, headers=headers) as r:
        await r.read()
        return r


async def whip_publish(server, name: str, token: str | None = None, video: Pattern | None = None, vp8: bool = False):  # type: ignore[no-untyped-def]
    pc = client_pc()
    with ice.policy(LOOPBACK):
        transceiver = pc.addTransceiver(video or Pattern(), direction="sendonly")
        if vp8:
            prefer_vp8(transceiver)
        pc.addTransceiver(Tone(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    url = f"http://127.0.0.1:{server.http_port}/whip/{name}"
    async with aiohttp.ClientSession() as http, http.post(url, data=pc.localDescription.sdp, headers=headers) as r:
        body = await r.text()
        assert r.status == 201, body
        assert r.headers["ETag"] and r.headers["Content-Type"] == "application/sdp"
        assert " 127.0.0.1 40" in body, "host candidate on the configured address and port range"
        location = r.headers["Location"]
    await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
    return pc, f"http://127.0.0.1:{server.http_port}{location}"


async def delete(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.delete(url) as r:
        return r.status


async def wait_status(server, room, status: int, timeout: float = 15) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout * 20)):
        if (await server.store.get_room(room.roomid)).live_status == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"room {room.roomid} never became {status}")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ------------------------------------------------------------------ sans-I/O parts


def test_annexb_to_flv_and_back() -> None:
    sps, pps = b"\x67\x42\xc0\x1e\xda\x02\x80", b"\x68\xce\x3c\x80"
    idr, p = b"\x65\x88\x84\x00", b"\x41\x9a\x02"
    packer = AnnexBToFlv()
    assert packer.push(b"\x00\x00\x00\x01" + p) == []  # nothing decodable before SPS/PPS
    assert packer.needs_keyframe
    out = packer.push(b"".join(b"\x00\x00\x00\x01" + n for n in (b"\x09\xf0", sps, pps, idr)))
    assert [k for k, _ in out] == [False, True]
    header, frame = out[0][1], out[1][1]
    assert header[:2] == b"\x17\x00" and frame[:2] == b"\x17\x01"
    assert packer.push(b"\x00\x00\x01" + p)[0][1][:2] == b"\x27\x01"
    unpacker = FlvToAnnexB()
    unpacker.configure(header)
    assert split_annexb(unpacker.convert(frame[5:], True)) == [sps, pps, idr]
    assert split_annexb(unpacker.convert(len(p).to_bytes(4, "big") + p, False)) == [p]


def test_offer_checks() -> None:
    for text, status in [("hello", 400), ("v=0\r\n", 400), ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", 400)]:
        with pytest.raises(OfferError) as caught:
            narrow_offer(text)
        assert caught.value.status == status


async def test_offers_narrowed_to_h264_or_else_vp8() -> None:
    """H.264 is kept whenever it is offered (no transcoding); VP8 only where the endpoint takes it."""
    both, vp8_only = client_pc(), client_pc()
    both.addTransceiver("video", direction="sendonly")
    prefer_vp8(vp8_only.addTransceiver("video", direction="sendonly"))
    offers = []
    for pc in (both, vp8_only):
        with ice.policy(LOOPBACK):
            await pc.setLocalDescription(await pc.createOffer())
        offers.append(pc.localDescription.sdp)
        await pc.close()
    whip = ("h264", "vp8")
    narrowed = narrow_offer(offers[0], whip)
    assert "H264/90000" in narrowed and "VP8" not in narrowed
    narrowed = narrow_offer(offers[1], whip)
    assert "VP8/90000" in narrowed and "H264" not in narrowed
    with pytest.raises(OfferError, match=r"\(VP8, rtx\) are not supported: use H.264 \(packetization-mode=1\)$"):
        narrow_offer(offers[1])
    vp9_only = offers[1].replace("VP8/90000", "VP9/90000")
    with pytest.raises(OfferError, match=r"use H.264 \(packetization-mode=1\) or VP8$") as caught:
        narrow_offer(vp9_only, whip)
    assert caught.value.status == 406


# ------------------------------------------------------------------ WHIP


@needs_ffmpeg
async def test_whip_publish_plays_over_http_flv(make_server) -> None:  # type: ignore[no-untyped-def]
    server = await make_server(webrtc=webrtc_settings())
    pc, resource = await whip_publish(server, "cam")
    try:
        await wait_live(server, "cam", timeout=15)
        stream = hub_stream(server, "live", "cam")
        assert stream.publisher.protocol == "whip"
        streams = await probe_streams(flv_url(server, "cam"))
        codecs = {s["codec_type"]: s["codec_name"] for s in streams}
        assert codecs == {"video": "h264", "audio": "aac"}
        video = next(s for s in streams if s["codec_type"] == "video")
        assert (video["width"], video["height"]) == (320, 240)
    finally:
        assert await delete(resource) == 200
        await pc.close()
    assert hub_stream(server, "live", "cam").publisher is None
    assert await delete(resource) == 404
    assert not server.webrtc.registry.sessions


@needs_ffmpeg
async def test_whip_vp8_publisher_is_played_over_http_flv_as_h264(make_server) -> None:  # type: ignore[no-untyped-def]
    """A browser that offers VP8 alone: the stream carries its VP8 as it is (Enhanced RTMP ``vp08``),
    and live-player's HTTP-FLV URL of the H.264 rendition plays H.264 and AAC (from the Opus)."""
    server = await make_server(webrtc=webrtc_settings(), workers=1)
    pc, resource = await whip_publish(server, "vp8cam", vp8=True)
    try:
        await wait_live(server, "vp8cam", timeout=15)
        video = server.hub.stats("live", "vp8cam")["video"]
        assert (video["codec"], video["width"], video["height"]) == ("vp8", 320, 240), "the size from a keyframe"
        await assert_plays_h264_and_aac(flv_url(server, "vp8cam_h264"), (320, 240), frames=30)
        assert hub_stream(server, "live", "vp8cam").video_frames > 0
    finally:
        assert await delete(resource) == 200
        await pc.close()
    assert not server.webrtc.registry.sessions


@needs_ffmpeg
async def test_whip_publish_drives_the_room(make_server) -> None:  # type: ignore[no-untyped-def]
    """A room's signed key as the Bearer token: the room goes live and is recorded, as with RTMP."""
    server = await make_server(
        webrtc=webrtc_settings(), allow_anonymous_publish=False, grace_seconds=0.5, interrupt_grace_seconds=30
    )
    app, room = await make_room(server, closeReplay=0)
    stream_key = server.urls.push_url(app, room).rsplit("/", 1)[1]  # APPID-ROOMID?txSecret=..&txTime=..
    pc, resource = await whip_publish(server, room.stream_name, token=stream_key)
    try:
        await wait_status(server, room, LiveStatus.LIVE)
        await wait_live(server, room.stream_name, timeout=15)
        assert not server.recorder.can_record("live", room.stream_name), "the recorder follows the stream"
    finally:
        assert await delete(resource) == 200
        await pc.close()
    await wait_status(server, room, LiveStatus.INTERRUPTED)


async def test_whip_refusals(make_server) -> None:  # type: ignore[no-untyped-def]
    server = await make_server(webrtc=webrtc_settings(), allow_anonymous_publish=False)
    base = f"http://127.0.0.1:{server.http_port}"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/whip/x", data="v=0\r\n", headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 415
        async with http.options(f"{base}/whip/x") as r:
            assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == "*"
        pc = client_pc()
        pc.addTransceiver("video", direction="sendonly")
        response = await post_offer(f"{base}/whip/x", pc)
        assert response.status == 401 and response.headers["WWW-Authenticate"] == "Bearer"
        response = await post_offer(f"{base}/whip/x", pc, token="txSecret=bad&txTime=1")
        assert response.status == 403
        await pc.close()
    assert not server.webrtc.registry.sessions


async def test_offers_that_cannot_be_answered(make_server) -> None:  # type: ignore[no-untyped-def]
    server = await make_server(webrtc=webrtc_settings())
    base = f"http://127.0.0.1:{server.http_port}"
    pc = client_pc()
    prefer_vp8(pc.addTransceiver("video", direction="sendonly"))
    with ice.policy(LOOPBACK):
        await pc.setLocalDescription(await pc.createOffer())
    vp8_only = pc.localDescription.sdp
    assert "VP8" in vp8_only and "H264" not in vp8_only
    async with aiohttp.ClientSession() as http:
        for endpoint, body, status in [
            ("whip", "garbage", 400),
            ("whip", "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", 400),
            ("whip", vp8_only.replace("VP8/90000", "VP9/90000"), 406),
            ("whep", vp8_only, 406),  # WHEP sends H.264 as it is, never VP8
            ("whip", "v=0\r\n" + "a=x\r\n" * 20000, 413),
        ]:
            url = f"{base}/{endpoint}/x"
            async with http.post(url, data=body, headers={"Content-Type": "application/sdp"}) as r:
                text = await r.text()
                assert r.status == status, text
                assert text.strip()
    await pc.close()
    assert not server.webrtc.registry.sessions


async def test_abandoned_sessions_are_reclaimed(make_server) -> None:  # type: ignore[no-untyped-def]
    """Offers answered but never connected: each session and its sockets and threads go at the timeout."""
    server = await make_server(webrtc=webrtc_settings(connect_timeout=1.0))
    base = f"http://127.0.0.1:{server.http_port}"
    threads, fds = threading.active_count(), open_fds()
    clients = []
    for i in range(8):
        pc = client_pc()
        pc.addTransceiver("video", direction="sendonly")
        pc.addTransceiver("audio", direction="sendonly")
        response = await post_offer(f"{base}/whip/s{i}", pc)
        assert response.status == 201
        clients.append(pc)
    assert len(server.webrtc.registry.sessions) == 8
    for pc in clients:  # the clients vanish without a word
        await pc.close()
    # someone else's session: another stream name or a made-up id
    some_id = next(iter(server.webrtc.registry.sessions))
    assert await delete(f"{base}/whip/other/{some_id}") == 404
    assert await delete(f"{base}/whip/s0/not-a-session") == 404
    for _ in range(60):
        if not server.webrtc.registry.sessions:
            break
        await asyncio.sleep(0.1)
    assert not server.webrtc.registry.sessions
    await asyncio.sleep(0.2)
    assert threading.active_count() <= threads
    assert open_fds() <= fds + 2
    assert not any(s["live"] for s in server.hub.all_stats())


# ------------------------------------------------------------------ WHEP


@needs_ffmpeg
async def test_rtmp_publish_plays_over_whep(make_server) -> None:  # type: ignore[no-untyped-def]
    server = await make_server(webrtc=webrtc_settings(max_whep_viewers=1))
    publisher = await publish(rtmp_url(server, "show"), seconds=20)
    try:
        await wait_live(server, "show")
        pc = client_pc()
        pc.addTransceiver("video", direction="recvonly")
        frames: dict[str, list] = {"video": [], "audio": []}
        tasks = []

        @pc.on("track")
        def on_track(track) -> None:  # type: ignore[no-untyped-def]
            async def read() -> None:
                while True:
                    frames[track.kind].append(await track.recv())

            tasks.append(asyncio.ensure_future(read()))

        pc.addTransceiver("audio", direction="recvonly")
        url = f"http://127.0.0.1:{server.http_port}/whep/show"
        with ice.policy(LOOPBACK):
            await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http:
            headers = {"Content-Type": "application/sdp"}
            async with http.post(url, data=pc.localDescription.sdp, headers=headers) as r:
                answer = await r.text()
                assert r.status == 201, answer
                resource = f"http://127.0.0.1:{server.http_port}{r.headers['Location']}"
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            # a second viewer is past the limit
            other = client_pc()
            other.addTransceiver("video", direction="recvonly")
            response = await post_offer(url, other)
            assert response.status == 503
            await other.close()
        for _ in range(100):
            if len(frames["video"]) >= 10 and len(frames["audio"]) >= 10:
                break
            await asyncio.sleep(0.1)
        video, audio = frames["video"], frames["audio"]
        assert len(video) >= 10 and isinstance(video[0], av.VideoFrame)
        assert (video[-1].width, video[-1].height) == (320, 240)
        assert len(audio) >= 10 and isinstance(audio[0], av.AudioFrame) and audio[0].sample_rate == 48000
        feed = server.webrtc.whep.feeds["live/show"]
        assert len(feed.sessions) == 1
        assert server.hub.audience("live", "show") == {"whep": 1}, "a WebRTC viewer counts in the audience"
        assert await delete(resource) == 200
        for task in tasks:
            task.cancel()
        await pc.close()
        assert not server.webrtc.whep.feeds and feed not in hub_stream(server, "live", "show").sinks
        assert server.hub.audience("live", "show") == {}
    finally:
        await publisher.stop()
    assert not server.webrtc.registry.sessions


async def test_whep_of_a_stream_that_is_not_live(make_server) -> None:  # type: ignore[no-untyped-def]
    server = await make_server(webrtc=webrtc_settings())
    pc = client_pc()
    pc.addTransceiver("video", direction="recvonly")
    response = await post_offer(f"http://127.0.0.1:{server.http_port}/whep/nothing", pc)
    assert response.status == 404
    await pc.close()
    assert not server.webrtc.registry.sessions


async def test_whip_frames_arrive_in_the_hub_as_sent(make_server) -> None:  # type: ignore[no-untyped-def]
    server = await make_server(webrtc=webrtc_settings())
    pattern = Pattern()
    pc, resource = await whip_publish(server, "count", video=pattern)
    try:
        await wait_live(server, "count", timeout=15)
        stream = hub_stream(server, "live", "count")
        await asyncio.sleep(3)
    finally:
        assert await delete(resource) == 200
        await pc.close()
    stream.flush()
    received = stream.video_frames
    # Frames still in the jitter buffer or in flight when the session ended, and the first frames
    # before the keyframe the hub starts on, are the only ones allowed to be missing.
    assert pattern.sent - 15 <= received <= pattern.sent, (pattern.sent, received)


async def recvonly_offer() -> str:
    """A WHEP viewer's offer (video and audio, receive only) from a peer connection already closed:
    posted, it is answered and then abandoned."""
    client = client_pc()
    client.addTransceiver("video", direction="recvonly")
    client.addTransceiver("audio", direction="recvonly")
    with ice.policy(LOOPBACK):
        await client.setLocalDescription(await client.createOffer())
    await client.close()
    return client.localDescription.sdp


def live_objects(name: str) -> int:
    return sum(1 for o in gc.get_objects() if type(o).__name__ == name)


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@needs_ffmpeg
async def test_abandoned_whep_sessions_are_freed_without_a_full_collection(make_server) -> None:  # type: ignore[no-untyped-def]
    """Issue 16, finding #5: offers answered, then abandoned (the ICE deadline closes them). With the
    cyclic collector off, as it in effect is between rare full collections, every peer connection and
    session is gone once closed: freed by reference counting, nothing left in a cycle."""
    sessions = 200
    server = await make_server(webrtc=webrtc_settings(connect_timeout=1.0, max_whep_viewers=sessions))
    publisher = await publish(rtmp_url(server, "gone"), seconds=30)
    try:
        await wait_live(server, "gone")
        offer = await recvonly_offer()
        url = f"http://127.0.0.1:{server.http_port}/whep/gone"
        headers = {"Content-Type": "application/sdp"}
        gc.collect()
        gc.disable()
        try:
            start = (live_objects("RTCPeerConnection"), live_objects("WhepSession"), rss_mb())
            async with aiohttp.ClientSession() as http:

                async def abandon() -> int:
                    async with http.post(url, data=offer, headers=headers) as response:
                        await response.read()
                        return response.status

                for _ in range(sessions // 20):
                    assert await asyncio.gather(*(abandon() for _ in range(20))) == [201] * 20
            for _ in range(200):
                if not server.webrtc.registry.sessions:
                    break
                await asyncio.sleep(0.1)
            assert not server.webrtc.registry.sessions, "the ICE deadline closed every session"
            await asyncio.sleep(0.5)  # the last closes finish
            assert live_objects("RTCPeerConnection") <= start[0], "peer connections freed by reference counting"
            assert live_objects("WhepSession") <= start[1]
            assert rss_mb() - start[2] < 64, "memory roughly flat"
        finally:
            gc.enable()
    finally:
        await publisher.stop()
