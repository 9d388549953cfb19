"""The soak (issue 16): one minilive under a changing load for a long time, watched for leaks.

    python -m bench.soak [--minutes 30] [--publishers 20] [--viewers 300] [--whep 5]
    python -m bench.soak --plot bench/results/soak-DATE.json    # re-draw a saved run's PNG

A fresh ``minilive serve`` (bench.peers: generated config, loopback ports, data under
bench/.cache/soak/) and one driver process (this one, uvloop) that does what a busy day does:

- ``--publishers`` rooms, made through the REST API, each with a publisher (bench.load's paced RTMP
  publisher of the fixture) that drops and comes back, is taken over by a second connection on the
  same stream, is paused and resumed, and is ended (the next room of that slot is then created). Each
  slot acts in turn and, once its action has settled, checks the room's ``live_status`` against
  what it did: 101 live, 105 paused, 106 anchor away, 103 ended.
- ``--viewers`` viewers kept joining and leaving at random over RTMP, HTTP-FLV, WS-FLV and HLS, and
  ``--whep`` WebRTC viewers at a time (aiortc costs a lot of CPU per viewer).
- Replays on in ``--replay-rooms`` of the rooms; every replay that is ready is ffprobed (its MP4 and
  its VOD HLS) and, ``--replay-expiry`` seconds after it was made, deleted through the API (the
  app's retention is counted in days: the API's delete stands in for it) and checked gone.
- Every 10 s: the server's RSS, open fds, threads (/proc) and asyncio tasks
  (``GET /api/v1/debug/runtime``, admin token), the driver's counts, and "Traceback" in the log.

At the end the verdict: no traceback, the server alive, every replay playable, every status as
the driver left it, and no growth of RSS, fds or tasks from minute 5 (or the first third of a
shorter run) to the end beyond noise. Written to bench/results/soak-DATE.json (series and verdict)
and a PNG of RSS and fds over time, drawn with Pillow (already a dependency: a plot of two lines does
not need matplotlib and its build on this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from api.errors import ACCESS_TOKEN_EXPIRED
from bench import fixture, peers
from bench.hls_client import HlsClient
from bench.load import FlvViewer, PublisherResult, Source, Timeline, publish
from bench.replay import _app, _room, access_token
from ingest.rtmp.client import connect

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLE_EVERY = 10.0
BASELINE_MINUTE = 5.0
# Growth from the baseline to the end that the verdict calls a leak: more than both the share and the
# absolute amount (a few hundred viewers coming and going move fds by tens and RSS by megabytes).
GROWTH_LIMITS = {"rss_mb": (0.15, 40.0), "fds": (0.2, 60.0), "tasks": (0.2, 200.0)}
SETTLE = 3.0  # seconds after an action before its room's status is checked
STATUS_PATIENCE = 10.0  # how long a status may take to become what the driver expects
VIEWER_PROTOCOLS = {"rtmp": 3, "flv": 3, "ws-flv": 2, "hls": 2}  # weights of the non-WebRTC viewers
REST_ROOM = {
    "name": "soak room",
    "anchor_name": "soak",
    "anchor_wechat": "soak_wx",
    "type": 1,
}


def _log(message: str) -> None:
    print(f"{datetime.now():%H:%M:%S} {message}", file=sys.stderr, flush=True)


@dataclass(slots=True)
class Counts:
    """What the driver did and saw; sampled into the series as it goes."""

    joins: Counter[str] = field(default_factory=Counter)
    leaves: Counter[str] = field(default_factory=Counter)
    join_failures: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)  # viewers the server closed before they left
    actions: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0
    publisher_errors: int = 0
    # Publishers whose connection ended without the driver's doing (then started again, as an anchor's app does).
    publishers_lost: list[str] = field(default_factory=list)
    api_errors: int = 0
    status_mismatches: list[str] = field(default_factory=list)
    replays_checked: int = 0
    replays_unplayable: list[str] = field(default_factory=list)
    replays_deleted: int = 0
    replays_not_gone: list[str] = field(default_factory=list)

    def errors(self) -> int:
        return (
            sum(self.join_failures.values())
            + self.publisher_errors
            + len(self.publishers_lost)
            + self.api_errors
            + len(self.status_mismatches)
            + len(self.replays_unplayable)
            + len(self.replays_not_gone)
        )


# ------------------------------------------------------------------ the API


def _error_code(body: bytes) -> int | None:
    try:
        return json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


class Api:
    """The REST API as the app's back end calls it (and the admin's debug endpoint)."""

    def __init__(self, session: aiohttp.ClientSession, app: dict[str, str], admin: str, counts: Counts) -> None:
        self.session = session
        self.app = app
        self.headers: dict[str, str] = {}  # the app's access token: renew() gets one
        self.admin = {"Authorization": f"Bearer {admin}"}
        self.counts = counts
        self.renewals = 0

    async def call(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        for attempt in range(2):
            async with self.session.request(method, path, headers=self.headers, **kwargs) as response:
                body = await response.read()
                status = response.status
            if status == expect:
                return json.loads(body) if body else None
            if attempt == 0 and status == 401 and _error_code(body) == ACCESS_TOKEN_EXPIRED:
                # The access token lives 7200 s, as the official one: a back end gets a new one then.
                await self.renew()
                continue
            self.counts.api_errors += 1
            raise RuntimeError(f"{method} {path}: HTTP {status} {body[:300]!r}")

    async def renew(self) -> None:
        try:
            token = await access_token(self.session, self.app)
        except RuntimeError:
            self.counts.api_errors += 1
            raise
        self.headers = {"Authorization": f"Bearer {token}"}
        self.renewals += 1

    async def runtime(self) -> dict[str, Any]:
        async with self.session.get("/api/v1/debug/runtime", headers=self.admin) as response:
            return await response.json()


# ------------------------------------------------------------------ publishers and rooms


@dataclass(slots=True)
class Publisher:
    """One RTMP connection publishing the fixture until stopped."""

    task: asyncio.Task[None]
    result: PublisherResult
    timeline: Timeline

    def stop(self) -> None:
        self.timeline.end = 0.0  # bench.load.publish closes at its next frame

    async def stopped(self) -> None:
        self.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.task), 5)


@dataclass(slots=True)
class Slot:
    """A room and its anchor, acted on in turn by :meth:`Driver.run_slot`."""

    index: int
    replay: bool
    roomid: int = 0
    stream: str = ""  # the stream's name
    push_stream: str = ""  # what the publisher asks for: the name with the signed query
    publisher: Publisher | None = None
    expected: int = 102
    ended_rooms: list[int] = field(default_factory=list)
    # Live and not in the middle of an action: viewers join it, and one that fails is an error.
    watchable: bool = False

    def playable(self) -> bool:
        return self.watchable


class Driver:
    def __init__(self, server: peers.Server, api: Api, source: Source, options: argparse.Namespace) -> None:
        self.server = server
        self.api = api
        self.source = source
        self.options = options
        self.counts = api.counts
        self.rtmp_url = server.rtmp_url()
        self.http = f"http://127.0.0.1:{server.http_port}"
        self.end = time.monotonic() + options.minutes * 60
        self.slots = [Slot(i, i < options.replay_rooms) for i in range(options.publishers)]
        self.media_id = ""
        self.viewers: Counter[str] = Counter()  # watching now, by protocol
        self.replays_seen: dict[str, dict[str, Any]] = {}  # replay_id -> its last listing
        self.replays_done: set[str] = set()  # checked and deleted

    def running(self) -> bool:
        return time.monotonic() < self.end

    # -- rooms

    async def new_room(self, slot: Slot) -> None:
        now = int(time.time())
        body = {
            **REST_ROOM,
            "cover_img": self.media_id,
            "share_img": self.media_id,
            "feeds_img": self.media_id,
            "start_time": now + 900,
            "end_time": now + 900 + 11 * 3600,
            "close_replay": 0 if slot.replay else 1,
        }
        room = await self.api.call("POST", "/api/v1/rooms", 201, json=body)
        slot.roomid = room["roomid"]
        push = (await self.api.call("GET", f"/api/v1/rooms/{slot.roomid}/push_url"))["push_url"]
        slot.push_stream = push.rsplit("/", 1)[1]
        slot.stream = slot.push_stream.split("?", 1)[0]
        slot.expected = 102

    def start_publisher(self, slot: Slot) -> Publisher:
        timeline = Timeline(0.0, float("inf"))
        result = PublisherResult(slot.push_stream)
        task = asyncio.ensure_future(publish(self.rtmp_url, result, self.source, 0.0, timeline, None, None, 10.0))
        return Publisher(task, result, timeline)

    async def check_status(self, slot: Slot, what: str) -> None:
        """After ``what``, the room's status must become what the driver expects."""
        deadline = time.monotonic() + STATUS_PATIENCE
        while True:
            room = await self.api.call("GET", f"/api/v1/rooms/{slot.roomid}")
            if room["live_status"] == slot.expected:
                return
            if time.monotonic() > deadline:
                message = (
                    f"room {slot.roomid} after {what}: live_status {room['live_status']}, expected {slot.expected}"
                )
                self.counts.status_mismatches.append(message)
                _log(message)
                return
            await asyncio.sleep(0.5)

    async def go_live(self, slot: Slot, what: str) -> None:
        slot.publisher = self.start_publisher(slot)
        slot.expected = 101
        await asyncio.sleep(SETTLE)
        if slot.publisher.task.done() and slot.publisher.result.error:
            self.counts.publisher_errors += 1
            _log(f"room {slot.roomid}: publisher failed: {slot.publisher.result.error}")
        await self.check_status(slot, what)

    async def revive(self, slot: Slot) -> None:
        """A publisher whose connection ended without the driver's doing (a publish that timed out on a
        starved machine, a connection the server closed) is counted and started again, so that what
        the driver expects stays what it did."""
        publisher = slot.publisher
        if publisher is None or not publisher.task.done():
            return
        message = f"room {slot.roomid}: publisher lost: {publisher.result.error or 'ended'}"
        self.counts.publishers_lost.append(message)
        _log(message)
        slot.publisher = self.start_publisher(slot)
        self.counts.reconnects += 1
        await asyncio.sleep(SETTLE)
        await self.check_status(slot, "a lost publisher's return")

    async def run_slot(self, slot: Slot) -> None:
        await self.new_room(slot)
        await self.go_live(slot, "first publish")
        slot.watchable = slot.expected == 101
        actions = ["drop", "takeover", "pause", "end", "stay"]
        weights = [4, 2, 2, 1, 3]
        while self.running():
            await asyncio.sleep(random.uniform(0.5, 1.5) * self.options.action_every)
            if not self.running():
                break
            await self.revive(slot)
            action = random.choices(actions, weights)[0]
            self.counts.actions[action] += 1
            slot.watchable = action == "stay" and slot.watchable
            try:
                await getattr(self, f"_{action}")(slot)
            except Exception as exc:  # an API failure is counted in Api.call; the slot goes on
                _log(f"room {slot.roomid}: {action} failed: {type(exc).__name__}: {exc}")
            slot.watchable = slot.publisher is not None and slot.expected == 101

    async def _stay(self, slot: Slot) -> None:
        await self.check_status(slot, "nothing")

    async def _drop(self, slot: Slot) -> None:
        """The anchor's network drops; it comes back after a few seconds."""
        if slot.publisher is not None:
            await slot.publisher.stopped()
        slot.publisher = None
        if slot.expected == 101:
            slot.expected = 106
        await asyncio.sleep(random.uniform(SETTLE, 3 * SETTLE))
        await self.check_status(slot, "drop")
        self.counts.reconnects += 1
        if slot.expected == 105:  # a paused room stays paused when its anchor returns
            slot.publisher = self.start_publisher(slot)
            await asyncio.sleep(SETTLE)
            await self.check_status(slot, "reconnect while paused")
        else:
            await self.go_live(slot, "reconnect")

    async def _takeover(self, slot: Slot) -> None:
        """A second connection publishes the same stream while the first is still on (a phone that
        reconnected before the server noticed its old connection was dead)."""
        old = slot.publisher
        slot.publisher = self.start_publisher(slot)
        if old is not None:
            # The server closes the old connection once the new one publishes.
            await asyncio.wait([old.task], timeout=STATUS_PATIENCE)
            if not old.task.done():
                self.counts.publisher_errors += 1
                new = slot.publisher.result.error or "publishing"
                _log(f"room {slot.roomid}: the old publisher was not taken over (the new one: {new})")
            await old.stopped()
        else:
            await asyncio.sleep(SETTLE)
        self.counts.reconnects += 1
        if slot.expected == 106:
            slot.expected = 101
        await self.check_status(slot, "takeover")

    async def _pause(self, slot: Slot) -> None:
        if slot.expected != 101:
            return
        await self.api.call("POST", f"/api/v1/rooms/{slot.roomid}/pause")
        slot.expected = 105
        await asyncio.sleep(SETTLE)
        await self.check_status(slot, "pause")
        await asyncio.sleep(random.uniform(5, 20))
        await self.api.call("POST", f"/api/v1/rooms/{slot.roomid}/resume")
        slot.expected = 101 if slot.publisher is not None else 106
        await asyncio.sleep(SETTLE)
        await self.check_status(slot, "resume")

    async def _end(self, slot: Slot) -> None:
        await self.api.call("POST", f"/api/v1/rooms/{slot.roomid}/end")
        slot.expected = 103
        await asyncio.sleep(SETTLE)
        await self.check_status(slot, "end")
        if slot.publisher is not None:
            await slot.publisher.stopped()
            slot.publisher = None
        slot.ended_rooms.append(slot.roomid)
        await self.new_room(slot)
        await self.go_live(slot, "the next room's first publish")

    # -- viewers

    async def run_viewers(self) -> None:
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30))
        running: set[asyncio.Task[None]] = set()
        protocols, weights = list(VIEWER_PROTOCOLS), list(VIEWER_PROTOCOLS.values())
        try:
            while self.running():
                live = [slot for slot in self.slots if slot.playable()]
                want_whep = self.viewers["whep"] < self.options.whep
                others = sum(n for p, n in self.viewers.items() if p != "whep")
                if live and (others < self.options.viewers or want_whep):
                    protocol = "whep" if want_whep else random.choices(protocols, weights)[0]
                    # Each leaves by the end of the run, when the driver closes its HTTP session.
                    lifetime = min(random.uniform(10, 2 * self.options.viewer_seconds), self.end - time.monotonic())
                    task = asyncio.ensure_future(self.watch(random.choice(live), protocol, lifetime, http))
                    running.add(task)
                    task.add_done_callback(running.discard)
                    # A few joins a second: the population turns over without a stampede.
                    await asyncio.sleep(0.02 if others < self.options.viewers / 2 else 0.2)
                else:
                    await asyncio.sleep(0.5)
            await asyncio.wait(running, timeout=30) if running else None
        finally:
            await http.close()

    async def watch(self, slot: Slot, protocol: str, lifetime: float, http: aiohttp.ClientSession) -> None:
        self.viewers[protocol] += 1
        self.counts.joins[protocol] += 1
        stream = slot.stream
        try:
            closed_early = await getattr(self, "_" + protocol.replace("-", "_"))(stream, lifetime, http)
            if closed_early and slot.stream == stream and slot.playable():
                self.counts.dropped[protocol] += 1
        except Exception as exc:
            # A stream that went away as the viewer came (a drop, an end) is no fault of the server's.
            if slot.stream == stream and slot.playable():
                self.counts.join_failures[protocol] += 1
                if self.counts.join_failures[protocol] <= 5:
                    _log(f"{protocol} viewer of {stream} failed: {type(exc).__name__}: {exc}")
        finally:
            self.viewers[protocol] -= 1
            self.counts.leaves[protocol] += 1

    async def _rtmp(self, stream: str, lifetime: float, http: aiohttp.ClientSession) -> bool:
        client = await connect(self.rtmp_url, timeout=10)
        try:
            client.on_message = lambda message: client.stop_parsing() if message.type_id == 9 else None
            await client.play(stream, timeout=10)
            done, _ = await asyncio.wait([client.closed], timeout=lifetime)
            return bool(done)
        finally:
            client.close()

    async def _flv(self, stream: str, lifetime: float, http: aiohttp.ClientSession) -> bool:
        viewer = FlvViewer(f"{self.http}/live/{stream}.flv", lambda tag: viewer.stop_parsing())
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(10):
                await loop.create_connection(lambda: viewer, "127.0.0.1", self.server.http_port)
                await viewer.started
            done, _ = await asyncio.wait([viewer.closed], timeout=lifetime)
            return bool(done)
        finally:
            viewer.close()

    async def _ws_flv(self, stream: str, lifetime: float, http: aiohttp.ClientSession) -> bool:
        async with http.ws_connect(f"{self.http}/live/{stream}.flv", max_msg_size=0) as ws:
            deadline = time.monotonic() + lifetime
            while (left := deadline - time.monotonic()) > 0:
                try:
                    message = await asyncio.wait_for(ws.receive(), left)
                except TimeoutError:
                    return False
                if message.type != aiohttp.WSMsgType.BINARY:
                    return True
            return False

    async def _hls(self, stream: str, lifetime: float, http: aiohttp.ClientSession) -> bool:
        now = time.monotonic()
        client = HlsClient(f"{self.http}/live/{stream}/index.m3u8", "poll", 2.0, now, now, now + lifetime)
        await client.run(http)
        if client.result.requests_failed:
            raise ConnectionError(f"HLS: {client.result.error}")
        if not client._playlists:
            raise ConnectionError(f"HLS: no playlist ({client.result.error})")
        return False

    async def _whep(self, stream: str, lifetime: float, http: aiohttp.ClientSession) -> bool:
        from bench.webrtc_client import connected, negotiate, new_pc  # aiortc: only when WHEP is used
        from signaling.passthrough import pass_through

        pc = new_pc()
        readers: list[asyncio.Task[None]] = []

        async def read(track: Any) -> None:
            while True:
                await track.recv()

        pc.on("track", lambda track: readers.append(asyncio.ensure_future(read(track))))
        try:
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("audio", direction="recvonly")
            resource = await negotiate(pc, f"{self.http}/whep/{stream}", http)
            for transceiver in pc.getTransceivers():
                pass_through(transceiver)
            await connected(pc, 15)
            deadline = time.monotonic() + lifetime
            while time.monotonic() < deadline:
                if pc.connectionState != "connected":
                    return True
                await asyncio.sleep(1)
            async with http.delete(resource):
                pass
            return False
        finally:
            for reader in readers:
                reader.cancel()
            await pc.close()

    # -- replays

    async def run_replays(self, final: bool = False) -> None:
        """Check every ready replay (ffprobe its MP4 and VOD HLS) and delete it once it is
        ``--replay-expiry`` old; at the end (``final``), check all that are left."""
        while True:
            rooms = [r for slot in self.slots if slot.replay for r in (*slot.ended_rooms, slot.roomid) if r]
            for roomid in rooms:
                try:
                    listed = (await self.api.call("GET", f"/api/v1/rooms/{roomid}/replays"))["replays"]
                except Exception as exc:
                    _log(f"replays of room {roomid}: {exc}")
                    continue
                for replay in listed:
                    rid = replay["replay_id"]
                    self.replays_seen[rid] = replay
                    if rid in self.replays_done or replay["status"] == "recording":
                        continue
                    old = time.time() - replay.get("created_at", time.time()) > self.options.replay_expiry
                    if final or old:
                        await self.check_replay(replay, delete=not final)
            if final or not self.running():
                return
            await asyncio.sleep(30)

    async def check_replay(self, replay: dict[str, Any], delete: bool) -> None:
        rid = replay["replay_id"]
        self.replays_done.add(rid)
        self.counts.replays_checked += 1
        urls = replay.get("urls", {})
        try:
            if replay["status"] != "ready":
                raise RuntimeError(f"status {replay['status']}")
            for kind in ("mp4", "hls"):
                seconds = float(await asyncio.to_thread(fixture.probe_format, urls[kind], "duration"))
                if seconds <= 0:
                    raise RuntimeError(f"{kind} lasts {seconds} s")
        except Exception as exc:
            self.counts.replays_unplayable.append(f"{rid}: {type(exc).__name__}: {exc}")
            _log(f"replay {rid} is not playable: {exc} (kept, not deleted)")
            return
        if not delete:
            return
        await self.api.call("DELETE", f"/api/v1/replays/{rid}", 204)
        self.counts.replays_deleted += 1
        async with self.api.session.get(urls["mp4"]) as response:
            if response.status != 404:
                self.counts.replays_not_gone.append(f"{rid}: MP4 answers {response.status} after delete")

    async def final_statuses(self) -> None:
        for slot in self.slots:
            await self.check_status(slot, "the run")
            for roomid in slot.ended_rooms:
                room = await self.api.call("GET", f"/api/v1/rooms/{roomid}")
                if room["live_status"] != 103:
                    self.counts.status_mismatches.append(f"ended room {roomid}: live_status {room['live_status']}")


