"""Stores for the control plane: one interface (base.RoomStore), an SQLite and a Redis implementation that
pass the same contract tests. May import: api.models and api.errors only; no HTTP, no media.
open_store() picks the one the settings ask for."""

from __future__ import annotations

from pathlib import Path

from api.store.base import RoomStore


def open_store(data_dir: Path, redis_url: str = "", shared_events: bool = False) -> RoomStore:
    """The store the settings ask for (not yet opened: ``await store.open()``); ``shared_events``: the
    SQLite file is shared by several processes, whose subscribers all hear every event."""
    if redis_url:
        from api.store.redis import RedisStore

        return RedisStore(redis_url)
    from api.store.sqlite import SqliteStore

    return SqliteStore(data_dir / "minilive.db", shared_events)


__all__ = ["RoomStore", "open_store"]
