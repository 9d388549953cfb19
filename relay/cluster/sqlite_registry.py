"""The stream registry of one box: a SQLite file in the data dir, shared by the box's processes.

Every call runs on one dedicated thread, so the event loop (which carries the live video fan-out)
never waits on the disk. Calls that read, decide and write run in ``BEGIN IMMEDIATE`` transactions,
so they stay atomic across the processes that share the file. Times are ``time.time()``, the clock
those processes share: a row whose ``expires_at`` has passed counts as absent, and the calls that
write purge such rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from relay.cluster.registry import GRACE, LIVE, Holder, Node, RegistryUnavailable

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    key TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    url TEXT NOT NULL,
    state TEXT NOT NULL,
    since REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS streams_node ON streams (node);
CREATE INDEX IF NOT EXISTS streams_expires_at ON streams (expires_at);
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    info TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS nodes_expires_at ON nodes (expires_at);
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# How long a call waits for another process's write lock before it fails: a heartbeat that waited
# longer would let the entries it refreshes expire anyway.
BUSY_TIMEOUT = 2.0


class SqliteRegistry:
    def __init__(self, path: Path, ttl: float = 6.0) -> None:
        self.path = path
        self.ttl = ttl
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minilive-registry")
        await self._run(self._connect)

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._run(self._disconnect)
        self._executor.shutdown()
        self._executor = None

    def _connect(self) -> None:
        # Autocommit mode: transactions are opened explicitly where they are needed.
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
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
            raise RuntimeError("registry is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except sqlite3.OperationalError as exc:  # locked past BUSY_TIMEOUT, disk I/O error, unreadable file
            raise RegistryUnavailable(f"sqlite at {self.path}: {exc}") from exc

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

    # ------------------------------------------------------------ streams

    async def claim(self, key: str, node: str, url: str, takeover: bool) -> Holder | None:
        return await self._run(self._claim, key, node, url, takeover)

    def _claim(self, key: str, node: str, url: str, takeover: bool) -> Holder | None:
        now = time.time()
        with self._write() as db:
            db.execute("DELETE FROM streams WHERE expires_at <= ?", (now,))
            row = db.execute("SELECT node, url, state, since FROM streams WHERE key = ?", (key,)).fetchone()
            if row is not None:
                holder = Holder(*row)
                if holder.node != node and holder.state == LIVE and not takeover:
                    return holder
            db.execute(
                "INSERT OR REPLACE INTO streams (key, node, url, state, since, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                (key, node, url, LIVE, now, now + self.ttl),
            )
        return None

    async def set_state(self, key: str, node: str, state: str) -> bool:
        if state not in (LIVE, GRACE):
            raise ValueError(f"unknown state {state!r}")
        return await self._run(self._set_state, key, node, state)

    def _set_state(self, key: str, node: str, state: str) -> bool:
        now = time.time()
        sql = "UPDATE streams SET state = ?, expires_at = ? WHERE key = ? AND node = ? AND expires_at > ?"
        return self._execute(sql, (state, now + self.ttl, key, node, now)) > 0

    async def release(self, key: str, node: str) -> None:
        await self._run(self._execute, "DELETE FROM streams WHERE key = ? AND node = ?", (key, node))

    async def lookup(self, key: str) -> Holder | None:
        rows = await self._run(
            self._rows,
            "SELECT node, url, state, since FROM streams WHERE key = ? AND expires_at > ?",
            (key, time.time()),
        )
        return Holder(*rows[0]) if rows else None

    # ------------------------------------------------------------ nodes

    async def heartbeat(self, node: str, url: str, entries: dict[str, str], info: dict[str, Any]) -> list[str]:
        unknown = set(entries.values()) - {LIVE, GRACE}
        if unknown:
            raise ValueError(f"unknown states {sorted(unknown)}")
        return await self._run(self._heartbeat, node, url, entries, json.dumps(info, ensure_ascii=False))

    def _heartbeat(self, node: str, url: str, entries: dict[str, str], info: str) -> list[str]:
        now = time.time()
        expires_at = now + self.ttl
        taken = []
        with self._write() as db:
            db.execute("DELETE FROM streams WHERE expires_at <= ?", (now,))
            db.execute("DELETE FROM nodes WHERE expires_at <= ?", (now,))
            db.execute(
                "INSERT OR REPLACE INTO nodes (node, url, info, expires_at) VALUES (?, ?, ?, ?)",
                (node, url, info, expires_at),
            )
            for key, state in entries.items():
                # Written when absent (expired and purged above), refreshed when ours, left to its holder else.
                written = db.execute(
                    "INSERT INTO streams (key, node, url, state, since, expires_at) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET url = excluded.url, state = excluded.state, "
                    "expires_at = excluded.expires_at WHERE streams.node = excluded.node",
                    (key, node, url, state, now, expires_at),
                ).rowcount
                if not written:
                    taken.append(key)
        return taken

    async def nodes(self) -> list[Node]:
        rows = await self._run(
            self._rows, "SELECT node, url, info FROM nodes WHERE expires_at > ? ORDER BY node", (time.time(),)
        )
        return [Node(node, url, json.loads(info)) for node, url, info in rows]

    async def forget_node(self, node: str) -> None:
        await self._run(self._forget_node, node)

    def _forget_node(self, node: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM streams WHERE node = ?", (node,))
            db.execute("DELETE FROM nodes WHERE node = ?", (node,))

    async def shared_secret(self, proposed: str) -> str:
        return await self._run(self._shared_secret, proposed)

    def _shared_secret(self, proposed: str) -> str:
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO secrets (name, value) VALUES ('node', ?)", (proposed,))
            return db.execute("SELECT value FROM secrets WHERE name = 'node'").fetchone()[0]

    # ------------------------------------------------------------ helpers

    def _execute(self, sql: str, params: tuple[Any, ...]) -> int:
        assert self._db is not None
        return self._db.execute(sql, params).rowcount

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        assert self._db is not None
        return self._db.execute(sql, params).fetchall()
