"""Origin and edges on one real redis-server: a stream published to one node plays from every other
one, over RTMP, HTTP-FLV and HLS, pulled once from its origin with a node credential."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from relay.cluster import credential
from relay.formats.flv import VIDEO, FlvReader
from tests.conftest import (
    REDIS_SERVER,
    flv_url,
    free_port,
    make_room,
    metric,
    needs_ffmpeg,
    probe_streams,
    publish,
    rtmp_url,
    wait_live,
    wait_redis,
)

pytestmark = needs_ffmpeg


@pytest.fixture
async def cluster_url(redis_url):
    """A Redis database of its own for each test."""
    url = redis_url.rsplit("/", 1)[0] + "/5"
    admin = aioredis.from_url(url)
    await admin.flushdb()
    await admin.aclose()
    return url


async def wait_for(condition, timeout: float = 10.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


async def test_a_stream_published_to_one_node_plays_from_another(make_server, cluster_url):
    a = await make_server(redis=cluster_url)
    b = await make_server(redis=cluster_url)
    pub = await publish(rtmp_url(a, "edge1"))
    try:
        await wait_live(a, "edge1")
        for url in (flv_url(b, "edge1"), rtmp_url(b, "edge1")):
            streams = await probe_streams(url)
            assert sorted(s["codec_name"] for s in streams) == ["aac", "h264"], url
        stats = b.hub.stats("live", "edge1")
        assert stats is not None and stats["relayed"], "node B pulls the stream rather than originating it"
        assert a.hub.stats("live", "edge1")["relayed"] is False
        # Both probes above went through one pull: node A served node B once at a time.
        assert b.cluster.cluster.counters["pulls_started"] == 1

        # HLS from B is A's HLS: the same playlist, segment names and bytes.
        async with aiohttp.ClientSession() as session:

            async def get(server, path: str) -> tuple[int, bytes]:
                url = f"http://127.0.0.1:{server.http_port}{path}"
                async with session.get(url, headers={"Connection": "close"}) as response:
                    return response.status, await response.read()

            status, playlist_b = await get(b, "/live/edge1/index.m3u8")
            assert status == 200, playlist_b
            segment = next(line for line in playlist_b.decode().splitlines() if line and not line.startswith("#"))
            status_a, body_a = await get(a, f"/live/edge1/{segment}")
            status_b, body_b = await get(b, f"/live/edge1/{segment}")
            assert status_a == status_b == 200
            assert body_a == body_b and len(body_a) > 1000
            assert b.cluster.gateway.proxied >= 2
            status, metrics = await get(b, "/metrics")
            assert metric(metrics.decode(), "minilive_cluster_pulls") == 1
            assert metric(metrics.decode(), "minilive_cluster_nodes") == 2
    finally:
        await pub.stop()


async def test_the_cluster_listener_refuses_requests_without_a_node_credential(make_server, cluster_url):
    a = await make_server(redis=cluster_url)
    pub = await publish(rtmp_url(a, "guarded"))
    try:
        await wait_live(a, "guarded")
        base = a.cluster.cluster.url
        path = "/live/guarded.flv"
        async with aiohttp.ClientSession() as session:
            for headers in (
                {},
                {credential.HEADER: credential.sign("not the secret", "intruder", path)},
                {credential.HEADER: credential.sign(a.cluster.cluster.secret, "n", "/live/other.flv")},
                {credential.HEADER: credential.sign(a.cluster.cluster.secret, "n", path, now=0)},  # expired
                {credential.HEADER: "x;y;z"},
            ):
                async with session.get(base + path, headers=headers) as response:
                    assert response.status == 403, headers
                    assert "node credential" in (await response.json())["error"]
            good = {credential.HEADER: credential.sign(a.cluster.cluster.secret, "n", path)}
            async with session.get(base + path, headers=good) as response:
                assert response.status == 200
                assert (await response.content.readexactly(3)) == b"FLV"
        assert a.cluster.listener.refused == 5
    finally:
        await pub.stop()


async def test_a_room_is_the_same_on_every_node_and_its_audience_counts_everywhere(make_server, cluster_url):
    a = await make_server(redis=cluster_url, allow_anonymous_publish=False)
    b = await make_server(redis=cluster_url, allow_anonymous_publish=False)
    app, room = await make_room(a)
    pub = await publish(a.urls.push_url(app, room))
    try:
        await wait_for(lambda: a.hub.has("live", room.stream_name), what="publish")
        play = b.urls.play_urls(app, room)["flv"]  # signed for the room, played at node B
        async with aiohttp.ClientSession() as session, session.get(play) as response:
            assert response.status == 200, await response.text()
            await response.content.readexactly(13)

            async def counted() -> bool:
                seen = [node.audience(room.stream_name)["total"] for node in (a, b)]
                return seen == [1, 1]

            # One viewer, at node B: both nodes count it (B at once, A after a heartbeat); the
            # pull that feeds B is not a viewer.
            await wait_for(counted, what="the audience seen the same on both nodes")
            assert a.hub.audience("live", room.stream_name) == {"relay": 1}
            status = [(await node.store.get_room(room.roomid)).live_status for node in (a, b)]
            assert status == [101, 101]
    finally:
        await pub.stop()


async def test_an_edge_stops_pulling_after_its_last_viewer_and_the_linger(make_server, cluster_url):
    a = await make_server(redis=cluster_url)
    b = await make_server(redis=cluster_url, cluster_linger_seconds=1.0)
    pub = await publish(rtmp_url(a, "linger"))
    try:
        await wait_live(a, "linger")
        await probe_streams(flv_url(b, "linger"))
        assert b.hub.has("live", "linger")
        await wait_for(lambda: not b.hub.has("live", "linger"), timeout=8, what="the edge's pull to stop")
        await wait_for(lambda: not a.hub.audience("live", "linger"), what="the origin to lose its relay viewer")
        assert a.hub.has("live", "linger"), "the origin goes on"
    finally:
        await pub.stop()


async def test_a_stream_nobody_publishes_is_404_on_every_node(make_server, cluster_url):
    a = await make_server(redis=cluster_url)
    b = await make_server(redis=cluster_url)
    async with aiohttp.ClientSession() as session:
        for node in (a, b):
            for path in ("/live/nothing.flv", "/live/nothing/index.m3u8"):
                async with session.get(f"http://127.0.0.1:{node.http_port}{path}") as response:
                    assert response.status == 404, path
    assert not b.cluster.cluster.pulls


class FlvWatcher:
    """An HTTP-FLV viewer that keeps every tag's kind and timestamp, and notes if its connection ends."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.tags: list[tuple[int, int]] = []
        self.closed = False
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        reader = FlvReader()
        async with aiohttp.ClientSession() as session, session.get(self.url) as response:
            assert response.status == 200, await response.text()
            async for chunk in response.content.iter_any():
                self.tags += [(tag.kind, tag.timestamp) for tag in reader.feed(chunk)]
        self.closed = True

    def video_after(self, count: int) -> list[int]:
        return [ts for kind, ts in self.tags[count:] if kind == VIDEO]

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, AssertionError):
            await self.task


