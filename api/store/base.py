"""The store interface. Both implementations pass the same contract tests (tests/test_store.py).

Rules every implementation keeps:
- Records go in and come out as the dataclasses of ``api.models``; a record read back equals the
  record written (``from_dict(to_dict())``).
- Everything that decides a limit or a status is atomic across processes and nodes:
  ``create_room`` ids, ``transition``, ``incr_counter``, ``claim_live_slot``.
- ``add_doc``, ``next_id`` and ``append_log`` are atomic across processes and nodes too.
- ``publish_event`` and ``publish_message`` reach the subscribers of every process sharing the
  store, this one included, in publication order per room (per topic). The SQLite store's reach
  the publishing store object only, unless it was opened with ``shared_events`` (the workers of
  one box); a cluster of boxes uses Redis.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import Any

from api.models import App, Media, Replay, Room, RoomEvent, Token

log = logging.getLogger("minilive.store")

Doc = dict[str, Any]

# Webhook delivery records kept per app.
DELIVERIES_KEPT = 1000

# Room fields that ``transition`` may not set: the identity, and the status it sets itself.
_FIXED_ROOM_FIELDS = frozenset(("roomid", "appid", "live_status"))
_ROOM_FIELDS = frozenset(f.name for f in dataclasses.fields(Room))


def deliver(subscribers: list[Callable[..., None]], *args: Any) -> None:
    """Hand an event (or a message's topic and body) to every subscriber; one that fails is logged,
    and the others still hear it."""
    for callback in list(subscribers):
        try:
            callback(*args)
        except Exception:
            log.exception("store subscriber failed")


def check_room_changes(changes: dict[str, Any]) -> None:
    """Refuse ``transition`` changes that name no room field or a field it must not set."""
    bad = (changes.keys() - _ROOM_FIELDS) | (changes.keys() & _FIXED_ROOM_FIELDS)
    if bad:
        raise ValueError(f"transition cannot set {', '.join(sorted(bad))}")


class RoomStore(abc.ABC):
    # True when other processes may hold publishers of the same rooms (a cluster over Redis).
    shared = False

    # ------------------------------------------------------------ lifecycle

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect / create the schema. Safe to call on an existing store (data survives)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    # ------------------------------------------------------------ apps and tokens

    @abc.abstractmethod
    async def put_app(self, app: App) -> None:
        """Create or replace an app."""

    @abc.abstractmethod
    async def get_app(self, appid: str) -> App | None: ...

    @abc.abstractmethod
    async def list_apps(self) -> list[App]:
        """All apps, oldest first."""

    @abc.abstractmethod
    async def put_token(self, token: Token) -> None: ...

    @abc.abstractmethod
    async def get_token(self, token: str) -> Token | None:
        """The token if it exists and has not expired (expired tokens may also be purged)."""

    # ------------------------------------------------------------ rooms

    @abc.abstractmethod
    async def create_room(self, room: Room) -> Room:
        """Store a new room under the next room id (ids are unique across apps, increasing,
        starting at 1); ``room.roomid`` is ignored. Returns the stored room."""

    @abc.abstractmethod
    async def get_room(self, roomid: int) -> Room | None: ...

    @abc.abstractmethod
    async def put_room(self, room: Room) -> None:
        """Replace an existing room (edits). Does nothing if the room was deleted."""

    @abc.abstractmethod
    async def delete_room(self, roomid: int) -> bool:
        """True if the room existed."""

    @abc.abstractmethod
    async def list_rooms(self, appid: str, start: int, limit: int) -> tuple[list[Room], int]:
        """One page of an app's rooms ordered by ``start_time`` descending, then ``roomid``
        descending, and the app's total number of rooms."""

    @abc.abstractmethod
    async def rooms_in_status(self, statuses: Iterable[int]) -> list[Room]:
        """Rooms of every app whose ``live_status`` is one of ``statuses`` (for timers and sweeps)."""

    @abc.abstractmethod
    async def transition(
        self, roomid: int, from_statuses: Iterable[int], to_status: int, changes: dict[str, Any]
    ) -> Room | None:
        """Atomically: if the room exists and its status is in ``from_statuses``, set its status to
        ``to_status``, apply ``changes`` (field name -> value) and return the updated room;
        otherwise change nothing and return None. ``changes`` naming no room field, or
        ``roomid``, ``appid`` or ``live_status``, raise ValueError (see ``check_room_changes``)."""

    # ------------------------------------------------------------ limits

    @abc.abstractmethod
    async def incr_counter(self, key: str, limit: int, ttl_seconds: int) -> bool:
        """Atomically count one more use of ``key`` if fewer than ``limit`` were counted within the
        key's lifetime; the key (and its count) disappears ``ttl_seconds`` after its first use.
        True if counted, False if the limit was reached (then nothing is counted)."""

    @abc.abstractmethod
    async def counter(self, key: str) -> int:
        """How many uses ``incr_counter`` counted under ``key`` in its lifetime (0 once it expired)."""

    @abc.abstractmethod
    async def claim_live_slot(self, appid: str, roomid: int, limit: int) -> bool:
        """Atomically mark the room as live for the app's concurrent-lives limit. True if it holds a
        slot now (already holding one counts), False if the app already has ``limit`` others."""

    @abc.abstractmethod
    async def release_live_slot(self, appid: str, roomid: int) -> None: ...

    @abc.abstractmethod
    async def live_slots(self, appid: str) -> set[int]: ...

    # ------------------------------------------------------------ media

    @abc.abstractmethod
    async def put_media(self, media: Media) -> None: ...

    @abc.abstractmethod
    async def get_media(self, media_id: str) -> Media | None:
        """The media record, expired or not (callers decide)."""

    @abc.abstractmethod
    async def expired_media(self, now: float) -> list[Media]: ...

    @abc.abstractmethod
    async def delete_media(self, media_id: str) -> None: ...

    # ------------------------------------------------------------ replays

    @abc.abstractmethod
    async def put_replay(self, replay: Replay) -> None:
        """Create or replace a replay."""

    @abc.abstractmethod
    async def get_replay(self, replay_id: str) -> Replay | None: ...

    @abc.abstractmethod
    async def list_replays(self, roomid: int) -> list[Replay]:
        """A room's replays, oldest first."""

    @abc.abstractmethod
    async def replays_in_status(self, status: str) -> list[Replay]: ...

    @abc.abstractmethod
    async def expired_replays(self, now: float) -> list[Replay]:
        """Replays whose ``expire_at`` is before ``now``."""

    @abc.abstractmethod
    async def delete_replay(self, replay_id: str) -> None: ...

    # ------------------------------------------------------------ events

    @abc.abstractmethod
    async def publish_event(self, event: RoomEvent) -> None:
        """Deliver to the subscribers of every process that shares this store, this one included."""

    @abc.abstractmethod
    def subscribe(self, callback: Callable[[RoomEvent], None]) -> None:
        """Call ``callback`` (on the event loop) for every published event from now on."""

    @abc.abstractmethod
    async def log_delivery(self, appid: str, record: dict[str, Any]) -> None:
        """Keep a webhook delivery record (the most recent ``DELIVERIES_KEPT`` per app are kept)."""

    @abc.abstractmethod
    async def deliveries(self, appid: str, limit: int = 100) -> list[dict[str, Any]]:
        """Recent webhook delivery records of an app, newest first."""

    # ------------------------------------------------------------ documents
    # The room's features (an app's goods library and roles, a room's subscribers, muted users...)
    # are JSON objects in named collections ("goods:wx1"), by key. Order is the caller's to impose.

    @abc.abstractmethod
    async def put_doc(self, collection: str, key: str, data: Doc) -> None:
        """Create or replace one document."""

    @abc.abstractmethod
    async def add_doc(self, collection: str, key: str, data: Doc) -> bool:
        """Atomically create the document if the key is free; False (and nothing written) if it is taken."""

    @abc.abstractmethod
    async def get_doc(self, collection: str, key: str) -> Doc | None: ...

    @abc.abstractmethod
    async def delete_doc(self, collection: str, key: str) -> bool:
        """True if it existed."""

    @abc.abstractmethod
    async def list_docs(self, collection: str) -> dict[str, Doc]:
        """Every document of the collection by key (empty if there is none)."""

    @abc.abstractmethod
    async def count_docs(self, collection: str) -> int: ...

    @abc.abstractmethod
    async def drop_docs(self, collection: str) -> None:
        """Delete the whole collection."""

    @abc.abstractmethod
    async def next_id(self, sequence: str, step: int = 1) -> int:
        """The next number of a named sequence: 1, 2, 3... unique across processes and nodes. With
        ``step``, the sequence moves by that much at once (a shared counter: a room's likes, added
        by every node); 0 reads it (0 for a new sequence)."""

    # ------------------------------------------------------------ logs
    # Append-only records ordered by a score the caller chooses (a room's comments by stream time).

    @abc.abstractmethod
    async def append_log(self, name: str, score: float, entry: Doc) -> int:
        """Append ``entry``; returns its sequence number in the log (1, 2, 3...), which ``read_log``
        adds to the entry as ``seq``."""

    @abc.abstractmethod
    async def read_log(
        self, name: str, low: float = float("-inf"), high: float = float("inf"), limit: int = 1000
    ) -> list[Doc]:
        """Entries with ``low <= score <= high`` ordered by score then ``seq``, at most ``limit``."""

    @abc.abstractmethod
    async def drop_log(self, name: str) -> None: ...

    # ------------------------------------------------------------ messages
    # Realtime room traffic (comments, likes, goods pushed): like events, every process sharing the
    # store hears every message, in publication order per topic; nothing is kept.

    @abc.abstractmethod
    async def publish_message(self, topic: str, message: Doc) -> None: ...

    @abc.abstractmethod
    def subscribe_messages(self, callback: Callable[[str, Doc], None]) -> None:
        """Call ``callback(topic, message)`` (on the event loop) for every message from now on."""
