"""The recorder: live streams to replays on disk, their finalization, crash recovery and deletion.

It knows streams and folders, not rooms: the control plane says which stream to record into
which folder (relative to the replays root) and when the replay is over: :meth:`Recorder.stop`
as the publisher leaves (no packet after it gets in), then :meth:`Recorder.finish`. Disk work runs
on threads: one writes every recording's segments in order, one finalizes replays, so that a long
finalization never holds up the segments of the lives still going on, and two cut clips. Each
recording also has a thread of its own that remuxes its segments into the MP4 as they are written.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from recorder.clip import Clip, cut
from recorder.finalize import Finalized, FinalizeError, finalize
from recorder.master import rendition_folders, write_master
from recorder.mp4 import LiveMp4
from recorder.recording import Recording
from relay.hub import Hub, StreamEvent

log = logging.getLogger("minilive.recorder")


@dataclass(slots=True)
class RecorderSettings:
    # Target segment length; segments start on keyframes, so they are at least one GOP long.
    segment_seconds: float = 4.0
    # How often expired replays are deleted.
    retention_interval_seconds: float = 3600.0
    # How often live rooms are checked for a replay switched on (updatereplay) or off during the live.
    live_check_seconds: float = 2.0
    # The longest clip (ReplayService.clip: goods explainer videos) in seconds.
    clip_max_seconds: float = 600.0


class Recorder:
    def __init__(self, hub: Hub, root: Path, settings: RecorderSettings) -> None:
        self.hub = hub
        self.root = root
        self.settings = settings
        self.recordings: dict[str, Recording] = {}  # by replay id
        self._streams: dict[tuple[str, str], Recording] = {}  # by (app, stream name), renditions too
        self._variants: dict[str, list[Recording]] = {}  # renditions recorded, by replay id
        # The stream time up to which a stopped recording took each stream's packets: the next
        # recording of the same hub stream starts after it (its GOP cache may still hold them).
        self._taken: dict[tuple[str, str], int] = {}
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="minilive-recorder")
        self._finalizer = ThreadPoolExecutor(1, thread_name_prefix="minilive-finalize")
        self._clipper = ThreadPoolExecutor(2, thread_name_prefix="minilive-clip")
        hub.add_listener(self._stream_event)

    def folder(self, relative: str) -> Path:
        """The absolute folder of a replay; ``relative`` must stay below the root."""
        parts = PurePosixPath(relative).parts
        if not parts or PurePosixPath(relative).is_absolute() or any(p in (".", "..") for p in parts):
            raise ValueError(f"replay folder {relative!r} is not a plain relative path")
        return self.root.joinpath(*parts)

    def can_record(self, app: str, name: str) -> bool:
        """Whether stream ``app/name`` is here with its publisher, originated here (not pulled from
        another node, whose recording it is) and not recorded yet."""
        stats = self.hub.stats(app, name)
        return stats is not None and stats["live"] and not stats["relayed"] and (app, name) not in self._streams

    def start(self, app: str, name: str, replay_id: str, folder: str, renditions: Sequence[str] = ()) -> bool:
        """Record stream ``app/name`` into ``folder``, and its ``renditions`` (``name_480p``...) each
        into a sub-folder of it, from when they appear; False if this node has no such stream."""
        if not self.can_record(app, name):
            return False
        path = self.folder(folder)
        path.mkdir(parents=True, exist_ok=True)
        seconds = self.settings.segment_seconds
        recording = Recording(replay_id, path, seconds, self._writer, after=self._taken.get((app, name), -1))
        self.recordings[replay_id] = self._streams[(app, name)] = recording
        recording.attach(self.hub, app, name)
        for rung in renditions:
            sub = path / rung
            sub.mkdir(exist_ok=True)
            after = self._taken.get((app, f"{name}_{rung}"), -1)
            variant = Recording(f"{replay_id}/{rung}", sub, seconds, self._writer, mp4=False, after=after)
            self._variants.setdefault(replay_id, []).append(variant)
            self._streams[(app, f"{name}_{rung}")] = variant
            variant.attach(self.hub, app, f"{name}_{rung}")  # or when it is published
        log.info("replay %s: recording %s/%s into %s%s", replay_id, app, name, path,
                 f" with renditions {', '.join(renditions)}" if renditions else "")  # fmt: skip
        return True

    def _stream_event(self, event: StreamEvent) -> None:
        key = (event.app, event.name)
        if event.type == "end":
            self._taken.pop(key, None)  # a stream of that name published later has a timeline of its own
            return
        recording = self._streams.get(key)
        if event.type != "publish" or recording is None:
            return
        if event.info.get("relayed"):
            # The anchor went on at another node, which records it now: not a packet of the pull
            # goes into this recording (the replay service finishes it).
            recording.detach()
        else:
            # A rendition recorded with the replay appears (or is made again).
            recording.attach(self.hub, event.app, event.name)

    def stop(self, replay_id: str) -> None:
        """Take no more packets into the replay (its publisher left): what it has is queued for the
        disk, and its stream may be recorded again, into another replay, from the next packet on."""
        recording = self.recordings.get(replay_id)
        if recording is None:
            return
        stopped = [recording, *self._variants.get(replay_id, [])]
        for key, r in list(self._streams.items()):
            if r in stopped:
                del self._streams[key]
                if self.hub.has(*key):  # else it ended: a stream of that name later starts afresh
                    self._taken[key] = max(r.last_ts, self._taken.get(key, -1))
        for r in stopped:
            r.detach()

    async def finish(self, replay_id: str) -> Finalized | None:
        """Stop recording, write what is buffered, and finalize (raises FinalizeError or OSError).
        None when the recording took nothing (its publisher left before a keyframe): its folder is
        removed."""
        self.stop(replay_id)
        recording = self.recordings.pop(replay_id)
        variants = self._variants.pop(replay_id, [])
        for variant in variants:
            await variant.close()
        await recording.close()
        if recording.mp4 is not None:
            recording.mp4.finish()
        if not recording.entries:
            await self.delete(str(recording.folder.relative_to(self.root)))
            return None
        return await self._finalize(recording.folder, recording.mp4)

    async def clip(self, folders: Sequence[str], start: float, end: float, name: str) -> Clip | None:
        """Cut ``name``.mp4 of the first replay in ``folders`` whose recording covers part of
        ``start``..``end`` (Unix times) into its ``clips`` folder; None if none does."""
        paths = [self.folder(folder) for folder in folders]
        return await asyncio.get_running_loop().run_in_executor(self._clipper, cut, paths, start, end, name)

    async def recover(self, folder: str) -> Finalized:
        """Finalize a replay left unfinished by a crash."""
        return await self._finalize(self.folder(folder))

    async def _finalize(self, path: Path, live_mp4: LiveMp4 | None = None) -> Finalized:
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await loop.run_in_executor(self._finalizer, finalize, path, live_mp4)
        result.renditions = await loop.run_in_executor(self._finalizer, _finalize_renditions, path)
        if result.renditions:
            result.size += sum(f.stat().st_size for name in result.renditions for f in (path / name).iterdir())
        log.info(
            "replay %s finalized in %.2f s: %d segments, %.1f s, %.1f MB, %s",
            path.name,
            loop.time() - started,
            result.segments,
            result.duration,
            result.size / 1e6,
            "MP4 made during the live" if result.mp4_during_live else "MP4 remuxed from the segments",
        )
        return result

    def exists(self, folder: str) -> bool:
        return self.folder(folder).is_dir()

    async def delete(self, folder: str) -> None:
        """Remove a replay's folder, and its parents up to the root once they are empty."""
        path = self.folder(folder)
        await asyncio.get_running_loop().run_in_executor(self._finalizer, self._remove, path)

    def _remove(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                break  # not empty
            parent = parent.parent

    async def close(self) -> None:
        """Shutting down: put what every recording buffered on disk; the next start finalizes them."""
        for recording in list(self.recordings.values()):
            await recording.close()
            if recording.mp4 is not None:
                recording.mp4.abort()  # the next start finalizes the replay from its segments
        for variants in self._variants.values():
            for variant in variants:
                await variant.close()
        self.recordings.clear()
        self._variants.clear()
        self._streams.clear()
        self._writer.shutdown()
        self._finalizer.shutdown()
        self._clipper.shutdown()


def _finalize_renditions(folder: Path) -> list[str]:
    """Finalize the renditions recorded beside the replay in ``folder`` (a normal end and a crash
    alike) and list those that play in its master playlist; a rendition that cannot be finalized is
    left out, never failing the replay."""
    finished = []
    for sub in rendition_folders(folder):
        try:
            finalize(sub, mp4=False)
        except (FinalizeError, OSError) as exc:
            log.warning("replay %s: rendition %s left out: %s", folder.name, sub.name, exc)
            continue
        finished.append(sub.name)
    if finished:
        write_master(folder, finished)
    return finished