async def test_viewers_of_an_edge_go_on_when_the_anchor_republishes_on_another_node(make_server, cluster_url):
    a = await make_server(redis=cluster_url, cluster_heartbeat_seconds=0.5)
    b = await make_server(redis=cluster_url, cluster_heartbeat_seconds=0.5)
    c = await make_server(redis=cluster_url, cluster_heartbeat_seconds=0.5)
    pub = await publish(rtmp_url(a, "moving"))
    watcher = None
    try:
        await wait_live(a, "moving")
        watcher = FlvWatcher(flv_url(c, "moving"))
        await wait_for(lambda: len(watcher.video_after(0)) > 25, what="video at the edge")
        await pub.stop()  # the anchor's connection to A breaks...
        await wait_for(lambda: not a.hub.stats("live", "moving")["live"], what="A to notice")
        before = len(watcher.tags)
        pub = await publish(rtmp_url(b, "moving"))  # ...and it comes back on B
        await wait_for(lambda: len(watcher.video_after(before)) > 50, timeout=15, what="video again at the edge")
        assert not watcher.closed, "the edge's viewer kept its connection"
        video = watcher.video_after(0)
        assert all(later >= earlier for earlier, later in itertools.pairwise(video)), "monotonic"
        holder = await b.cluster.registry.lookup("live/moving")
        assert holder is not None and holder.node == b.cluster.cluster.node, "B originates the stream now"
        # A, whose anchor left, pulls from B for the viewers it still serves (C's pull).
        await wait_for(lambda: a.hub.stats("live", "moving")["relayed"], what="A to become an edge")
    finally:
        if watcher is not None:
            await watcher.close()
        await pub.stop()


