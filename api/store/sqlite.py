"""The default, embedded store: one SQLite file (WAL), worked on by one dedicated thread.

Every database call runs on a single worker thread, so the event loop (which carries the live
video fan-out) never waits on the disk, and the calls of one store are serialized. Operations that
read, decide and write (``create_room``, ``transition``, ``incr_counter``, ``claim_live_slot``)
run in ``BEGIN IMMEDIATE`` transactions, so they stay atomic when several processes share the file.
Events reach this store object's subscribers only; with ``shared_events`` (the workers of one box,
``--workers N``), they go through a table that every process sharing the file polls, so they reach
the subscribers of every process, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from api.models import App, Media, Replay, Room, RoomEvent, Token
from api.store.base import DELIVERIES_KEPT, Doc, RoomStore, check_room_changes, deliver

T = TypeVar("T")
log = logging.getLogger("minilive.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (
    appid TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    token TEXT PRIMARY KEY,
    appid TEXT NOT NULL,
    expires_at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tokens_expires_at ON tokens (expires_at);
CREATE TABLE IF NOT EXISTS rooms (
    roomid INTEGER PRIMARY KEY AUTOINCREMENT,
    appid TEXT NOT NULL,
    start_time INTEGER NOT NULL,
    live_status INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rooms_app_start ON rooms (appid, start_time DESC, roomid DESC);
CREATE INDEX IF NOT EXISTS rooms_live_status ON rooms (live_status);
CREATE TABLE IF NOT EXISTS media (
    media_id TEXT PRIMARY KEY,
    expires_at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS media_expires_at ON media (expires_at);
CREATE TABLE IF NOT EXISTS replays (
    replay_id TEXT PRIMARY KEY,
    roomid INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    expire_at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS replays_room ON replays (roomid, created_at);
CREATE INDEX IF NOT EXISTS replays_status ON replays (status);
CREATE INDEX IF NOT EXISTS replays_expire_at ON replays (expire_at);
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS counters_expires_at ON counters (expires_at);
CREATE TABLE IF NOT EXISTS live_slots (
    appid TEXT NOT NULL,
    roomid INTEGER NOT NULL,
    PRIMARY KEY (appid, roomid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    appid TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_app ON deliveries (appid, id);
CREATE TABLE IF NOT EXISTS docs (
    collection TEXT NOT NULL,
    key TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (collection, key)
);
CREATE TABLE IF NOT EXISTS sequences (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS logs (
    name TEXT NOT NULL,
    seq INTEGER NOT NULL,
    score REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (name, seq)
);
CREATE INDEX IF NOT EXISTS logs_score ON logs (name, score, seq);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    data TEXT NOT NULL
);
"""


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


# A shared record with this key is a message (``publish_message``), not a room event.
_TOPIC = "$topic"
# Shared events: how often each process looks for new ones, and how long they are kept.
EVENT_POLL_SECONDS = 0.1
EVENTS_KEPT_SECONDS = 300.0


