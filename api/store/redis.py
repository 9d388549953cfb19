"""The shared store: one Redis server (or primary) for many minilive nodes.

Keys live under a prefix (``minilive:`` by default). Everything that reads, decides and writes is
one Lua script, so it is atomic across nodes. The scripts build key names from the prefix, which a
single Redis (with replicas or Sentinel) allows and Redis Cluster does not.

Layout (after the prefix):
  apps                      hash appid -> App JSON
  token:{token}             Token JSON, expiring with the token
  roomid                    INCR counter of room ids
  room:{roomid}             hash: Room field -> the field's JSON value
  rooms:{appid}             sorted set of zero-padded room ids, scored by start_time
  status:{live_status}      set of room ids
  counter:{key}             INCR counter with a TTL
  live_slots:{appid}        set of room ids
  media:{media_id}          Media JSON;  media_expiry: sorted set scored by expires_at
  replay:{replay_id}        Replay JSON; room_replays:{roomid} (scored by created_at),
                            replay_status:{status}, replay_expiry (scored by expire_at)
  deliveries:{appid}        list of delivery JSON, newest first, capped
  events                    the pub/sub channel of RoomEvent JSON
  messages                  the pub/sub channel of {"topic", "message"} JSON (publish_message)
  doc:{collection}          hash key -> document JSON
  seq:{name}                INCR counter (next_id)
  log:{name}                sorted set scored by the entry's score; members are the zero-padded
                            seq followed by the entry JSON; logseq:{name} counts the seqs

A room is a hash of JSON values rather than one JSON string so that ``transition`` changes only
the fields it is given, inside Redis, without Lua re-encoding the whole record (Redis's cjson turns
empty lists into objects and keeps only 14 significant digits of a float).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis import exceptions

from api.errors import StoreUnavailable
from api.models import App, Media, Replay, Room, RoomEvent, Token
from api.store.base import DELIVERIES_KEPT, Doc, RoomStore, check_room_changes, deliver

log = logging.getLogger("minilive.store")

# Shared by the room scripts: ARGV[1] is the key prefix. A room's place in its app's sorted set is
# its zero-padded id, so that rooms with the same start_time sort by id.
_ROOM_LUA = """
local p = ARGV[1]
local function room_key(id) return p .. 'room:' .. id end
local function member(id) return string.format('%020d', tonumber(id)) end
local function index(id)
  local key = room_key(id)
  local appid = cjson.decode(redis.call('HGET', key, 'appid'))
  redis.call('ZADD', p .. 'rooms:' .. appid, redis.call('HGET', key, 'start_time'), member(id))
  redis.call('SADD', p .. 'status:' .. redis.call('HGET', key, 'live_status'), id)
end
local function unindex(id)
  local key = room_key(id)
  local appid = cjson.decode(redis.call('HGET', key, 'appid'))
  redis.call('ZREM', p .. 'rooms:' .. appid, member(id))
  redis.call('SREM', p .. 'status:' .. redis.call('HGET', key, 'live_status'), id)
end
"""

# ARGV: prefix, field, value, field, value... (every Room field but roomid)
_CREATE_ROOM = (
    _ROOM_LUA
    + """
local id = redis.call('INCR', p .. 'roomid')
redis.call('HSET', room_key(id), 'roomid', id, unpack(ARGV, 2))
index(id)
return id
"""
)

# ARGV: prefix, roomid, field, value... (every Room field)
_PUT_ROOM = (
    _ROOM_LUA
    + """
local id = ARGV[2]
if redis.call('EXISTS', room_key(id)) == 0 then return 0 end
unindex(id)
redis.call('DEL', room_key(id))
redis.call('HSET', room_key(id), unpack(ARGV, 3))
index(id)
return 1
"""
)

# ARGV: prefix, roomid
_DELETE_ROOM = (
    _ROOM_LUA
    + """
local id = ARGV[2]
if redis.call('EXISTS', room_key(id)) == 0 then return 0 end
unindex(id)
redis.call('DEL', room_key(id))
return 1
"""
)

# ARGV: prefix, roomid, to_status, allowed statuses joined by commas, field, value...
_TRANSITION = (
    _ROOM_LUA
    + """
local id = ARGV[2]
local status = redis.call('HGET', room_key(id), 'live_status')
if not status then return nil end
local allowed = false
for s in string.gmatch(ARGV[4], '[^,]+') do
  if s == status then allowed = true end