class RedisProcess:
    """A redis-server of the test's own, with an append-only file, that the test stops and starts again."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.folder)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_redis(self.process, self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait()
            self.process = None


@pytest.fixture
def own_redis(tmp_path: Path):  # type: ignore[no-untyped-def]
    if REDIS_SERVER is None:
        pytest.skip("redis-server not installed: run scripts/dev test, which installs it")
    redis = RedisProcess(tmp_path)
    redis.start()
    yield redis
    redis.stop()


async def test_with_redis_down_streams_flow_the_api_says_why_and_the_node_comes_back(make_server, own_redis):
    a = await make_server(redis=own_redis.url, cluster_heartbeat_seconds=0.5)
    b = await make_server(redis=own_redis.url, cluster_heartbeat_seconds=0.5)
    app, room = await make_room(a)
    pub = await publish(rtmp_url(a, "steady"), seconds=60)
    watcher = None
    try:
        await wait_live(a, "steady")
        watcher = FlvWatcher(flv_url(b, "steady"))
        await wait_for(lambda: len(watcher.tags) > 50, what="video at node B")
        own_redis.stop()
        stopped = asyncio.get_running_loop().time()
        await wait_for(lambda: not a.cluster.cluster.registry_ok, what="node A to notice")
        async with aiohttp.ClientSession() as session:
            token = f"http://127.0.0.1:{b.http_port}/cgi-bin/token?grant_type=client_credential"
            async with session.get(f"{token}&appid={app.appid}&secret={app.secret}") as response:
                body = await response.json()
                assert body["errcode"] == -1 and "unreachable" in body["errmsg"] and "redis at" in body["errmsg"], body
            async with session.get(f"http://127.0.0.1:{b.http_port}/api/v1/rooms/{room.roomid}/status") as response:
                assert response.status == 503
                assert "unreachable" in (await response.json())["error"]["message"]
        # A new publish is refused while the registry cannot say whether the stream is live elsewhere.
        decision = await a.cluster.cluster.claim("live", "newcomer")
        assert not decision.allowed and "registry is unreachable" in decision.reason
        # Ten seconds without Redis: the stream goes on, at the origin and at the edge.
        during = len(watcher.tags)
        await asyncio.sleep(max(0.0, 10 - (asyncio.get_running_loop().time() - stopped)))
        assert len(watcher.tags) > during + 200 and not watcher.closed
        own_redis.start()
        await wait_for(lambda: a.cluster.cluster.registry_ok and b.cluster.cluster.registry_ok, what="reconnection")
        # The entry that expired meanwhile is written again, and what was stored before is all there.
        holder = await b.cluster.registry.lookup("live/steady")
        assert holder is not None and holder.node == a.cluster.cluster.node
        assert (await b.store.get_room(room.roomid)).name == room.name
        assert (await a.cluster.cluster.claim("live", "newcomer")).allowed
    finally:
        if watcher is not None:
            await watcher.close()
        await pub.stop()


async def test_a_webrtc_session_ends_whichever_node_its_delete_lands_on(make_server, cluster_url):
    from tests.test_webrtc import delete, webrtc_settings, whip_publish

    a = await make_server(redis=cluster_url, webrtc=webrtc_settings())
    b = await make_server(redis=cluster_url, webrtc=webrtc_settings())
    pc, resource = await whip_publish(a, "webcam")
    try:
        await wait_live(a, "webcam", timeout=15)
        assert sorted(s["codec_name"] for s in await probe_streams(flv_url(b, "webcam"))) == ["aac", "h264"]
        at_b = resource.replace(f":{a.http_port}/", f":{b.http_port}/")
        await wait_for(lambda: b.cluster.registry.lookup(f"webrtc/{resource.rsplit('/', 1)[1]}"), what="registration")
        assert await delete(at_b) == 200, "node B forwards the DELETE to node A, which holds the session"
        assert not a.webrtc.registry.sessions
        await wait_for(lambda: not a.hub.stats("live", "webcam")["live"], what="the publisher to leave")
        assert await delete(at_b) == 404
    finally:
        await pc.close()


async def test_edges_chain_and_a_loop_of_origin_settings_ends(make_server, cluster_url):
    a = await make_server(redis=cluster_url)
    b = await make_server(redis=cluster_url)
    c = await make_server(redis=cluster_url, cluster_origin=b.cluster.cluster.url)  # a second tier: pulls from B
    pub = await publish(rtmp_url(a, "tiers"))
    try:
        await wait_live(a, "tiers")
        assert sorted(s["codec_name"] for s in await probe_streams(flv_url(c, "tiers"))) == ["aac", "h264"]
        assert c.cluster.cluster.pulls["live/tiers"].upstream == b.cluster.cluster.url
        assert b.hub.stats("live", "tiers")["relayed"], "B pulls from A for C"
        status, _ = await http_get(c, "/live/tiers/index.m3u8")
        assert status == 200, "C's HLS comes from A through B"

        # Two edges whose origin settings point at each other: a request ends in a 404, not a loop.
        d = await make_server(redis=cluster_url)
        e = await make_server(redis=cluster_url, cluster_origin=d.cluster.cluster.url)
        d.settings.cluster.origin = e.cluster.cluster.url
        status, _ = await http_get(e, "/live/loop.flv")
        assert status == 404
        await wait_for(lambda: not d.cluster.cluster.pulls and not e.cluster.cluster.pulls, what="the pulls to stop")
    finally:
        await pub.stop()


async def http_get(server, path: str) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{server.http_port}{path}") as r:
        return r.status, await r.read()


async def test_a_node_killed_mid_live_and_the_anchor_on_another_node_keep_a_third_nodes_viewers(redis_url, tmp_path):
    """Three `minilive serve --redis` processes: the origin is killed with SIGKILL (it never
    deregisters), the anchor pushes again to another node, and a third node's viewer goes on."""
    from tests.test_cli import start_cli, wait_http
    from tests.test_workers import Workers

    url = redis_url.rsplit("/", 1)[0] + "/6"
    admin = aioredis.from_url(url)
    await admin.flushdb()
    await admin.aclose()
    nodes = []
    for name in "abc":
        rtmp, http = free_port(), free_port()
        args = ["--redis", url, "--allow-anonymous-publish", "--public-stats", "--host", "127.0.0.1"]
        args += ["--data-dir", str(tmp_path / name)]
        nodes.append((Workers(await start_cli(*args, "--rtmp-port", str(rtmp), "--http-port", str(http))), rtmp, http))
    (a, a_rtmp, a_http), (_, b_rtmp, _), (_, _, c_http) = nodes
    pub = watcher = None
    try:
        for _, _, http in nodes:
            await wait_http(http, timeout=20)
        pub = await publish(f"rtmp://127.0.0.1:{a_rtmp}/live/phoenix", seconds=60)

        async def live_at_a() -> bool:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{a_http}/api/v1/streams") as response,
            ):
                return any(s["name"] == "phoenix" and s["live"] for s in (await response.json())["streams"])

        await wait_for(live_at_a, what="the anchor at node A")
        watcher = FlvWatcher(f"http://127.0.0.1:{c_http}/live/phoenix.flv")
        await wait_for(lambda: len(watcher.video_after(0)) > 25, what="video at node C")
        a.process.kill()  # no deregistration: node A's entry lives on until its TTL
        await pub.stop()
        before = len(watcher.tags)
        pub = await publish(f"rtmp://127.0.0.1:{b_rtmp}/live/phoenix", seconds=60)
        await wait_for(lambda: len(watcher.video_after(before)) > 50, timeout=20, what="video again at node C")
        assert not watcher.closed, "node C's viewer kept its connection"
        video = watcher.video_after(0)
        assert all(later >= earlier for earlier, later in itertools.pairwise(video)), "monotonic timestamps"
    finally:
        if watcher is not None:
            await watcher.close()
        if pub is not None:
            await pub.stop()
        for workers, _, _ in nodes:
            await workers.stop()


