"""Issue 16: the network mutation fuzzer (bench/netfuzz.py) scaled down to seconds, and what its long runs
found, each replayed against a real server."""

from __future__ import annotations

import asyncio
import logging
import re

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection

from bench.netfuzz import RecordingProxy, Target, mutate, replay
from tests.conftest import make_room, publish, rtmp_url, wait_live
from tests.test_http_hardening import no_traceback


async def metric(base: str, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as response:
        found = re.search(rf"^{name} (\S+)$", await response.text(), re.M)
    assert found, f"{name} is not in /metrics"
    return float(found[1])


async def test_a_client_gone_mid_body_is_an_info_line_and_a_counter(make_server, caplog) -> None:
    """The fuzzer's WHIP offers with a byte set or flipped in their Content-Length (seed 342 of its first
    run: the recorded aiortc offer, ``Content-Length: 3153`` made larger than the body), given up by the
    client at its timeout, logged "Error handling request" at ERROR with a ConnectionResetError traceback.
    Any body a handler reads does the same: the WHIP offer, the REST surface's JSON, the official one's."""
    caplog.set_level(logging.INFO)
    server = await make_server()
    app = await server.apps.create_app("shop")
    base = f"http://127.0.0.1:{server.http_port}"
    async with aiohttp.ClientSession() as session:
        query = {"grant_type": "client_credential", "appid": app.appid, "secret": app.secret}
        async with session.get(f"{base}/cgi-bin/token", params=query) as response:
            token = (await response.json())["access_token"]
    requests = [
        ("/whip/shop", "application/sdp", b"v=0\r\no=- 4005319421 4005319421 IN IP4 0.0.0.0\r\ns=-\r\n"),
        ("/api/v1/token", "application/json", b'{"appid": "' + app.appid.encode()),
        (f"/wxaapi/broadcast/room/create?access_token={token}", "application/json", b'{"name": "sh'),
    ]
    for path, content_type, partial in requests:
        _, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: 3153\r\n\r\n"
        writer.write(head.encode() + partial)
        await writer.drain()
        await asyncio.sleep(0.2)  # the handler is reading the body
        writer.transport.abort()
    for _ in range(100):  # the server hears of each close
        if await metric(base, "minilive_http_requests_abandoned_total") >= len(requests):
            break
        await asyncio.sleep(0.05)
    assert await metric(base, "minilive_http_requests_abandoned_total") == len(requests)
    assert caplog.text.count("closed the connection before the request was answered") == len(requests)
    no_traceback(caplog)
    async with aiohttp.ClientSession() as session, session.get(f"{base}/healthz") as response:
        assert response.status == 200


async def test_websocket_handshake_headers_that_are_not_ascii_are_refused_with_400(make_server, caplog) -> None:
    """WS-FLV upgrades with a byte flipped past 0x7F (the fuzzer's ws-flv sessions) in Sec-WebSocket-Key
    (aiohttp's base64 decode raised ValueError) or in Sec-WebSocket-Version (its refusal quoting the value
    could not be encoded): each a 500 and a traceback. They are 400s, like other bad handshakes, on both
    WebSocket routes: WS-FLV and the room channel."""
    caplog.set_level(logging.INFO)
    server = await make_server()
    _, room = await make_room(server)
    publisher = await publish(rtmp_url(server, "shop"), seconds=10, audio=False)
    await wait_live(server, "shop")
    key = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    version = b"Sec-WebSocket-Version: 13\r\n"
    for path in ("/live/shop.flv", f"/api/v1/rooms/{room.roomid}/ws"):
        for headers in (key.replace(b"ZQ==", b"\x80ZQ=="), version), (key, version.replace(b"13", b"1\x80")):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
            head = f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n".encode()
            writer.write(head + b"".join(headers) + b"\r\n")
            answer = await asyncio.wait_for(reader.read(65536), 10)
            assert answer.startswith(b"HTTP/1.1 400"), answer
            writer.close()
    await publisher.stop()
    no_traceback(caplog)


async def test_an_offer_with_a_malformed_address_is_refused_with_400(make_server, caplog) -> None:
    """An aiortc offer with a bit flipped in its origin's address (the fuzzer's whip session:
    ``IN IP4 0.0.0.0`` became ``IN IP4 0.0.p.0``) parsed, but writing the narrowed offer raised ValueError
    from ipaddress: a 500 and a traceback. It is a malformed offer: 400."""
    caplog.set_level(logging.INFO)
    server = await make_server()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    await pc.close()
    assert "IN IP4 0.0.0.0" in offer
    async with aiohttp.ClientSession() as session:
        for broken in (
            offer.replace("IN IP4 0.0.0.0", "IN IP4 0.0.p.0"),
            re.sub(r"c=IN IP4 \S+", "c=IN IP4 1.2.3", offer),
        ):
            url = f"http://127.0.0.1:{server.http_port}/whip/shop"
            async with session.post(url, data=broken, headers={"Content-Type": "application/sdp"}) as response:
                text = await response.text()
                assert response.status == 400, text
                assert text.startswith("malformed SDP offer"), text
    assert not server.webrtc.registry.sessions
    no_traceback(caplog)


async def test_offers_whose_mids_do_not_add_up_are_refused_with_400(make_server, caplog) -> None:
    """The fuzzer's WHIP offer with ``m=audio`` mutated to ``=audio`` (seed 304597 of its 10-minute run):
    the audio m-line's attributes, its ``a=mid:1`` among them, fell into the video m-line, so BUNDLE 0 1
    named a mid no m-line had. aiortc left the video transceiver without a transport and answering raised
    AttributeError, then closing the session raised again: a traceback, and a session never untangled.
    The same for an m-line given twice (one mid on two m-lines), and for a BUNDLE whose first mid is an
    m-line of a kind aiortc skips (``m=videg``). All are malformed offers: 400."""
    caplog.set_level(logging.INFO)
    server = await make_server()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="sendonly")
    pc.addTransceiver("audio", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    await pc.close()
    assert "\r\nm=audio " in offer and "a=group:BUNDLE 0 1" in offer
    audio = offer[offer.index("m=audio") :]
    broken = {
        offer.replace("\r\nm=audio ", "\r\n=audio "): "group names mids no m-line has: 0",
        offer + audio: "names one mid on two m-lines",
        # Seed 513631 of the 20-minute run: an m-line of a kind aiortc skips, named first in the BUNDLE.
        offer.replace("m=video ", "m=videg "): "group names mids no m-line has: 0",
    }
    async with aiohttp.ClientSession() as session:
        for body, reason in broken.items():
            url = f"http://127.0.0.1:{server.http_port}/whip/shop"
            async with session.post(url, data=body, headers={"Content-Type": "application/sdp"}) as response:
                text = await response.text()
                assert response.status == 400, text
                assert reason in text, text
    assert not server.webrtc.registry.sessions
    no_traceback(caplog)


async def test_a_bad_request_is_one_short_info_line_and_none_at_warning(make_server, caplog) -> None:
    """aiohttp's refusals of the fuzzer's bad requests (here its 100 KB header line) reached the log at
    ``--log-level warning`` too, since the filter that makes them INFO ran after the level check; and
    each quoted the offending line, up to 122 KB in one line (an "Invalid method" of a header line)."""
    server = await make_server()
    for level, lines in ((logging.INFO, 1), (logging.WARNING, 0)):
        caplog.clear()
        caplog.set_level(level)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
        writer.write(b"GET /api/v1/streams HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 100_000 + b"\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(65536), 10)
        writer.close()
        assert b" 400 Bad Request\r\n" in answer, answer[:300]
        logged = [r.getMessage() for r in caplog.records if "bad HTTP request" in r.getMessage()]
        assert len(logged) == lines, logged
        assert all(len(line) < 400 and "\n" not in line for line in logged), logged
    no_traceback(caplog)


async def test_mutated_sessions_leave_the_server_healthy(make_server, caplog, tmp_path) -> None:
    """bench/netfuzz.py in a few seconds: an ffmpeg RTMP publish and a JSON API call, recorded through its
    proxy, replayed with 200 seeds' mutations (25 at a time, 0.5 s each). No traceback or ERROR line, no
    RTMP connection or partial message left behind, and the server still answers and takes a publish."""
    caplog.set_level(logging.INFO)
    server = await make_server()
    rtmp, http = RecordingProxy(server.rtmp_port), RecordingProxy(server.http_port)
    rtmp_port, http_port = await rtmp.start(), await http.start()
    publisher = await publish(f"rtmp://127.0.0.1:{rtmp_port}/live/recorded", seconds=1, realtime=False)
    assert await asyncio.wait_for(publisher.process.wait(), 30) == 0
    body = {"appid": "wx1", "secret": "s"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{http_port}/api/v1/token", json=body),
    ):
        pass
    await rtmp.stop()
    await http.stop()
    recordings = rtmp.take("rtmp-publish", "rtmp") + http.take("api", "http")
    assert [r.name for r in recordings] == ["rtmp-publish#0", "api#0"]
    target = Target(server.rtmp_port, server.http_port, 25, 0.5, 0, 0, str(tmp_path / "sessions.jsonl"))
    slots = asyncio.Semaphore(25)
    ended: list[str] = []

    async def one(seed: int) -> None:
        recording = recordings[seed % len(recordings)]
        async with slots:
            ended.append(await replay(target, mutate(recording, seed)[0], recording.protocol))

    await asyncio.gather(*(one(seed) for seed in range(200)))
    assert len(ended) == 200 and "refused" not in ended
    for _ in range(100):  # the server hears of the last closes
        if not server.rtmp.totals()["connections"]:
            break
        await asyncio.sleep(0.05)
    assert server.rtmp.totals()["connections"] == 0
    assert server.rtmp.totals()["pending_bytes"] == 0
    no_traceback(caplog)
    publisher = await publish(rtmp_url(server, "after"), seconds=5, audio=False)
    await wait_live(server, "after")
    await publisher.stop()
