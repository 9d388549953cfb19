"""Replays: when a room's live session is recorded, finalized, announced, expired, served and clipped.

A live session is recorded as replay segments, one per stretch the anchor is on (the official
get_replay lists "视频片段"): each is a :class:`~api.models.Replay` of its own, with its own HLS, MP4
and cover. The rule is level-triggered: a room that is live (101) with replay on
(``close_replay == 0``), and whose stream is on this node with its publisher, has a recording; a
room that is not (105, 106, over, deleted, replay switched off) has none, and its recording is
finalized into a ready (or failed) replay and announced with a ``replay_ready`` event (webhook,
SSE/WebSocket). The cut is made at the hub's unpublish, at once (so no packet of the anchor's next
stretch gets in, and the segment is ready within seconds); the anchor's return starts the next
segment. Rooms are checked on every status event of the store (from any node: the one holding the
stream acts) and every ``live_check_seconds``, which catches ``updatereplay`` during the live and a
room still live after a restart. At start, replays a crash left "recording" are finalized before
serving.

Files are served under ``/replays/{Replay.path}/``: ``index.m3u8`` and its segments, ``replay.mp4``,
``cover.jpg``, with Range support; nothing outside the replays folder is reachable, and nothing of a
room whose replay is closed (``close_replay == 1``) but its clips (``{Replay.path}/clips/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from api import errors
from api.aio import cancel_and_wait
from api.errors import ApiError
from api.models import ACTIVE_STATUSES, App, LiveStatus, Replay, Room, RoomEvent, parse_stream
from api.store.base import RoomStore
from api.urls import Urls
from api.views import replay_ready
from api.webhooks import Webhooks
from recorder.clip import CLIPS, Clip
from recorder.finalize import Finalized
from recorder.recorder import Recorder
from relay.http.cors import CORS
from relay.hub import StreamEvent

if TYPE_CHECKING:
    from relay.cluster.node import Cluster

log = logging.getLogger("minilive.replays")

DAY = 86400
CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".jpg": "image/jpeg",
}


CLIP_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ClipRefused(ValueError):
    """The clip asked for cannot be cut; the message says why and what to ask instead."""


class KeptRenditions(Protocol):
    """What the recorder needs of the transcoder: renditions that run while a replay records them."""

    def keep(self, app: str, source: str) -> list[str]:
        """Start every rendition ``app/source`` can have, and keep them running; their names."""
        ...

    def release(self, app: str, source: str) -> None:
        """They may stop again (on demand, after their idle time)."""
        ...


class ReplayService:
    def __init__(
        self,
        store: RoomStore,
        urls: Urls,
        rtmp_app: str,
        recorder: Recorder,
        webhooks: Webhooks,
        clock: Callable[[], float] = time.time,
        renditions: KeptRenditions | None = None,
    ) -> None:
        self.store = store
        # With [transcode] record_renditions: keeps a recorded stream's renditions running.
        self.renditions = renditions
        self.urls = urls
        self.rtmp_app = rtmp_app  # the app of the rooms' streams in the hub
        self.recorder = recorder
        self.webhooks = webhooks
        self.clock = clock
        self.root = recorder.root.resolve()
        self.active: dict[int, Replay] = {}  # recordings of this node, by room id
        self._checks: asyncio.Queue[int] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._finishing: set[asyncio.Task[None]] = set()
        self._recovered: list[Replay] = []
        self._clipping: dict[int, tuple[asyncio.Lock, int]] = {}  # by room: its lock, and how many use it
        # In a cluster: which nodes are alive. A replay left "recording" by a node that died is
        # finalized by a node of the box that has its files, once (a registry lock).
        self.cluster: Cluster | None = None

    # ------------------------------------------------------------ lifecycle

    async def recover(self) -> None:
        """Finalize the replays that a crash left "recording" (before serving)."""
        for replay in await self.store.replays_in_status("recording"):
            if self.cluster is not None:
                await self._recover_orphan(replay)
                continue
            if not self.recorder.exists(replay.path):
                room = await self.store.get_room(replay.roomid)
                if room is not None and room.live_status in ACTIVE_STATUSES:
                    continue  # being recorded by another node
                await self._save_result(replay, None, "its files are missing")
                continue
            await self._finalize_left(replay)

    async def _finalize_left(self, replay: Replay) -> None:
        log.info("replay %s of room %d was left unfinished: finalizing it", replay.replay_id, replay.roomid)
        try:
            result = await self.recorder.recover(replay.path)
        except Exception as exc:  # whatever stops finalization fails this replay, not the start
            await self._save_result(replay, None, f"{type(exc).__name__}: {exc}")
        else:
            await self._save_result(replay, result, "")
            self._recovered.append(replay)

    async def _recover_orphan(self, replay: Replay) -> None:
        """In a cluster: finalize ``replay`` if its node is dead and its files are on this box."""
        cluster = self.cluster
        assert cluster is not None
        if (
            replay.node in cluster.alive
            or replay.replay_id in self._recording_ids()
            or not self.recorder.exists(replay.path)
        ):
            return
        lock = f"replay/{replay.replay_id}"
        if not await cluster.lock(lock):
            return
        try:
            current = await self.store.get_replay(replay.replay_id)
            if current is not None and current.status == "recording":
                await self._finalize_left(current)
        finally:
            await cluster.unlock(lock)

    def _recording_ids(self) -> set[str]:
        return {r.replay_id for r in self.active.values()}

    async def start(self) -> None:
        """Announce the recovered replays, then follow the rooms and run the retention job."""
        for replay in self._recovered:
            await self._announce(replay)
        self._recovered.clear()
        self.store.subscribe(self._on_room_event)
        self._tasks = [
            asyncio.create_task(self._consume()),
            asyncio.create_task(self._check_live_rooms()),
            asyncio.create_task(self._retention()),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        await asyncio.gather(*self._finishing, return_exceptions=True)
        await self.recorder.close()

    # ------------------------------------------------------------ recording

    def stream_event(self, event: StreamEvent) -> None:
        """Hub listener: the anchor of a stream recorded here left (the segment ends now, before
        any packet of a next publisher), or went on at another node (it is pulled from there now,
        and that node records the rest)."""
        if event.app != self.rtmp_app:
            return
        relayed = bool(event.info.get("relayed"))
        if (event.type, relayed) not in (("unpublish", False), ("publish", True)):
            return
        parsed = parse_stream(event.name)
        replay = self.active.get(parsed[1]) if parsed is not None else None
        if replay is not None:
            why = "the anchor went on at another node" if relayed else "the anchor left"
            log.info("replay %s of room %d: %s; finishing it", replay.replay_id, replay.roomid, why)
            self._end_recording(replay)

    def _end_recording(self, replay: Replay) -> None:
        """Stop the replay's recording now and finalize it in the background."""
        del self.active[replay.roomid]
        self.recorder.stop(replay.replay_id)
        task = asyncio.create_task(self._finish(replay))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    def _on_room_event(self, event: RoomEvent) -> None:
        if event.type == "status":
            self._checks.put_nowait(event.roomid)

    async def _consume(self) -> None:
        # One room at a time, in event order: a start and the finish that follows never race.
        while True:
            roomid = await self._checks.get()
            try:
                await self.sync(roomid)
            except Exception:
                log.exception("replay update of room %d failed", roomid)

    async def _check_live_rooms(self) -> None:
        while True:
            await asyncio.sleep(self.recorder.settings.live_check_seconds)
            try:
                live = await self.store.rooms_in_status([LiveStatus.LIVE])
            except Exception:
                log.exception("listing live rooms failed")
                continue
            # Rooms that should be recorded and are not, and recordings whose room may be over or
            # switched off (or merely waiting in 105/106: then the check changes nothing).
            wanted = {r.roomid for r in live if r.close_replay == 0}
            for roomid in wanted ^ self.active.keys():
                self._checks.put_nowait(roomid)
            if self.cluster is not None:  # a worker killed while the others go on
                try:
                    await self.recover()
                    for replay in self._recovered:
                        await self._announce(replay)
                    self._recovered.clear()
                except Exception:
                    log.exception("recovering the replays of a dead node failed")

    async def sync(self, roomid: int) -> None:
        """Start or finish the room's recording as its status and replay switch say."""
        room = await self.store.get_room(roomid)
        replay = self.active.get(roomid)
        if replay is not None:
            if room is None or room.live_status != LiveStatus.LIVE or room.close_replay:
                self._end_recording(replay)
        elif room is not None and room.live_status == LiveStatus.LIVE and room.close_replay == 0:
            await self._begin(room)

    async def _begin(self, room: Room) -> None:
        stream_app = self.rtmp_app
        if not self.recorder.can_record(stream_app, room.stream_name):
            return  # the stream is on another node (or gone already)
        app = await self.store.get_app(room.appid)
        days = app.replay_retention_days if app is not None else 30
        now = self.clock()
        replay_id = secrets.token_hex(8)  # unguessable: replay files are served without a token
        replay = Replay(
            replay_id=replay_id,
            roomid=room.roomid,
            appid=room.appid,
            session=room.live_sessions,
            status="recording",
            created_at=now,
            expire_at=now + days * DAY,
            path=f"{room.appid}/{room.roomid}/{replay_id}",
            node=self.cluster.node if self.cluster is not None else "",
        )
        await self.store.put_replay(replay)
        kept = self.renditions.keep(stream_app, room.stream_name) if self.renditions is not None else []
        if self.recorder.start(stream_app, room.stream_name, replay_id, replay.path, kept):
            self.active[room.roomid] = replay
            return
        # The anchor left while the replay was being saved: nothing to record.
        if self.renditions is not None:
            self.renditions.release(stream_app, room.stream_name)
        await self.store.delete_replay(replay_id)

    async def _finish(self, replay: Replay) -> None:
        if self.renditions is not None:
            self.renditions.release(self.rtmp_app, f"{replay.appid}-{replay.roomid}")
        try:
            result = await self.recorder.finish(replay.replay_id)
        except Exception as exc:  # FinalizeError, OSError, av.FFmpegError...
            await self._save_result(replay, None, f"{type(exc).__name__}: {exc}")
            return
        if result is None:
            log.info("replay %s of room %d recorded nothing: dropped", replay.replay_id, replay.roomid)
            await self.store.delete_replay(replay.replay_id)
            return
        await self._save_result(replay, result, "")
        await self._announce(replay)

    async def _save_result(self, replay: Replay, result: Finalized | None, problem: str) -> None:
        if result is None:
            replay.status = "failed"
            log.warning("replay %s of room %d failed: %s", replay.replay_id, replay.roomid, problem)
        else:
            replay.status, replay.duration, replay.size = "ready", result.duration, result.size
            replay.renditions = result.renditions
        await self.store.put_replay(replay)

    async def _announce(self, replay: Replay) -> None:
        room = await self.store.get_room(replay.roomid)
        data = replay_ready(replay, self.urls)
        status = room.live_status if room is not None else LiveStatus.ENDED
        event = RoomEvent("replay_ready", replay.appid, replay.roomid, status, reason="replay finalized", data=data)
        await self.store.publish_event(event)
        await self.webhooks.send(event)

    # ------------------------------------------------------------ retention

    async def delete_expired(self) -> int:
        """Delete the replays past their ``expire_at`` from disk and store; returns how many."""
        deleted = 0
        recording = {r.replay_id for r in self.active.values()}
        for replay in await self.store.expired_replays(self.clock()):
            if replay.replay_id in recording:
                continue
            if replay.path:
                await self.recorder.delete(replay.path)
            await self.store.delete_replay(replay.replay_id)
            deleted += 1
            log.info("replay %s of room %d expired: deleted", replay.replay_id, replay.roomid)
        return deleted

    async def delete(self, app: App, replay_id: str) -> None:
        """Delete one of the app's replays, files and record (409 while it is being recorded)."""
        replay = await self.store.get_replay(replay_id)
        if replay is None or replay.appid != app.appid:
            raise ApiError(errors.REPLAY_NOT_FOUND, f"app {app.appid} has no replay {replay_id}")
        if replay.status == "recording" or replay.replay_id in self._recording_ids():
            raise ApiError(errors.REPLAY_RECORDING, f"replay {replay_id} is being recorded: delete it once it is ready")
        if replay.path:
            await self.recorder.delete(replay.path)
        await self.store.delete_replay(replay.replay_id)
        log.info("replay %s of room %d deleted by its app", replay.replay_id, replay.roomid)

    async def _retention(self) -> None:
        while True:
            try:
                await self.delete_expired()
            except Exception:
                log.exception("replay retention failed")
            await asyncio.sleep(self.recorder.settings.retention_interval_seconds)

    # ------------------------------------------------------------ files

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/replays/{path:.*}", self.serve)]

    async def serve(self, request: web.Request) -> web.StreamResponse:
        relative = request.match_info["path"]
        path = self.resolve(relative)
        if path is None or await self._closed(relative):
            raise web.HTTPNotFound(headers=CORS)
        return web.FileResponse(path, headers={**CORS, "Content-Type": CONTENT_TYPES[path.suffix]})

    async def _closed(self, relative: str) -> bool:
        """Whether the file is a replay's (not a clip's) of a room whose replay is closed."""
        parts = relative.split("/")  # appid/roomid/replay_id/...
        if len(parts) < 4 or parts[3] == CLIPS or not parts[1].isdigit():
            return False
        room = await self.store.get_room(int(parts[1]))
        return room is not None and room.appid == parts[0] and room.close_replay == 1

    def resolve(self, relative: str) -> Path | None:
        """The file a request names, or None if it is not a replay file below the root."""
        parts = relative.split("/")
        if any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in parts):
            return None
        with contextlib.suppress(OSError):
            real = self.root.joinpath(*parts).resolve(strict=True)  # symlinks followed, then checked
            if real.is_relative_to(self.root) and real.suffix in CONTENT_TYPES and real.is_file():
                return real
        return None

    # ------------------------------------------------------------ clips

    async def clip(self, roomid: int, start: float, end: float | None = None, name: str = "") -> Path | None:
        """An MP4 of room ``roomid``'s recording from ``start`` to ``end`` (Unix times; ``end`` None:
        up to the end of what is recorded, at most ``clip_max_seconds``), stream copy from the video
        keyframe at or before ``start``, written to ``{Replay.path}/clips/{name}.mp4`` (``name``
        defaults to the times) and returned; None when no replay of the room (ready or still being
        recorded) covers that time. One cut at a time per room: a second call waits. Raises
        ClipRefused for times or a name that cannot be cut."""
        limit = self.recorder.settings.clip_max_seconds
        if end is not None and end <= start:
            raise ClipRefused(f"the clip ends ({end}) before it starts ({start}): give end > start")
        if end is not None and end - start > limit:
            raise ClipRefused(f"a clip is at most {limit:g} s ([recorder] clip_max_seconds), not {end - start:g} s")
        name = name or (f"{start:.0f}-{end:.0f}" if end is not None else f"{start:.0f}")
        if not CLIP_NAME.match(name):
            raise ClipRefused(f"clip name {name!r}: use 1 to 64 letters, digits, '-' or '_'")
        replays = [r for r in await self.store.list_replays(roomid) if r.status in ("ready", "recording") and r.path]
        replays.sort(key=lambda r: r.created_at)
        async with self._clip_lock(roomid):
            clip: Clip | None = await self.recorder.clip(
                [r.path for r in replays], start, start + limit if end is None else end, name
            )
        if clip is not None:
            log.info("room %d: clip %s, %.1f s from %.3f", roomid, clip.path.name, clip.duration, clip.start)
        return clip.path if clip is not None else None

    def clip_url(self, path: Path) -> str:
        """Where a clip that :meth:`clip` made is served."""
        return f"{self.urls.http_base}/replays/{path.resolve().relative_to(self.root).as_posix()}"

    @contextlib.asynccontextmanager
    async def _clip_lock(self, roomid: int) -> AsyncIterator[None]:
        lock, users = self._clipping.get(roomid, (asyncio.Lock(), 0))
        self._clipping[roomid] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._clipping[roomid]
            if users == 1:
                del self._clipping[roomid]
            else:
                self._clipping[roomid] = (lock, users - 1)
