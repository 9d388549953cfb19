"""`minilive serve --workers 2` with real media: a stream published to one worker (its origin) plays
from both, whichever a viewer lands on; a killed worker costs only its own viewers; HLS is one
playlist whichever worker answers; and a replay survives its origin worker's SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
from types import SimpleNamespace

import aiohttp
import pytest

from api.apps import Apps
from api.rooms import Rooms, RoomSettings
from api.store.sqlite import SqliteStore
from api.urls import Urls
from relay.formats.flv import VIDEO, FlvReader
from tests.conftest import make_room, needs_ffmpeg, probe_streams, publish
from tests.test_workers import start_workers

# Each test runs a supervisor and its worker processes sharing the ports: which worker accepts a
# connection depends on which is idle, so they run alone, after the parallel part (scripts/dev test).
pytestmark = [needs_ffmpeg, pytest.mark.serial]


async def fresh_get(port: int, path: str) -> tuple[int, bytes]:
    """GET on a connection of its own (the kernel picks a worker for each); of a live FLV stream, the
    first bytes."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        if path.endswith(".flv") and response.status == 200:
            return response.status, await response.content.readexactly(13)
        return response.status, await response.read()


async def ok(port: int, path: str) -> bool:
    return (await fresh_get(port, path))[0] == 200


async def per_worker(port: int, path: str, workers: int = 2, timeout: float = 10) -> dict[str, dict]:
    """``path``'s JSON from each worker (told apart by the cluster node in /api/v1/streams)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen: dict[str, dict] = {}
    while len(seen) < workers:
        assert loop.time() < deadline, f"only {len(seen)} workers answered {path}"
        status, body = await fresh_get(port, path)
        if status == 200:
            data = json.loads(body)
            seen[data["cluster"]["node"]] = data
    return seen


async def stream_view(port: int, name: str) -> dict[str, dict]:
    """Each worker's view of stream ``live/name``: node -> its entry in /api/v1/streams (or {})."""
    views = await per_worker(port, "/api/v1/streams")
    return {node: next((s for s in data["streams"] if s["name"] == name), {}) for node, data in views.items()}