# ------------------------------------------------------------------ sampling


def proc_sample(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    values = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mb": round(int(values["VmRSS"].split()[0]) / 1024, 1),
        "threads": int(values["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


class LogWatch:
    """Counts "Traceback" in the server's log as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.tracebacks = 0
        self.first: str | None = None

    def read(self) -> int:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            data = log.read()
        # Whole lines only: a traceback's word may be cut at the end of what is written so far.
        data = data[: data.rfind(b"\n") + 1]
        self.offset += len(data)
        found = data.count(b"Traceback")
        if found and self.first is None:
            at = data.find(b"Traceback")
            self.first = data[max(0, at - 300) : at + 3000].decode(errors="replace")
        self.tracebacks += found
        return self.tracebacks


async def sample_loop(driver: Driver, pid: int, log: LogWatch, series: list[dict[str, Any]]) -> None:
    started = time.monotonic()
    last_print = -60.0
    due = 0.0
    while True:
        elapsed = time.monotonic() - started
        # lag: how late this sample is (the driver's loop held up); load: the machine's, shared with others.
        point: dict[str, Any] = {"t": round(elapsed, 1), "lag": round(elapsed - due, 2), "load": os.getloadavg()[0]}
        due += SAMPLE_EVERY
        try:
            point.update(proc_sample(pid))
            point["tasks"] = (await driver.api.runtime())["tasks"]
        except Exception as exc:
            point["error"] = f"{type(exc).__name__}: {exc}"
        counts = driver.counts
        point.update(
            viewers=sum(driver.viewers.values()),
            viewers_by_protocol=dict(driver.viewers),
            publishers=sum(1 for slot in driver.slots if slot.publisher is not None),
            joins=sum(counts.joins.values()),
            leaves=sum(counts.leaves.values()),
            reconnects=counts.reconnects,
            errors=counts.errors(),
            replays_checked=counts.replays_checked,
            replays_deleted=counts.replays_deleted,
            tracebacks=log.read(),
        )
        series.append(point)
        if elapsed - last_print >= 59:
            last_print = elapsed
            # A run that dies before its report still leaves its series.
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / "soak-running.json").write_text(json.dumps(series))
            _log(
                f"{elapsed / 60:5.1f} min  RSS {point.get('rss_mb')} MB  fds {point.get('fds')}  "
                f"tasks {point.get('tasks')}  threads {point.get('threads')}  viewers {point['viewers']}  "
                f"publishers {point['publishers']}  replays {counts.replays_checked} checked, "
                f"{counts.replays_deleted} deleted  errors {point['errors']}  tracebacks {point['tracebacks']}  "
                f"load {point['load']:.1f}  lag {point['lag']} s"
            )
        if not driver.running():
            return
        await asyncio.sleep(max(0.0, started + due - time.monotonic()))


# ------------------------------------------------------------------ verdict


def growth(series: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    """``key`` at the baseline (the median of the minute after minute 5, or after the first third of a
    shorter run) and at the end (the median of the last minute), and the slope per hour after the
    baseline (least squares)."""
    points = [(p["t"], p[key]) for p in series if key in p]
    if len(points) < 6:
        return None
    total = points[-1][0]
    base_t = min(BASELINE_MINUTE * 60, total / 3)
    window = min(60.0, total / 6)
    base = [v for t, v in points if base_t <= t < base_t + window]
    last = [v for t, v in points if t >= total - window]
    after = [(t, v) for t, v in points if t >= base_t]
    slope = 0.0
    if len(after) >= 2:
        mean_t = statistics.fmean(t for t, _ in after)
        mean_v = statistics.fmean(v for _, v in after)
        spread = sum((t - mean_t) ** 2 for t, _ in after)
        slope = sum((t - mean_t) * (v - mean_v) for t, v in after) / spread * 3600 if spread else 0.0
    return {
        "baseline_at_s": round(base_t, 1),
        "baseline": round(statistics.median(base) if base else points[0][1], 1),
        "end": round(statistics.median(last), 1),
        "max": max(v for _, v in points),
        "slope_per_hour": round(slope, 2),
    }


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    failures = []
    counts = report["counts"]
    if report["tracebacks"]:
        failures.append(f"{report['tracebacks']} tracebacks in the server log")
    if not report["server_alive"]:
        failures.append("the server died")
    if counts["status_mismatches"]:
        failures.append(f"{len(counts['status_mismatches'])} room statuses differ from what the driver did")
    if counts["replays_unplayable"]:
        failures.append(f"{len(counts['replays_unplayable'])} replays not playable")
    if counts["replays_not_gone"]:
        failures.append(f"{len(counts['replays_not_gone'])} deleted replays still served")
    if not counts["replays_checked"]:
        failures.append("no replay was made")
    for key, (share, amount) in GROWTH_LIMITS.items():
        grown = report["growth"].get(key)
        if grown is None:
            failures.append(f"too few samples of {key}")
            continue
        delta = grown["end"] - grown["baseline"]
        if delta > amount and delta > share * grown["baseline"]:
            failures.append(f"{key} grew from {grown['baseline']} to {grown['end']} ({grown['slope_per_hour']}/h)")
    return {"pass": not failures, "failures": failures}


# ------------------------------------------------------------------ the plot


def plot(report: dict[str, Any], path: Path) -> None:
    """RSS (MB) and open fds over time, one panel each, as a PNG (Pillow)."""
    from PIL import Image, ImageDraw

    series = [p for p in report["series"] if "rss_mb" in p]
    width, panel, margin = 1000, 260, 70
    image = Image.new("RGB", (width, 2 * panel + 60), "white")
    draw = ImageDraw.Draw(image)
    title = f"minilive soak {report['started'][:16]}: {report['minutes']:g} min, verdict "
    title += "pass" if report["verdict"]["pass"] else "FAIL"
    draw.text((margin, 10), title, fill="black")
    total = max((p["t"] for p in series), default=1.0) or 1.0
    for row, (key, label, colour) in enumerate((("rss_mb", "RSS MB", "#1f77b4"), ("fds", "open fds", "#d62728"))):
        top = 40 + row * panel
        bottom = top + panel - 40
        left, right = margin, width - 20
        values = [p[key] for p in series]
        high = max(values, default=1) * 1.1 or 1
        draw.rectangle((left, top, right, bottom), outline="#999999")
        for i in range(5):
            value = high * i / 4
            y = bottom - (bottom - top) * i / 4
            draw.line((left, y, right, y), fill="#eeeeee")
            draw.text((5, y - 6), f"{value:.0f}", fill="black")
        for i in range(7):
            x = left + (right - left) * i / 6
            minutes = total * i / 6 / 60
            draw.text((x - 10, bottom + 4), f"{minutes:.1f}m" if total < 600 else f"{minutes:.0f}m", fill="black")
        draw.text((left + 5, top + 5), label, fill=colour)
        grown = report["growth"].get(key)
        if grown:
            base_x = left + (right - left) * grown["baseline_at_s"] / total
            draw.line((base_x, top, base_x, bottom), fill="#aaaaaa")
            text = f"baseline {grown['baseline']}, end {grown['end']}, slope {grown['slope_per_hour']}/h"
            draw.text((left + 100, top + 5), text, fill="black")
        points = [(left + (right - left) * p["t"] / total, bottom - (bottom - top) * p[key] / high) for p in series]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
    image.save(path)


# ------------------------------------------------------------------ the run


def admin_token(server: peers.Server) -> str:
    data_dir = peers.CACHE / server.name / "data"
    argv = [*peers.MINILIVE, "admin", "token", "--data-dir", str(data_dir)]
    done = subprocess.run(argv, capture_output=True, check=True, timeout=30, env=peers.minilive_env())
    return done.stdout.decode().strip()


async def soak(options: argparse.Namespace) -> dict[str, Any]:
    # Rooms start lives all the time here: the official 50 lives per app per day would stop them at minute 18.
    config = "[rooms]\nmax_lives_per_day = 1000000\n"
    server = peers.start_minilive(peers.free_port(), peers.free_port(), name="soak", config=config)
    started = datetime.now()
    series: list[dict[str, Any]] = []
    log = LogWatch(server.log)
    counts = Counts()
    try:
        app = _app(server)
        admin = admin_token(server)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as session:
            await _room(session, app)  # also uploads the cover every room uses
            api = Api(session, app, admin, counts)
            await api.renew()
            driver = Driver(server, api, Source(fixture.PATH), options)
            first = await api.call("GET", "/api/v1/rooms")
            driver.media_id = first["rooms"][0]["cover_img"]
            sampler = asyncio.ensure_future(sample_loop(driver, server.process.pid, log, series))
            slots = [asyncio.ensure_future(driver.run_slot(slot)) for slot in driver.slots]
            viewers = asyncio.ensure_future(driver.run_viewers())
            replays = asyncio.ensure_future(driver.run_replays())
            await sampler
            _log("the run is over: checking statuses and replays")
            await asyncio.wait([*slots, viewers, replays], timeout=120)
            await driver.final_statuses()
            await driver.run_replays(final=True)
            for slot in driver.slots:
                if slot.publisher is not None:
                    await slot.publisher.stopped()
            # What is left (aiortc's transports, a viewer still closing) is cancelled here, with a
            # bound: some of aiortc's tasks do not end when cancelled, and asyncio.run would wait forever.
            left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in left:
                task.cancel()
            if left:
                _, stuck = await asyncio.wait(left, timeout=10)
                _log(f"{len(left)} driver tasks left at the end, {len(stuck)} did not end when cancelled")
        alive = server.alive()
        log.read()
    finally:
        server.stop()
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "host": platform.node(),
        "minutes": options.minutes,
        "options": vars(options),
        "server_log": str(server.log),
        "server_alive": alive,
        "tracebacks": log.tracebacks,
        "first_traceback": log.first,
        # Not asdict(): it rebuilds a Counter from (key, value) pairs, counting the pairs.
        "counts": {f.name: getattr(counts, f.name) for f in fields(counts)},
        "replays_seen": len(driver.replays_seen),
        "series": series,
    }
    report["growth"] = {key: growth(series, key) for key in ("rss_mb", "fds", "tasks", "threads")}
    report["verdict"] = verdict(report)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--publishers", type=int, default=20)
    parser.add_argument("--viewers", type=int, default=300, help="RTMP, HTTP-FLV, WS-FLV and HLS viewers at a time")
    parser.add_argument("--whep", type=int, default=5, help="WebRTC (WHEP) viewers at a time")
    parser.add_argument("--replay-rooms", type=int, default=5, help="rooms with replays on (each records)")
    parser.add_argument(
        "--replay-expiry", type=float, help="seconds before a replay is deleted (300; at most a quarter of the run)"
    )
    parser.add_argument("--action-every", type=float, default=45.0, help="mean seconds between a room's actions")
    parser.add_argument("--viewer-seconds", type=float, default=60.0, help="mean seconds a viewer stays")
    parser.add_argument("--plot", metavar="FILE.json", help="re-draw the PNG of a saved run and exit")
    options = parser.parse_args(argv)
    if options.replay_expiry is None:  # a short run deletes replays too
        options.replay_expiry = min(300.0, options.minutes * 60 / 4)
    if options.plot:
        saved = Path(options.plot)
        plot(json.loads(saved.read_text()), saved.with_suffix(".png"))
        print(saved.with_suffix(".png"))
        return
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fixture.ensure()
    loop = uvloop.new_event_loop()
    report = loop.run_until_complete(soak(options))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"soak-{datetime.now():%Y%m%d-%H%M}.json"
    path.write_text(json.dumps(report, indent=1))
    plot(report, path.with_suffix(".png"))
    verdict_ = report["verdict"]
    print(json.dumps({k: report[k] for k in ("growth", "tracebacks", "server_alive")}, indent=1))
    print(f"counts: {json.dumps(report['counts'])}")
    print(f"verdict: {'PASS' if verdict_['pass'] else 'FAIL'} {verdict_['failures']}")
    print(f"written: {path} and {path.with_suffix('.png')}", flush=True)
    sys.stderr.flush()
    # Not loop.close(): it would wait on the tasks that ignored their cancellation (see soak()).
    os._exit(0 if verdict_["pass"] else 1)


if __name__ == "__main__":
    main()
