"""Issue 16, WebRTC side: session caps per address and in total, the ICE deadline, and what an
abandoned session leaves behind (threads, peer connections, PyAV codec contexts: nothing)."""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import socket
import threading
from collections.abc import Iterator

import aiohttp
import av
import pytest

from api import config
from tests.conftest import metric
from tests.test_webrtc import delete, live_objects, webrtc_settings, whip_publish


def chromium_offer(port: int) -> str:
    """A WHIP offer as Chromium writes it (Opus and H.264, bundled), whose one candidate is a UDP port
    that never answers: ICE cannot complete, as with a client that POSTs and vanishes."""
    fingerprint = ":".join(f"{b:02X}" for b in secrets.token_bytes(32))
    ufrag, pwd = secrets.token_hex(2), secrets.token_hex(12)
    media = []
    for mid, (kind, pt, rtpmap, fmtp) in enumerate(
        (
            ("audio", 111, "opus/48000/2", "minptime=10;useinbandfec=1"),
            ("video", 102, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"),
        )
    ):
        media += [
            f"m={kind} 9 UDP/TLS/RTP/SAVPF {pt}",
            "c=IN IP4 0.0.0.0",
            "a=rtcp:9 IN IP4 0.0.0.0",
            f"a=candidate:1 1 udp 2122260223 127.0.0.1 {port} typ host generation 0",
            f"a=ice-ufrag:{ufrag}",
            f"a=ice-pwd:{pwd}",
            "a=ice-options:trickle",
            f"a=fingerprint:sha-256 {fingerprint}",
            "a=setup:actpass",
            f"a=mid:{mid}",
            "a=sendonly",
            "a=rtcp-mux",
            f"a=rtpmap:{pt} {rtpmap}",
            f"a=fmtp:{pt} {fmtp}",
            *([f"a=rtcp-fb:{pt} nack", f"a=rtcp-fb:{pt} nack pli"] if kind == "video" else []),
            f"a=ssrc:{1000 + mid} cname:raw",
        ]
    head = ["v=0", "o=- 4215775240449105457 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1"]
    return "\r\n".join(head + media) + "\r\n"


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A UDP port that is bound (so no ICMP unreachable ends ICE early) and never read."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def post(http: aiohttp.ClientSession, url: str, offer: str) -> tuple[int, str, str]:
    """Status, body and Location of a POSTed offer."""
    async with http.post(url, data=offer, headers={"Content-Type": "application/sdp"}) as response:
        return response.status, await response.text(), response.headers.get("Location", "")


def codec_contexts() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, av.codec.context.CodecContext))


async def until_no_sessions(server, seconds: float = 20) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(seconds * 10)):
        if not server.webrtc.registry.sessions:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{len(server.webrtc.registry.sessions)} sessions left")


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


@pytest.mark.parametrize(
    ("setting", "status", "counter", "name"),
    [
        ("max_sessions_per_address", 429, "refused_address", "minilive_webrtc_refused_address_total"),
        ("max_sessions", 503, "refused_total", "minilive_webrtc_refused_total"),
    ],
)
async def test_session_caps(make_server, caplog, black_hole, setting, status, counter, name) -> None:  # type: ignore[no-untyped-def]
    """With a cap of 2, five offers at once open two sessions (offers being answered count), the
    others are refused with a body that names the setting; after a DELETE a new offer is answered."""
    caplog.set_level(logging.INFO)
    server = await make_server(webrtc=webrtc_settings(**{setting: 2, "address_cap_exempt": []}))
    base = f"http://127.0.0.1:{server.http_port}"
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(*(post(http, f"{base}/whip/s{i}", chromium_offer(black_hole)) for i in range(5)))
        assert sorted(a[0] for a in answers) == [201, 201, status, status, status]
        refused = next(a for a in answers if a[0] == status)
        assert f"[webrtc] {setting}" in refused[1]
        assert server.webrtc.registry.counters[counter] == 3
        location = next(a[2] for a in answers if a[0] == 201)
        assert await delete(base + location) == 200
        assert (await post(http, f"{base}/whip/again", chromium_offer(black_hole)))[0] == 201
        async with http.get(f"{base}/metrics") as response:
            text = await response.text()
        assert metric(text, name) == 3
        assert metric(text, "minilive_refusals_total", protocol="webrtc", limit=setting) == 3
        assert metric(text, "minilive_webrtc_sessions") == 2
    await server.webrtc.close()
    assert server.webrtc.registry.per_address == {} and server.webrtc.registry.offers == 0
    no_traceback(caplog)