class SqliteStore(RoomStore):
    def __init__(self, path: Path, shared_events: bool = False) -> None:
        self.path = path
        self.shared_events = shared_events
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._subscribers: list[Callable[[RoomEvent], None]] = []
        self._message_subscribers: list[Callable[[str, Doc], None]] = []
        self._poller: asyncio.Task[None] | None = None
        self._last_event = 0

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minilive-sqlite")
        await self._run(self._connect)
        if self.shared_events:
            self._last_event = (await self._run(self._rows, "SELECT COALESCE(MAX(id), 0) FROM events"))[0][0]
            self._poller = asyncio.create_task(self._poll_events())

    async def close(self) -> None:
        if self._executor is None:
            return
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        await self._run(self._disconnect)
        self._executor.shutdown()
        self._executor = None

    def _connect(self) -> None:
        # Autocommit mode: transactions are opened explicitly where they are needed.
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=OFF")
        self._db = db
        with self._write() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A transaction that holds the write lock from its start, so read-decide-write is atomic
        across processes (a deferred one could fail to upgrade its lock instead of waiting)."""
        assert self._db is not None
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: several queries see one snapshot."""
        assert self._db is not None
        db = self._db
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("COMMIT")

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        assert self._db is not None
        return self._db.execute(sql, tuple(params)).rowcount

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        assert self._db is not None
        return self._db.execute(sql, tuple(params)).fetchall()

    def _one(self, sql: str, params: Iterable[Any] = ()) -> dict[str, Any] | None:
        """The ``data`` record of the first row, or None."""
        rows = self._rows(sql, params)
        return json.loads(rows[0][0]) if rows else None

    def _all(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        return [json.loads(data) for (data,) in self._rows(sql, params)]

    # ------------------------------------------------------------ apps and tokens

    async def put_app(self, app: App) -> None:
        await self._run(
            self._execute,
            "INSERT INTO apps (appid, created_at, data) VALUES (?, ?, ?) "
            "ON CONFLICT (appid) DO UPDATE SET created_at = excluded.created_at, data = excluded.data",
            (app.appid, app.created_at, _dumps(app.to_dict())),
        )

    async def get_app(self, appid: str) -> App | None:
        data = await self._run(self._one, "SELECT data FROM apps WHERE appid = ?", (appid,))
        return None if data is None else App.from_dict(data)

    async def list_apps(self) -> list[App]:
        rows = await self._run(self._all, "SELECT data FROM apps ORDER BY created_at, appid")
        return [App.from_dict(data) for data in rows]

    async def put_token(self, token: Token) -> None:
        await self._run(self._put_token, token)

    def _put_token(self, token: Token) -> None:
        with self._write() as db:
            db.execute("DELETE FROM tokens WHERE expires_at <= ?", (time.time(),))
            db.execute(
                "INSERT OR REPLACE INTO tokens (token, appid, expires_at, data) VALUES (?, ?, ?, ?)",
                (token.token, token.appid, token.expires_at, _dumps(token.to_dict())),
            )

    async def get_token(self, token: str) -> Token | None:
        data = await self._run(
            self._one, "SELECT data FROM tokens WHERE token = ? AND expires_at > ?", (token, time.time())
        )
        return None if data is None else Token.from_dict(data)

    # ------------------------------------------------------------ rooms

    async def create_room(self, room: Room) -> Room:
        return await self._run(self._create_room, room)

    def _create_room(self, room: Room) -> Room:
        with self._write() as db:
            # AUTOINCREMENT: ids increase and are never reused, even after deletes.
            roomid = db.execute(
                "INSERT INTO rooms (appid, start_time, live_status, data) VALUES (?, ?, ?, '{}')",
                (room.appid, room.start_time, int(room.live_status)),
            ).lastrowid
            stored = Room.from_dict({**room.to_dict(), "roomid": roomid})
            db.execute("UPDATE rooms SET data = ? WHERE roomid = ?", (_dumps(stored.to_dict()), roomid))
        return stored

    async def get_room(self, roomid: int) -> Room | None:
        data = await self._run(self._one, "SELECT data FROM rooms WHERE roomid = ?", (roomid,))
        return None if data is None else Room.from_dict(data)

    async def put_room(self, room: Room) -> None:
        await self._run(self._update_room, room)

    def _update_room(self, room: Room) -> None:
        self._execute(
            "UPDATE rooms SET appid = ?, start_time = ?, live_status = ?, data = ? WHERE roomid = ?",
            (room.appid, room.start_time, int(room.live_status), _dumps(room.to_dict()), room.roomid),
        )

    async def delete_room(self, roomid: int) -> bool:
        return await self._run(self._execute, "DELETE FROM rooms WHERE roomid = ?", (roomid,)) > 0

    async def list_rooms(self, appid: str, start: int, limit: int) -> tuple[list[Room], int]:
        return await self._run(self._list_rooms, appid, max(start, 0), max(limit, 0))

    def _list_rooms(self, appid: str, start: int, limit: int) -> tuple[list[Room], int]:
        with self._read() as db:
            rows = db.execute(
                "SELECT data FROM rooms WHERE appid = ? ORDER BY start_time DESC, roomid DESC LIMIT ? OFFSET ?",
                (appid, limit, start),
            ).fetchall()
            (total,) = db.execute("SELECT COUNT(*) FROM rooms WHERE appid = ?", (appid,)).fetchone()
        return [Room.from_dict(json.loads(data)) for (data,) in rows], total

    async def rooms_in_status(self, statuses: Iterable[int]) -> list[Room]:
        wanted = [int(status) for status in statuses]
        marks = ", ".join("?" * len(wanted))
        rows = await self._run(
            self._all, f"SELECT data FROM rooms WHERE live_status IN ({marks}) ORDER BY roomid", wanted
        )
        return [Room.from_dict(data) for data in rows]

    async def transition(
        self, roomid: int, from_statuses: Iterable[int], to_status: int, changes: dict[str, Any]
    ) -> Room | None:
        check_room_changes(changes)
        allowed = {int(status) for status in from_statuses}
        return await self._run(self._transition, roomid, allowed, int(to_status), changes)

    def _transition(self, roomid: int, allowed: set[int], to_status: int, changes: dict[str, Any]) -> Room | None:
        with self._write():
            data = self._one("SELECT data FROM rooms WHERE roomid = ?", (roomid,))
            if data is None or data["live_status"] not in allowed:
                return None
            room = Room.from_dict({**data, **changes, "live_status": to_status})
            self._update_room(room)
        return room

    # ------------------------------------------------------------ limits

    async def incr_counter(self, key: str, limit: int, ttl_seconds: int) -> bool:
        return await self._run(self._incr_counter, key, limit, ttl_seconds)

    def _incr_counter(self, key: str, limit: int, ttl_seconds: int) -> bool:
        now = time.time()
        with self._write() as db:
            db.execute("DELETE FROM counters WHERE expires_at <= ?", (now,))
            row = db.execute("SELECT count FROM counters WHERE key = ?", (key,)).fetchone()
            count = 0 if row is None else row[0]
            if count >= limit:
                return False
            db.execute(
                "INSERT INTO counters (key, count, expires_at) VALUES (?, 1, ?) "
                "ON CONFLICT (key) DO UPDATE SET count = count + 1",
                (key, now + ttl_seconds),
            )
        return True

    async def counter(self, key: str) -> int:
        return await self._run(self._counter, key)

    def _counter(self, key: str) -> int:
        with self._read() as db:
            row = db.execute(
                "SELECT count FROM counters WHERE key = ? AND expires_at > ?", (key, time.time())
            ).fetchone()
        return 0 if row is None else row[0]

    async def claim_live_slot(self, appid: str, roomid: int, limit: int) -> bool:
        return await self._run(self._claim_live_slot, appid, roomid, limit)

    def _claim_live_slot(self, appid: str, roomid: int, limit: int) -> bool:
        with self._write() as db:
            held = db.execute("SELECT 1 FROM live_slots WHERE appid = ? AND roomid = ?", (appid, roomid)).fetchone()
            if held:
                return True
            (count,) = db.execute("SELECT COUNT(*) FROM live_slots WHERE appid = ?", (appid,)).fetchone()
            if count >= limit:
                return False
            db.execute("INSERT INTO live_slots (appid, roomid) VALUES (?, ?)", (appid, roomid))
        return True

    async def release_live_slot(self, appid: str, roomid: int) -> None:
        await self._run(self._execute, "DELETE FROM live_slots WHERE appid = ? AND roomid = ?", (appid, roomid))

    async def live_slots(self, appid: str) -> set[int]:
        rows = await self._run(self._rows, "SELECT roomid FROM live_slots WHERE appid = ?", (appid,))
        return {roomid for (roomid,) in rows}

    # ------------------------------------------------------------ media

    async def put_media(self, media: Media) -> None:
        await self._run(
            self._execute,
            "INSERT OR REPLACE INTO media (media_id, expires_at, data) VALUES (?, ?, ?)",
            (media.media_id, media.expires_at, _dumps(media.to_dict())),
        )

    async def get_media(self, media_id: str) -> Media | None:
        data = await self._run(self._one, "SELECT data FROM media WHERE media_id = ?", (media_id,))
        return None if data is None else Media.from_dict(data)

    async def expired_media(self, now: float) -> list[Media]:
        rows = await self._run(
            self._all, "SELECT data FROM media WHERE expires_at < ? ORDER BY expires_at, media_id", (now,)
        )
        return [Media.from_dict(data) for data in rows]

    async def delete_media(self, media_id: str) -> None:
        await self._run(self._execute, "DELETE FROM media WHERE media_id = ?", (media_id,))

    # ------------------------------------------------------------ replays

    async def put_replay(self, replay: Replay) -> None:
        await self._run(
            self._execute,
            "INSERT OR REPLACE INTO replays (replay_id, roomid, status, created_at, expire_at, data) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                replay.replay_id,
                replay.roomid,
                replay.status,
                replay.created_at,
                replay.expire_at,
                _dumps(replay.to_dict()),
            ),
        )

    async def get_replay(self, replay_id: str) -> Replay | None:
        data = await self._run(self._one, "SELECT data FROM replays WHERE replay_id = ?", (replay_id,))
        return None if data is None else Replay.from_dict(data)

    async def list_replays(self, roomid: int) -> list[Replay]:
        return await self._replays("roomid = ? ORDER BY created_at, replay_id", roomid)

    async def replays_in_status(self, status: str) -> list[Replay]:
        return await self._replays("status = ? ORDER BY created_at, replay_id", status)

    async def expired_replays(self, now: float) -> list[Replay]:
        return await self._replays("expire_at < ? ORDER BY expire_at, replay_id", now)

    async def _replays(self, where: str, value: Any) -> list[Replay]:
        rows = await self._run(self._all, f"SELECT data FROM replays WHERE {where}", (value,))
        return [Replay.from_dict(data) for data in rows]

    async def delete_replay(self, replay_id: str) -> None:
        await self._run(self._execute, "DELETE FROM replays WHERE replay_id = ?", (replay_id,))

    # ------------------------------------------------------------ events

    async def publish_event(self, event: RoomEvent) -> None:
        if self.shared_events:
            await self._share(event.to_dict())
            return
        # call_soon keeps publication order and never runs a subscriber inside the publisher's call.
        loop = asyncio.get_running_loop()
        for callback in self._subscribers:
            loop.call_soon(callback, event)

    async def publish_message(self, topic: str, message: Doc) -> None:
        if self.shared_events:
            await self._share({_TOPIC: topic, "message": message})
            return
        loop = asyncio.get_running_loop()
        for callback in self._message_subscribers:
            loop.call_soon(callback, topic, message)

    def subscribe_messages(self, callback: Callable[[str, Doc], None]) -> None:
        self._message_subscribers.append(callback)

    async def _share(self, record: Doc) -> None:
        """An event or message for every process sharing the file (``_poll_events`` delivers it)."""
        await self._run(self._execute, "INSERT INTO events (at, data) VALUES (?, ?)", (time.time(), _dumps(record)))

    async def _poll_events(self) -> None:
        trimmed = time.monotonic()
        while True:
            await asyncio.sleep(EVENT_POLL_SECONDS)
            try:
                rows = await self._run(
                    self._rows, "SELECT id, data FROM events WHERE id > ? ORDER BY id LIMIT 1000", (self._last_event,)
                )
                if time.monotonic() - trimmed > 60:
                    trimmed = time.monotonic()
                    cutoff = time.time() - EVENTS_KEPT_SECONDS
                    await self._run(self._execute, "DELETE FROM events WHERE at < ?", (cutoff,))
            except sqlite3.Error as exc:
                log.warning("reading shared room events failed: %s", exc)
                continue
            for event_id, data in rows:
                self._last_event = event_id
                try:
                    record = json.loads(data)
                    if _TOPIC in record:
                        deliver(self._message_subscribers, str(record[_TOPIC]), dict(record["message"]))
                        continue
                    event = RoomEvent.from_dict(record)
                except (ValueError, TypeError, KeyError):
                    log.warning("ignoring a malformed room event: %.200s", data)
                    continue
                deliver(self._subscribers, event)

    def subscribe(self, callback: Callable[[RoomEvent], None]) -> None:
        self._subscribers.append(callback)

    async def log_delivery(self, appid: str, record: dict[str, Any]) -> None:
        await self._run(self._log_delivery, appid, record)

    def _log_delivery(self, appid: str, record: dict[str, Any]) -> None:
        with self._write() as db:
            db.execute("INSERT INTO deliveries (appid, data) VALUES (?, ?)", (appid, _dumps(record)))
            # The id of the oldest record to keep; NULL (nothing deleted) while there are fewer.
            db.execute(
                "DELETE FROM deliveries WHERE appid = ? AND id < ("
                "SELECT id FROM deliveries WHERE appid = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (appid, appid, DELIVERIES_KEPT - 1),
            )

    async def deliveries(self, appid: str, limit: int = 100) -> list[dict[str, Any]]:
        return await self._run(
            self._all,
            "SELECT data FROM deliveries WHERE appid = ? ORDER BY id DESC LIMIT ?",
            (appid, max(limit, 0)),
        )

    # ------------------------------------------------------------ documents

    async def put_doc(self, collection: str, key: str, data: Doc) -> None:
        await self._run(
            self._execute,
            "INSERT INTO docs (collection, key, data) VALUES (?, ?, ?) "
            "ON CONFLICT (collection, key) DO UPDATE SET data = excluded.data",
            (collection, key, _dumps(data)),
        )

    async def add_doc(self, collection: str, key: str, data: Doc) -> bool:
        added = await self._run(
            self._execute,
            "INSERT INTO docs (collection, key, data) VALUES (?, ?, ?) ON CONFLICT (collection, key) DO NOTHING",
            (collection, key, _dumps(data)),
        )
        return added == 1

    async def get_doc(self, collection: str, key: str) -> Doc | None:
        return await self._run(self._one, "SELECT data FROM docs WHERE collection = ? AND key = ?", (collection, key))

    async def delete_doc(self, collection: str, key: str) -> bool:
        deleted = await self._run(self._execute, "DELETE FROM docs WHERE collection = ? AND key = ?", (collection, key))
        return deleted == 1

    async def list_docs(self, collection: str) -> dict[str, Doc]:
        rows = await self._run(self._rows, "SELECT key, data FROM docs WHERE collection = ?", (collection,))
        return {key: json.loads(data) for key, data in rows}

    async def count_docs(self, collection: str) -> int:
        return (await self._run(self._rows, "SELECT COUNT(*) FROM docs WHERE collection = ?", (collection,)))[0][0]

    async def drop_docs(self, collection: str) -> None:
        await self._run(self._execute, "DELETE FROM docs WHERE collection = ?", (collection,))

    async def next_id(self, sequence: str, step: int = 1) -> int:
        rows = await self._run(
            self._rows,
            "INSERT INTO sequences (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value RETURNING value",
            (sequence, step),
        )
        return rows[0][0]

    # ------------------------------------------------------------ logs

    async def append_log(self, name: str, score: float, entry: Doc) -> int:
        return await self._run(self._append_log, name, score, entry)

    def _append_log(self, name: str, score: float, entry: Doc) -> int:
        with self._write() as db:
            (seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM logs WHERE name = ?", (name,)).fetchone()
            db.execute(
                "INSERT INTO logs (name, seq, score, data) VALUES (?, ?, ?, ?)", (name, seq, score, _dumps(entry))
            )
        return seq

    async def read_log(
        self, name: str, low: float = float("-inf"), high: float = float("inf"), limit: int = 1000
    ) -> list[Doc]:
        rows = await self._run(
            self._rows,
            "SELECT seq, data FROM logs WHERE name = ? AND score >= ? AND score <= ? ORDER BY score, seq LIMIT ?",
            (name, low, high, max(limit, 0)),
        )
        return [{**json.loads(data), "seq": seq} for seq, data in rows]

    async def drop_log(self, name: str) -> None:
        await self._run(self._execute, "DELETE FROM logs WHERE name = ?", (name,))
