"""Issue 16, HTTP side: hostile bodies and requests against a real server (findings #6 and #8)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from api import config, json_body, webhook_targets
from tests.conftest import flv_url, free_port, metric, publish, rtmp_url, wait_live
from tests.test_wechat_api import make_png

DEEP = b"[" * 100_000


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_depth_ignores_brackets_inside_strings() -> None:
    assert json_body.depth(b'{"a": [1, {"b": "[[[[{{"}]}') == 3
    assert json_body.depth(b'"\\"[[["') == 0
    assert json_body.depth(DEEP) == 100_000
    with pytest.raises(json_body.JsonRefused, match="nests too deep"):
        json_body.loads(b"[" * 65 + b"]" * 65)
    assert json_body.loads(b"[" * 64 + b"]" * 64)


async def test_deep_and_large_json_is_47001_on_both_surfaces(make_server, session, caplog) -> None:
    caplog.set_level(logging.INFO)
    server = await make_server()
    app = await server.apps.create_app("shop")
    base = f"http://127.0.0.1:{server.http_port}"
    large = b'{"appid": "' + b"x" * (1024 * 1024) + b'"}'
    for body in (DEEP, large):
        # /api/v1/token needs no auth: anyone can send this
        async with session.post(f"{base}/api/v1/token", data=body) as response:
            assert response.status == 400
            reply = await response.json()
            assert reply["error"]["code"] == 47001, reply
        query = {"grant_type": "client_credential", "appid": app.appid, "secret": app.secret}
        async with session.get(f"{base}/cgi-bin/token", params=query) as response:
            token = (await response.json())["access_token"]
        async with session.post(f"{base}/wxaapi/broadcast/room/create?access_token={token}", data=body) as response:
            assert response.status == 200
            reply = await response.json()
            assert reply["errcode"] == 47001, reply
    no_traceback(caplog)


async def test_a_100_mb_upload_is_refused_without_being_read_whole(make_server, session, caplog) -> None:
    caplog.set_level(logging.INFO)
    server = await make_server()
    app = await server.apps.create_app("shop")
    query = {"grant_type": "client_credential", "appid": app.appid, "secret": app.secret}
    async with session.get(f"http://127.0.0.1:{server.http_port}/cgi-bin/token", params=query) as response:
        token = (await response.json())["access_token"]
    part = (
        b'--xyz\r\nContent-Disposition: form-data; name="media"; filename="a.png"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + make_png(16, 12)
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
    writer.write(
        f"POST /cgi-bin/media/upload?access_token={token}&type=image HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: {100 * 1024 * 1024}\r\n\r\n".encode()
        + part
    )
    for _ in range(11):  # 11 of the announced 100 MB, then the client stops sending
        writer.write(b"\0" * (1024 * 1024))
        await writer.drain()
    # The reply comes although 89 MB were never sent: the server stopped reading past the limit.
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    reply = json.loads(await asyncio.wait_for(reader.readexactly(length), 20))
    assert reply["errcode"] == 40006, reply
    writer.close()
    no_traceback(caplog)


async def rest_token(session: aiohttp.ClientSession, base: str, app) -> dict[str, str]:
    async with session.post(f"{base}/api/v1/token", json={"appid": app.appid, "secret": app.secret}) as response:
        return {"Authorization": f"Bearer {(await response.json())['access_token']}"}


INTERNAL = [
    "http://127.0.0.1:1/x",
    "http://localhost/x",
    "http://[::1]/x",
    "http://169.254.169.254/latest/meta-data",
    "http://10.0.0.7/hook",
    "https://192.168.1.1/hook",
    "http://[::ffff:127.0.0.1]/x",
    "http://0.0.0.0/x",
]


async def test_webhooks_on_internal_addresses_are_refused_by_default(make_server, session, caplog) -> None:
    caplog.set_level(logging.INFO)
    server = await make_server(webhook_private_addresses=False)
    app = await server.apps.create_app("shop")
    base = f"http://127.0.0.1:{server.http_port}"
    auth = await rest_token(session, base, app)
    for url in INTERNAL:
        for path, name in (("/api/v1/app", "webhook_url"), ("/api/v1/app/channel", "comment_webhook")):
            async with session.patch(f"{base}{path}", json={name: url}, headers=auth) as response:
                reply = await response.json()
                assert response.status == 400, (url, reply)
                assert reply["error"]["code"] == 200002
                assert "webhook_private_addresses" in reply["error"]["message"]
    stored = await server.store.get_app(app.appid)
    assert stored.webhook_url == "" and stored.comment_webhook == ""
    for path, name in (("/api/v1/app", "webhook_url"), ("/api/v1/app/channel", "comment_webhook")):
        async with session.patch(f"{base}{path}", json={name: "https://hooks.example.com/live"}, headers=auth) as r:
            assert r.status == 200, await r.text()
    # One set before the rule (or in the store by hand) is not delivered to either.
    stored.webhook_url = "http://127.0.0.1:1/x"
    await server.store.put_app(stored)
    answer = await server.webhooks.test(stored)
    assert answer.status is None and "private address" in answer.error
    no_traceback(caplog)


async def test_the_setting_allows_internal_webhooks(make_server, session) -> None:
    server = await make_server(webhook_private_addresses=True)
    app = await server.apps.create_app("shop")
    base = f"http://127.0.0.1:{server.http_port}"
    auth = await rest_token(session, base, app)
    async with session.patch(f"{base}/api/v1/app", json={"webhook_url": INTERNAL[0]}, headers=auth) as response:
        assert response.status == 200
        assert (await response.json())["webhook_url"] == INTERNAL[0]


async def test_a_name_resolving_to_loopback_is_not_reached() -> None:
    async with webhook_targets.session(False) as client:
        with pytest.raises(aiohttp.ClientError, match="no public address"):
            await client.get("http://localhost:1/x", allow_redirects=False)


async def closed_or_answered(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """What the server sent before closing (b"" if nothing), waiting at most ``timeout``."""
    try:
        return await asyncio.wait_for(reader.read(65536), timeout)
    except ConnectionError:
        return b""


async def test_a_bare_lf_request_is_answered_at_once(make_server) -> None:
    server = await make_server()
    for path in ("/healthz", "/live/shop/index.m3u8"):  # an aiohttp route and one the lean HLS path claims
        reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
        writer.write(f"GET {path} HTTP/1.1\nHost: x\n\n".encode())
        # Before the fix: no answer, closed only by the keep-alive sweep at 75-85 s.
        answer = await closed_or_answered(reader, 10)
        assert answer.startswith(b"HTTP/1."), answer
        writer.close()


async def trickle(
    writer: asyncio.StreamWriter, reader: asyncio.StreamReader, path: str = "/live/shop/index.m3u8"
) -> bool:
    """Send a request head a byte at a time; True when the server closed the connection."""
    for byte in f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode() + b"a" * 1000:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            return True
        if reader.at_eof():
            return True
        await asyncio.sleep(0.1)
    return False


async def test_slowloris_connections_are_closed_by_the_head_deadline(make_server, caplog) -> None:
    caplog.set_level(logging.INFO)
    server = await make_server(http_head_timeout_seconds=1.0)
    publisher = await publish(rtmp_url(server, "healthy"), seconds=30)
    try:
        await wait_live(server, "healthy")
        connections = [await asyncio.open_connection("127.0.0.1", server.http_port) for _ in range(300)]
        slow = [asyncio.create_task(trickle(writer, reader)) for reader, writer in connections]
        # A healthy viewer plays meanwhile, on a connection opened after the 300 (the figure).
        async with aiohttp.ClientSession() as session, session.get(flv_url(server, "healthy")) as response:
            assert response.status == 200
            received = 0
            while received < 50_000:
                received += len(await asyncio.wait_for(response.content.readany(), 10))
        # Each would take 100 s to send its head; the 1 s deadline (swept every 0.5 s) ends them all.
        closed = await asyncio.wait_for(asyncio.gather(*slow), 30)
        assert all(closed)
        for _, writer in connections:
            writer.close()
        assert server.http_limits.head_timeouts >= 300
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{server.http_port}/metrics") as response,
        ):
            assert "minilive_http_head_timeouts_total" in await response.text()
    finally:
        await publisher.stop()
    no_traceback(caplog)


async def answered(reader: asyncio.StreamReader) -> bytes:
    """One whole response (head and Content-Length body) from ``reader``."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    return head + await asyncio.wait_for(reader.readexactly(length), 10)