async def test_loopback_is_exempt_from_the_address_cap_by_default(make_server, black_hole) -> None:  # type: ignore[no-untyped-def]
    server = await make_server(webrtc=webrtc_settings(max_sessions_per_address=1))
    base = f"http://127.0.0.1:{server.http_port}"
    async with aiohttp.ClientSession() as http:
        for i in range(3):
            assert (await post(http, f"{base}/whip/s{i}", chromium_offer(black_hole)))[0] == 201
    assert server.webrtc.registry.counters["refused_address"] == 0


async def test_offers_that_never_do_ice_are_torn_down_and_freed(make_server, caplog, black_hole) -> None:  # type: ignore[no-untyped-def]
    """Raw offers (no aiortc on the client side) whose ICE never completes: the connect_timeout deadline
    closes each, and their peer connections, threads and codec contexts go back to where they started."""
    caplog.set_level(logging.INFO)
    server = await make_server(webrtc=webrtc_settings(connect_timeout=1.0))
    url = f"http://127.0.0.1:{server.http_port}/whip/raw"
    gc.collect()
    gc.disable()  # freed by reference counting, as between a long-running server's rare full collections
    try:
        start = (threading.active_count(), live_objects("RTCPeerConnection"), live_objects("WhipSession"))
        async with aiohttp.ClientSession() as http:
            for i in range(3):  # 30 sessions, 10 at a time
                offers = (post(http, f"{url}{i}{j}", chromium_offer(black_hole)) for j in range(10))
                assert [a[0] for a in await asyncio.gather(*offers)] == [201] * 10
        await until_no_sessions(server)
        assert server.webrtc.registry.counters["timeouts"] == 30
        for _ in range(100):  # each logs its end once its peer connection has closed
            if caplog.text.count("did not connect in time (connect_timeout)") == 30:
                break
            await asyncio.sleep(0.05)
        assert caplog.text.count("did not connect in time (connect_timeout)") == 30
        await asyncio.sleep(0.5)  # the executors' threads finish
        assert threading.active_count() <= start[0]
        assert live_objects("RTCPeerConnection") <= start[1], "peer connections freed by reference counting"
        assert live_objects("WhipSession") <= start[2]
    finally:
        gc.enable()
    no_traceback(caplog)


async def publish_and_vanish(server, name: str) -> None:  # type: ignore[no-untyped-def]
    """An aiortc WHIP publisher that streams until the server transcodes its audio, then closes
    without a DELETE; returns once the server has ended its session."""
    pc, _ = await whip_publish(server, name)
    for _ in range(200):
        session = server.webrtc.registry.sessions and next(iter(server.webrtc.registry.sessions.values()))
        if session and session.aac is not None:  # Opus decoded, AAC encoded (PyAV, on the session's thread)
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the publisher's audio never reached the AAC encoder")
    assert any(t.name.startswith("whip-aac") for t in threading.enumerate())
    del session
    await pc.close()
    await until_no_sessions(server)


async def test_a_connected_publisher_that_vanishes_leaves_nothing(make_server, caplog) -> None:  # type: ignore[no-untyped-def]
    """An aiortc publisher (H.264 and Opus, which the server transcodes to AAC with PyAV on a thread of
    the session's) connects, streams and leaves without a DELETE: its thread, peer connection and codec
    contexts are gone. The first one warms up what a process keeps (the loop's default executor)."""
    caplog.set_level(logging.INFO)
    server = await make_server(webrtc=webrtc_settings())
    await publish_and_vanish(server, "warm")
    await asyncio.sleep(0.5)
    gc.collect()  # the client's own peer connection (aiortc's, in this process) is cyclic
    start = (threading.active_count(), live_objects("RTCPeerConnection"), codec_contexts())
    await publish_and_vanish(server, "cam")
    for _ in range(50):  # the session's close and its executor thread finish
        await asyncio.sleep(0.1)
        gc.collect()
        now = (threading.active_count(), live_objects("RTCPeerConnection"), codec_contexts())
        if all(n <= s for n, s in zip(now, start, strict=True)):
            break
    assert threading.active_count() <= start[0], [t.name for t in threading.enumerate()]
    assert not any(t.name.startswith("whip-aac") for t in threading.enumerate())
    assert live_objects("RTCPeerConnection") <= start[1]
    assert codec_contexts() <= start[2]
    no_traceback(caplog)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("max_sessions_per_address = 0", "max_sessions_per_address must be at least 1"),
        ("max_sessions = 0", "max_sessions must be at least 1"),
        ("connect_timeout = 0", "connect_timeout must be more than 0"),
        ('address_cap_exempt = ["nope"]', "'nope' is not an IP address or network"),
    ],
)
def test_webrtc_limits_are_validated(tmp_path, table: str, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "minilive.toml"
    path.write_text(f"[webrtc]\n{table}\n")
    with pytest.raises(config.ConfigError, match=message):
        config.load(path, {})