async def wait_for(condition, timeout: float = 15.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert loop.time() < deadline, f"{what} did not happen within {timeout} s"
        await asyncio.sleep(0.1)


class Watcher:
    """An HTTP-FLV viewer on a connection of its own: every video timestamp, and whether it was cut."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.video: list[int] = []
        self.closed = False
        self.failed = ""
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        reader = FlvReader()
        try:
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as session, session.get(self.url) as response:
                if response.status != 200:
                    self.failed = f"HTTP {response.status}: {await response.text()}"
                    return
                async for chunk in response.content.iter_any():
                    self.video += [tag.timestamp for tag in reader.feed(chunk) if tag.kind == VIDEO]
        except (aiohttp.ClientError, ConnectionError) as exc:
            self.failed = repr(exc)
        finally:
            self.closed = True

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def origin_and_edge(port: int, name: str) -> tuple[str, str]:
    views = await stream_view(port, name)
    origin = [node for node, s in views.items() if s and not s["relayed"]]
    assert len(origin) == 1, views
    (edge,) = views.keys() - set(origin)
    return origin[0], edge


def pid_of(node: str) -> int:
    return int(node.rpartition("/")[2].split(".")[0])


async def test_fifty_viewers_play_whichever_worker_they_land_on(tmp_path):
    workers, rtmp, http = await start_workers(tmp_path)
    pub = await publish(f"rtmp://127.0.0.1:{rtmp}/live/fifty", seconds=60)
    watchers: list[Watcher] = []
    try:
        await wait_for(lambda: ok(http, "/live/fifty.flv"), what="the stream")
        watchers = [Watcher(f"http://127.0.0.1:{http}/live/fifty.flv") for _ in range(50)]
        await wait_for(lambda: all(len(w.video) >= 10 or w.closed for w in watchers), what="50 viewers playing")
        assert not [w.failed for w in watchers if w.closed], "every viewer plays"
        views = await stream_view(http, "fifty")
        counts = {node: s.get("viewers_by_protocol", {}).get("http-flv", 0) for node, s in views.items()}
        assert sum(counts.values()) == 50 and all(counts.values()), f"viewers on both workers: {counts}"
        origin, _ = await origin_and_edge(http, "fifty")
        assert views[origin]["viewers_by_protocol"].get("relay") == 1, "the edge worker pulls the stream once"
        for url in (f"rtmp://127.0.0.1:{rtmp}/live/fifty", f"http://127.0.0.1:{http}/live/fifty.flv"):
            assert sorted(s["codec_name"] for s in await probe_streams(url)) == ["aac", "h264"]
    finally:
        for watcher in watchers:
            await watcher.close()
        await pub.stop()
        await workers.stop()


async def watchers_on_both(http: int, name: str, count: int = 16) -> tuple[list[Watcher], str, str, dict[str, int]]:
    """Viewers of ``live/name`` until both workers have some: (viewers, origin, edge, viewers per node)."""
    watchers: list[Watcher] = []
    for _ in range(4):
        watchers += [Watcher(f"http://127.0.0.1:{http}/live/{name}.flv") for _ in range(count)]
        await wait_for(lambda ws=watchers: all(len(w.video) >= 10 or w.closed for w in ws), what="viewers playing")
        assert not [w.failed for w in watchers if w.closed]
        views = await stream_view(http, name)
        counts = {node: s.get("viewers_by_protocol", {}).get("http-flv", 0) for node, s in views.items()}
        if all(counts.values()):
            origin, edge = await origin_and_edge(http, name)
            return watchers, origin, edge, counts
    raise AssertionError(f"the kernel put every viewer on one worker: {counts}")


def monotonic(timestamps: list[int]) -> bool:
    return all(b >= a for a, b in itertools.pairwise(timestamps))


@pytest.mark.parametrize("victim", ["origin", "edge"])
async def test_a_killed_worker_costs_only_its_own_viewers(tmp_path, victim):
    workers, rtmp, http = await start_workers(tmp_path)
    url = f"rtmp://127.0.0.1:{rtmp}/live/survive"
    pub = await publish(url, seconds=60)
    watchers: list[Watcher] = []
    try:
        await wait_for(lambda: ok(http, "/live/survive.flv"), what="the stream")
        watchers, origin, edge, counts = await watchers_on_both(http, "survive")
        killed = origin if victim == "origin" else edge
        os.kill(pid_of(killed), signal.SIGKILL)
        await wait_for(lambda: sum(w.closed for w in watchers) >= counts[killed], what="the victim's viewers to drop")
        await asyncio.sleep(1.0)
        assert sum(w.closed for w in watchers) == counts[killed], "no viewer of the other worker dropped"
        assert f"(pid {pid_of(killed)}) died (signal 9); restarting" in workers.log
        if victim == "origin":
            await pub.stop()  # its connection went with the worker: the anchor pushes again
            pub = await publish(url, seconds=60)
        alive = [w for w in watchers if not w.closed]
        marks = [len(w.video) for w in alive]
        await wait_for(
            lambda: all(len(w.video) > mark + 25 for w, mark in zip(alive, marks, strict=True)),
            timeout=20,
            what="video again for the viewers that stayed",
        )
        assert not any(w.closed for w in alive), "they never reconnected"
        assert all(monotonic(w.video) for w in alive), "timestamps went on, never back"
        # The viewers that dropped can come back, wherever they land (the restarted worker too).
        again = [Watcher(f"http://127.0.0.1:{http}/live/survive.flv") for _ in range(8)]
        watchers += again
        await wait_for(lambda: all(len(w.video) >= 10 for w in again), what="the dropped viewers to play again")
    finally:
        for watcher in watchers:
            await watcher.close()
        await pub.stop()
        await workers.stop()


def media_segments(playlist: str) -> dict[int, str]:
    """Media sequence number -> segment URI, of an HLS media playlist."""
    lines = playlist.splitlines()
    first = int(next(line for line in lines if line.startswith("#EXT-X-MEDIA-SEQUENCE:")).split(":")[1])
    uris = [line for line in lines if line and not line.startswith("#")]
    return {first + i: uri for i, uri in enumerate(uris)}


async def test_hls_is_one_playlist_whichever_worker_answers(tmp_path):
    workers, rtmp, http = await start_workers(tmp_path)
    pub = await publish(f"rtmp://127.0.0.1:{rtmp}/live/same", seconds=60, gop=25)
    try:
        await wait_for(lambda: ok(http, "/live/same/index.m3u8"), what="a playlist")
        seen: dict[int, str] = {}
        for _ in range(30):
            status, body = await fresh_get(http, "/live/same/index.m3u8")
            assert status == 200, body
            for msn, uri in media_segments(body.decode()).items():
                assert seen.setdefault(msn, uri) == uri, f"segment {msn} named two ways"
            await asyncio.sleep(0.1)
        assert len(seen) >= 2
        for uri in list(seen.values())[-2:]:
            bodies = {(await fresh_get(http, f"/live/same/{uri}"))[1] for _ in range(6)}
            assert len(bodies) == 1 and len(next(iter(bodies))) > 1000, "the same bytes from every worker"
        views = await per_worker(http, "/api/v1/streams")
        proxied = {node: data["cluster"]["hls_proxied"] for node, data in views.items()}
        assert sorted(proxied.values())[0] == 0 and sorted(proxied.values())[1] > 0, proxied
    finally:
        await pub.stop()
        await workers.stop()


async def test_a_replay_survives_its_origin_worker_killed_mid_live(tmp_path):
    store = SqliteStore(tmp_path / "minilive.db", shared_events=True)
    await store.open()
    try:
        services = SimpleNamespace(store=store, apps=Apps(store, RoomSettings()), rooms=Rooms(store, RoomSettings()))
        app, room = await make_room(services, closeReplay=0)
        workers, rtmp, http = await start_workers(tmp_path)
        urls = Urls(RoomSettings())
        urls.rtmp_base = f"rtmp://127.0.0.1:{rtmp}"
        pub = await publish(urls.push_url(app, room), seconds=60)
        try:
            try:
                recording = await wait_for(lambda: store.list_replays(room.roomid), what="the recording to start")
            except AssertionError:
                print(workers.log)
                raise
            assert [r.status for r in recording] == ["recording"]
            await asyncio.sleep(6)  # a few segments on disk
            origin, _ = await origin_and_edge(http, room.stream_name)
            os.kill(pid_of(origin), signal.SIGKILL)

            async def finalized() -> list:
                replays = await store.list_replays(room.roomid)
                return replays if all(r.status != "recording" for r in replays) else []

            replays = await wait_for(finalized, timeout=30, what="the replay to be finalized")
            assert [r.status for r in replays] == ["ready"], "one replay, recorded once, not lost"
            assert replays[0].duration >= 4

            async def waiting() -> bool:  # the status sweep (every 5 s) finds the room's node gone
                return (await store.get_room(room.roomid)).live_status == 106

            await wait_for(waiting, timeout=12, what="the room to wait for its anchor (106)")
        finally:
            await pub.stop()
            await workers.stop()
    finally:
        await store.close()