end
if not allowed then return nil end
unindex(id)
redis.call('HSET', room_key(id), 'live_status', ARGV[3], unpack(ARGV, 5))
index(id)
return redis.call('HGETALL', room_key(id))
"""
)

# ARGV: prefix, appid, start, limit. Returns the app's room count, then one HGETALL per room.
_LIST_ROOMS = (
    _ROOM_LUA
    + """
local rooms = p .. 'rooms:' .. ARGV[2]
local start, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {redis.call('ZCARD', rooms)}
if limit > 0 then
  for _, m in ipairs(redis.call('ZREVRANGE', rooms, start, start + limit - 1)) do
    out[#out + 1] = redis.call('HGETALL', room_key(tonumber(m)))
  end
end
return out
"""
)

# ARGV: prefix, status... Returns one HGETALL per room.
_ROOMS_IN_STATUS = (
    _ROOM_LUA
    + """
local sets = {}
for i = 2, #ARGV do sets[#sets + 1] = p .. 'status:' .. ARGV[i] end
local out = {}
for _, id in ipairs(redis.call('SUNION', unpack(sets))) do
  out[#out + 1] = redis.call('HGETALL', room_key(id))
end
return out
"""
)

# KEYS: the counter. ARGV: limit, ttl in milliseconds. The TTL starts at the first use.
_INCR_COUNTER = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count >= tonumber(ARGV[1]) then return 0 end
if redis.call('INCR', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""

# KEYS: the app's slot set. ARGV: roomid, limit.
_CLAIM_LIVE_SLOT = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""

# ARGV[1] is the prefix; a replay's indexes are found from its stored JSON.
_REPLAY_LUA = """
local p = ARGV[1]
local function unindex(id)
  local old = redis.call('GET', p .. 'replay:' .. id)
  if not old then return false end
  local replay = cjson.decode(old)
  redis.call('ZREM', p .. 'room_replays:' .. replay.roomid, id)
  redis.call('SREM', p .. 'replay_status:' .. replay.status, id)
  redis.call('ZREM', p .. 'replay_expiry', id)
  return true
end
"""

# ARGV: prefix, replay_id, JSON, roomid, status, created_at, expire_at
_PUT_REPLAY = (
    _REPLAY_LUA
    + """
local id = ARGV[2]
unindex(id)
redis.call('SET', p .. 'replay:' .. id, ARGV[3])
redis.call('ZADD', p .. 'room_replays:' .. ARGV[4], ARGV[6], id)
redis.call('SADD', p .. 'replay_status:' .. ARGV[5], id)
redis.call('ZADD', p .. 'replay_expiry', ARGV[7], id)
"""
)

# ARGV: prefix, replay_id
_DELETE_REPLAY = (
    _REPLAY_LUA
    + """
if unindex(ARGV[2]) then redis.call('DEL', p .. 'replay:' .. ARGV[2]) end
"""
)


# ARGV: prefix, log name, score, entry JSON. Returns the entry's seq.
_APPEND_LOG = """
local seq = redis.call('INCR', ARGV[1] .. 'logseq:' .. ARGV[2])
redis.call('ZADD', ARGV[1] .. 'log:' .. ARGV[2], ARGV[3], string.format('%020d', seq) .. ARGV[4])
return seq
"""
SEQ_DIGITS = 20


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _hash_fields(data: dict[str, Any]) -> list[str]:
    """Field/value pairs for HSET: each value as JSON."""
    return [item for name, value in data.items() for item in (name, _dumps(value))]


def _room_fields(room: Room) -> dict[str, Any]:
    return {**room.to_dict(), "live_status": int(room.live_status)}


def _room(fields: dict[str, str]) -> Room | None:
    """A room from its hash; None for a missing room."""
    return Room.from_dict({name: json.loads(value) for name, value in fields.items()}) if fields else None


def _scripted_room(flat: list[str]) -> Room | None:
    """A room from the flat field/value list that HGETALL returns inside a script."""
    return _room(dict(zip(flat[::2], flat[1::2], strict=True)))


def _reaching_redis(cls: type[RedisStore]) -> type[RedisStore]:
    """Every public coroutine method of ``cls`` but open/close raises StoreUnavailable, which names
    the server and the reason, when Redis cannot be reached (the API answers it; nothing else breaks)."""

    def translated(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        async def call(self: RedisStore, *args: Any, **kwargs: Any) -> Any:
            try:
                return await method(self, *args, **kwargs)
            except (exceptions.ConnectionError, exceptions.TimeoutError) as exc:
                raise StoreUnavailable(f"the store (redis at {self.shown_url}) is unreachable: {exc}") from exc

        return call

    for name, method in list(vars(cls).items()):
        if not name.startswith("_") and name not in ("open", "close") and inspect.iscoroutinefunction(method):
            setattr(cls, name, translated(method))
    return cls


@_reaching_redis
class RedisStore(RoomStore):
    shared = True

    def __init__(self, url: str, *, prefix: str = "minilive:") -> None:
        parts = urlsplit(url)
        # The URL as logs and errors show it: without a password.
        self.shown_url = f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"
        self.url = url
        self.prefix = prefix
        # A short connect timeout: with Redis gone, an API call fails at once (503 with the reason). No
        # read timeout: with one, a task cancelled while it waited for Redis (a server stopping) could
        # miss its cancellation inside redis-py and never end.
        self._redis = aioredis.from_url(url, decode_responses=True, socket_connect_timeout=2)
        self._channel = self._key("events")
        self._messages = self._key("messages")
        self._message_subscribers: list[Callable[[str, Doc], None]] = []
        self._pubsub: aioredis.client.PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._subscribers: list[Callable[[RoomEvent], None]] = []
        script = self._redis.register_script
        self._create_room = script(_CREATE_ROOM)
        self._put_room = script(_PUT_ROOM)
        self._delete_room = script(_DELETE_ROOM)
        self._transition = script(_TRANSITION)
        self._list_rooms = script(_LIST_ROOMS)
        self._rooms_in_status = script(_ROOMS_IN_STATUS)
        self._incr_counter = script(_INCR_COUNTER)
        self._claim_live_slot = script(_CLAIM_LIVE_SLOT)
        self._put_replay = script(_PUT_REPLAY)
        self._delete_replay = script(_DELETE_REPLAY)
        self._append_log = script(_APPEND_LOG)

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        self._pubsub = self._redis.pubsub()
        await self._pubsub.subscribe(self._channel, self._messages)
        # Wait for the confirmations: an event published once open() returns must reach us.
        for _ in range(2):
            confirmation = await self._pubsub.get_message(timeout=10)
            if confirmation is None or confirmation["type"] != "subscribe":
                raise exceptions.ConnectionError(f"no confirmation of the subscription to {self._channel}")
        self._listener = asyncio.create_task(self._listen(), name="minilive-redis-events")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._pubsub is not None:
            await self._pubsub.aclose()
            self._pubsub = None
        await self._redis.aclose()

    def _key(self, *parts: object) -> str:
        return self.prefix + ":".join(str(part) for part in parts)

    async def _records(self, keys: list[str]) -> list[dict[str, Any]]:
        """The JSON records at ``keys``, skipping those deleted meanwhile."""
        if not keys:
            return []
        return [json.loads(raw) for raw in await self._redis.mget(keys) if raw is not None]

    # ------------------------------------------------------------ apps and tokens

    async def put_app(self, app: App) -> None:
        await self._redis.hset(self._key("apps"), app.appid, _dumps(app.to_dict()))

    async def get_app(self, appid: str) -> App | None:
        raw = await self._redis.hget(self._key("apps"), appid)
        return None if raw is None else App.from_dict(json.loads(raw))

    async def list_apps(self) -> list[App]:
        apps = [App.from_dict(json.loads(raw)) for raw in await self._redis.hvals(self._key("apps"))]
        return sorted(apps, key=lambda app: (app.created_at, app.appid))

    async def put_token(self, token: Token) -> None:
        ttl_ms = int((token.expires_at - time.time()) * 1000)
        key = self._key("token", token.token)
        if ttl_ms > 0:
            await self._redis.set(key, _dumps(token.to_dict()), px=ttl_ms)
        else:
            await self._redis.delete(key)

    async def get_token(self, token: str) -> Token | None:
        raw = await self._redis.get(self._key("token", token))
        record = None if raw is None else Token.from_dict(json.loads(raw))
        # Redis's own expiry may lag by a moment; the record's time decides.
        return record if record is not None and record.expires_at > time.time() else None

    # ------------------------------------------------------------ rooms

    async def create_room(self, room: Room) -> Room:
        fields = _room_fields(room)
        del fields["roomid"]
        roomid = await self._create_room(args=[self.prefix, *_hash_fields(fields)])
        return Room.from_dict({**fields, "roomid": roomid})

    async def get_room(self, roomid: int) -> Room | None:
        return _room(await self._redis.hgetall(self._key("room", roomid)))

    async def put_room(self, room: Room) -> None:
        await self._put_room(args=[self.prefix, room.roomid, *_hash_fields(_room_fields(room))])

    async def delete_room(self, roomid: int) -> bool:
        return bool(await self._delete_room(args=[self.prefix, roomid]))

    async def list_rooms(self, appid: str, start: int, limit: int) -> tuple[list[Room], int]:
        total, *rooms = await self._list_rooms(args=[self.prefix, appid, max(start, 0), max(limit, 0)])
        return [room for room in map(_scripted_room, rooms) if room is not None], int(total)

    async def rooms_in_status(self, statuses: Iterable[int]) -> list[Room]:
        wanted = [int(status) for status in statuses]
        if not wanted:
            return []
        rooms = [room for room in map(_scripted_room, await self._rooms_in_status(args=[self.prefix, *wanted])) if room]
        return sorted(rooms, key=lambda room: room.roomid)

    async def transition(
        self, roomid: int, from_statuses: Iterable[int], to_status: int, changes: dict[str, Any]
    ) -> Room | None:
        check_room_changes(changes)
        allowed = ",".join(str(int(status)) for status in from_statuses)
        flat = await self._transition(args=[self.prefix, roomid, int(to_status), allowed, *_hash_fields(changes)])
        return None if flat is None else _scripted_room(flat)

    # ------------------------------------------------------------ limits

    async def incr_counter(self, key: str, limit: int, ttl_seconds: int) -> bool:
        return bool(await self._incr_counter(keys=[self._key("counter", key)], args=[limit, ttl_seconds * 1000]))

    async def counter(self, key: str) -> int:
        return int(await self._redis.get(self._key("counter", key)) or 0)

    async def claim_live_slot(self, appid: str, roomid: int, limit: int) -> bool:
        return bool(await self._claim_live_slot(keys=[self._key("live_slots", appid)], args=[roomid, limit]))

    async def release_live_slot(self, appid: str, roomid: int) -> None:
        await self._redis.srem(self._key("live_slots", appid), roomid)

    async def live_slots(self, appid: str) -> set[int]:
        return {int(roomid) for roomid in await self._redis.smembers(self._key("live_slots", appid))}

    # ------------------------------------------------------------ media

    async def put_media(self, media: Media) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key("media", media.media_id), _dumps(media.to_dict()))
            pipe.zadd(self._key("media_expiry"), {media.media_id: media.expires_at})
            await pipe.execute()

    async def get_media(self, media_id: str) -> Media | None:
        raw = await self._redis.get(self._key("media", media_id))
        return None if raw is None else Media.from_dict(json.loads(raw))

    async def expired_media(self, now: float) -> list[Media]:
        ids = await self._redis.zrangebyscore(self._key("media_expiry"), "-inf", f"({now!r}")
        return [Media.from_dict(data) for data in await self._records([self._key("media", i) for i in ids])]

    async def delete_media(self, media_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key("media", media_id))
            pipe.zrem(self._key("media_expiry"), media_id)
            await pipe.execute()

    # ------------------------------------------------------------ replays

    async def put_replay(self, replay: Replay) -> None:
        await self._put_replay(
            args=[
                self.prefix,
                replay.replay_id,
                _dumps(replay.to_dict()),
                replay.roomid,
                replay.status,
                repr(replay.created_at),
                repr(replay.expire_at),
            ]
        )

    async def get_replay(self, replay_id: str) -> Replay | None:
        raw = await self._redis.get(self._key("replay", replay_id))
        return None if raw is None else Replay.from_dict(json.loads(raw))

    async def list_replays(self, roomid: int) -> list[Replay]:
        return await self._replays(await self._redis.zrange(self._key("room_replays", roomid), 0, -1))

    async def replays_in_status(self, status: str) -> list[Replay]:
        replays = await self._replays(await self._redis.smembers(self._key("replay_status", status)))
        return sorted(replays, key=lambda replay: (replay.created_at, replay.replay_id))

    async def expired_replays(self, now: float) -> list[Replay]:
        return await self._replays(await self._redis.zrangebyscore(self._key("replay_expiry"), "-inf", f"({now!r}"))

    async def _replays(self, ids: Iterable[str]) -> list[Replay]:
        return [Replay.from_dict(data) for data in await self._records([self._key("replay", i) for i in ids])]

    async def delete_replay(self, replay_id: str) -> None:
        await self._delete_replay(args=[self.prefix, replay_id])

    # ------------------------------------------------------------ events

    async def publish_event(self, event: RoomEvent) -> None:
        await self._redis.publish(self._channel, _dumps(event.to_dict()))

    def subscribe(self, callback: Callable[[RoomEvent], None]) -> None:
        self._subscribers.append(callback)

    async def _listen(self) -> None:
        assert self._pubsub is not None
        while True:
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            except (exceptions.ConnectionError, exceptions.TimeoutError) as exc:
                # The next read reconnects and subscribes again; events published meanwhile are lost.
                log.warning("redis event channel lost (%s); reconnecting", exc)
                await asyncio.sleep(1)
                continue
            if message is None:
                continue
            try:
                record = json.loads(message["data"])
                if message["channel"] == self._messages:
                    deliver(self._message_subscribers, str(record["topic"]), dict(record["message"]))
                    continue
                event = RoomEvent.from_dict(record)
            except (ValueError, TypeError, KeyError):
                log.warning("ignoring a malformed room event: %.200s", message["data"])
                continue
            deliver(self._subscribers, event)

    async def log_delivery(self, appid: str, record: dict[str, Any]) -> None:
        key = self._key("deliveries", appid)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lpush(key, _dumps(record))
            pipe.ltrim(key, 0, DELIVERIES_KEPT - 1)
            await pipe.execute()

    async def deliveries(self, appid: str, limit: int = 100) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        return [json.loads(raw) for raw in await self._redis.lrange(self._key("deliveries", appid), 0, limit - 1)]

    # ------------------------------------------------------------ messages

    async def publish_message(self, topic: str, message: Doc) -> None:
        await self._redis.publish(self._messages, _dumps({"topic": topic, "message": message}))

    def subscribe_messages(self, callback: Callable[[str, Doc], None]) -> None:
        self._message_subscribers.append(callback)

    # ------------------------------------------------------------ documents

    async def put_doc(self, collection: str, key: str, data: Doc) -> None:
        await self._redis.hset(self._key("doc", collection), key, _dumps(data))

    async def add_doc(self, collection: str, key: str, data: Doc) -> bool:
        return bool(await self._redis.hsetnx(self._key("doc", collection), key, _dumps(data)))

    async def get_doc(self, collection: str, key: str) -> Doc | None:
        raw = await self._redis.hget(self._key("doc", collection), key)
        return None if raw is None else json.loads(raw)

    async def delete_doc(self, collection: str, key: str) -> bool:
        return bool(await self._redis.hdel(self._key("doc", collection), key))

    async def list_docs(self, collection: str) -> dict[str, Doc]:
        return {key: json.loads(raw) for key, raw in (await self._redis.hgetall(self._key("doc", collection))).items()}

    async def count_docs(self, collection: str) -> int:
        return await self._redis.hlen(self._key("doc", collection))

    async def drop_docs(self, collection: str) -> None:
        await self._redis.delete(self._key("doc", collection))

    async def next_id(self, sequence: str, step: int = 1) -> int:
        return await self._redis.incrby(self._key("seq", sequence), step)

    # ------------------------------------------------------------ logs

    async def append_log(self, name: str, score: float, entry: Doc) -> int:
        return int(await self._append_log(args=[self.prefix, name, repr(float(score)), _dumps(entry)]))

    async def read_log(
        self, name: str, low: float = float("-inf"), high: float = float("inf"), limit: int = 1000
    ) -> list[Doc]:
        if limit <= 0:
            return []
        members = await self._redis.zrangebyscore(self._key("log", name), _bound(low), _bound(high), start=0, num=limit)
        return [{**json.loads(m[SEQ_DIGITS:]), "seq": int(m[:SEQ_DIGITS])} for m in members]

    async def drop_log(self, name: str) -> None:
        await self._redis.delete(self._key("log", name), self._key("logseq", name))


def _bound(value: float) -> str:
    """A score bound as Redis spells it (``-inf``/``+inf`` for the open ends)."""
    return "-inf" if value == float("-inf") else "+inf" if value == float("inf") else repr(float(value))