@pytest.mark.parametrize("path", ["/healthz", "/live/shop/index.m3u8"])  # aiohttp's path, the lean HLS path
async def test_the_head_deadline_holds_for_every_request_on_a_connection(make_server, caplog, path) -> None:
    """A client answered once, then trickling its next request's head, is closed by the head deadline
    (before: held for aiohttp's keep-alive time, 75 s), while one that is merely idle stays."""
    caplog.set_level(logging.INFO)
    server = await make_server(http_head_timeout_seconds=1.0)
    idle, slow = [await asyncio.open_connection("127.0.0.1", server.http_port) for _ in range(2)]
    for reader, writer in (idle, slow):
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert (await answered(reader)).startswith(b"HTTP/1.1 ")
    # Trickling its head would take 100 s; the 1 s deadline (swept every 0.5 s) ends it.
    assert await asyncio.wait_for(trickle(slow[1], slow[0], path), 30)
    assert server.http_limits.head_timeouts == 1
    # The idle connection, which started no head, is still served: idle is the keep-alive time's business.
    reader, writer = idle
    assert not reader.at_eof()
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert (await answered(reader)).startswith(b"HTTP/1.1 ")
    for _, w in (idle, slow):
        w.close()
    no_traceback(caplog)


async def test_the_metrics_port_has_the_http_ports_limits(make_server, caplog) -> None:
    """[metrics] port (a port of its own for Prometheus) holds the same head deadline and per-address cap
    as the HTTP port: before, it was a bare aiohttp site, where a trickled head was held for minutes."""
    caplog.set_level(logging.INFO)
    port = free_port()
    server = await make_server(
        http_head_timeout_seconds=1.0, http_max_connections_per_address=5, http_cap_exempt=[], port=port
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"minilive_http_head_timeouts_total" in await answered(reader)
    assert await asyncio.wait_for(trickle(writer, reader, "/metrics"), 30)  # the next head, trickled
    assert server.http_limits.head_timeouts == 1
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await closed_or_answered(reader, 10) == b""  # the address has 5 open
    assert server.http_limits.refused_per_address == 1
    for _, w in (*held, (reader, writer)):
        w.close()
    no_traceback(caplog)


async def test_keep_alive_idle_time_is_a_setting(make_server) -> None:
    """http_keepalive_seconds closes a kept-alive connection with nothing in flight, on both paths."""
    server = await make_server(http_keepalive_seconds=1.0)
    for path in ("/healthz", "/live/shop/index.m3u8"):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await answered(reader)
        assert await closed_or_answered(reader, 10) == b""  # closed after about 1 s, not 75
        writer.close()


async def test_connections_per_address_are_capped(make_server, caplog) -> None:
    caplog.set_level(logging.INFO)
    server = await make_server(http_max_connections_per_address=5, http_cap_exempt=[])
    held = [await asyncio.open_connection("127.0.0.1", server.http_port) for _ in range(5)]
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await closed_or_answered(reader, 10) == b""  # closed unanswered: the address has 5 open
    writer.close()
    assert server.http_limits.refused_per_address == 1
    for _, w in held:
        w.close()
    for _ in range(100):  # until the server has seen them close
        await asyncio.sleep(0.1)
        if len(server.http_site._by_address.get("127.0.0.1", ())) == 0:
            break
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{server.http_port}/metrics") as response,
    ):
        assert response.status == 200
        assert metric(await response.text(), "minilive_http_refused_per_address_total") == 1
    # Loopback is exempt by default (a reverse proxy on this host brings every client from it).
    local = await make_server(http_max_connections_per_address=5)
    held = [await asyncio.open_connection("127.0.0.1", local.http_port) for _ in range(6)]
    reader, writer = held[-1]
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await closed_or_answered(reader, 10)).startswith(b"HTTP/1.1 200")
    for _, w in held:
        w.close()
    assert local.http_limits.refused_per_address == 0
    no_traceback(caplog)


async def test_stream_stats_need_a_token_unless_public(make_server, session) -> None:
    server = await make_server(public_stats=False)
    app = await server.apps.create_app("shop")
    url = f"http://127.0.0.1:{server.http_port}/api/v1/streams"
    async with session.get(url) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == 41001
    async with session.get(url, headers={"Authorization": "Bearer forged"}) as response:
        assert response.status == 401
    auth = await rest_token(session, f"http://127.0.0.1:{server.http_port}", app)
    async with session.get(url, headers=auth) as response:
        assert response.status == 200
        assert (await response.json())["streams"] == []
    public = await make_server(public_stats=True)
    async with session.get(f"http://127.0.0.1:{public.http_port}/api/v1/streams") as response:
        assert response.status == 200


@pytest.mark.parametrize(
    "overrides",
    [
        {"http_cap_exempt": ["not-an-address"]},
        {"http_head_timeout_seconds": 0.0},
        {"http_max_connections_per_address": 0},
        {"http_keepalive_seconds": 0.0},
    ],
)
def test_http_limit_settings_are_checked(overrides) -> None:
    with pytest.raises(config.ConfigError, match="http_"):
        config.load(None, overrides)