async def test_status_webhooks_fire_once_while_the_anchor_moves_between_nodes(make_server, cluster_url):
    from tests.test_webhooks import Receiver

    hook = Receiver([])
    await hook.start()
    a = await make_server(redis=cluster_url, allow_anonymous_publish=False, cluster_heartbeat_seconds=0.5)
    b = await make_server(redis=cluster_url, allow_anonymous_publish=False, cluster_heartbeat_seconds=0.5)
    app, room = await make_room(a)
    app = await a.apps.update_app(app, {"webhook_url": hook.url})
    pub = await publish(a.urls.push_url(app, room))
    watcher = None
    try:
        await wait_for(lambda: a.hub.has("live", room.stream_name), what="the anchor at A")
        watcher = FlvWatcher(b.urls.play_urls(app, room)["flv"])  # B pulls the stream from A
        await wait_for(lambda: len(watcher.tags) > 20, what="video at B")
        await pub.stop()
        await wait_for(lambda: len(hook.calls) >= 2, what="the interruption")
        pub = await publish(b.urls.push_url(app, room))  # the anchor comes back at B
        await wait_for(lambda: len(hook.calls) >= 3, what="live again")
        await asyncio.sleep(2.0)  # any duplicate, from the node that pulls or the one that lost the stream
        statuses = [body["live_status"] for _, body in hook.calls if body["event"] == "status"]
        assert statuses == [101, 106, 101], hook.calls
    finally:
        if watcher is not None:
            await watcher.close()
        await pub.stop()
        await hook.stop()


async def test_a_crowd_asking_for_a_stream_not_live_yet_does_not_exhaust_the_registry(make_server, cluster_url):
    """Found by the bench: 400 players polling for a stream before its anchor made a lookup each, took
    every Redis connection, and the anchor's publish was refused. Lookups of one stream are one call."""
    a = await make_server(redis=cluster_url)
    busy = most = 0
    lookup = a.cluster.registry.lookup

    async def counted(key: str):  # type: ignore[no-untyped-def]
        nonlocal busy, most
        busy += 1
        most = max(most, busy)
        try:
            return await lookup(key)
        finally:
            busy -= 1

    a.cluster.registry.lookup = counted
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def play() -> int:
            async with session.get(flv_url(a, "soon")) as response:
                return response.status

        for _ in range(3):
            assert set(await asyncio.gather(*(play() for _ in range(400)))) == {404}
    assert most == 1, f"{most} registry lookups of one stream at once"
    assert (await a.cluster.cluster.claim("live", "soon")).allowed
    assert a.cluster.cluster.counters["registry_errors"] == 0
