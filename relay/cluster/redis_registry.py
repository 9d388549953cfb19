"""The stream registry of a cluster: one Redis server (or primary) shared by every node.

Layout (after the prefix, ``minilive:`` by default):
  cluster:stream:{key}   the holder's JSON (node, url, state, since), expiring ``ttl`` after its last write
  cluster:node:{node}    the node's JSON (url, info), expiring ``ttl`` after its last heartbeat
  cluster:nodes          set of node ids; the ids whose node key expired are pruned when listing
  cluster:held:{node}    set of the stream keys the node wrote, so ``forget_node`` finds its entries
                         without scanning the keyspace (each is checked against its holder first)

Everything that reads, decides and writes is one Lua script, atomic across nodes; like the store's,
the scripts reach keys they are not given, which a single Redis (with replicas or Sentinel) allows
and Redis Cluster does not. A stream key whose value is not a holder's JSON (of another type, or
written by hand) counts as free.

The client gives up quickly (1 s to connect, 2 s for a reply, no retries) and every failure to reach
Redis is a ``RegistryUnavailable``: the heartbeat must not stall past the TTL it keeps. The
connection pool reconnects by itself once Redis is back.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis.asyncio as aioredis
from redis import exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from relay.cluster.registry import GRACE, LIVE, Holder, Node, RegistryUnavailable

# Shared by the stream scripts. holder(key): the decoded holder at ``key``, nil when there is none or
# the value is not a holder ('live' and 'grace' are LIVE and GRACE). put(...): write a holder and
# index it in its node's held set. Lua's cjson keeps 14 significant digits of ``since``: 0.1 ms.
_HOLDER_LUA = """
local function holder(key)
  local raw = redis.pcall('GET', key)
  if type(raw) ~= 'string' then return nil end
  local ok, h = pcall(cjson.decode, raw)
  if ok and type(h) == 'table' and type(h.node) == 'string' and type(h.url) == 'string'
      and (h.state == 'live' or h.state == 'grace') and type(h.since) == 'number' then
    return h, raw
  end
  return nil
end
local function put(key, h, held, ttl)
  redis.call('SET', key, cjson.encode(h), 'PX', ttl)
  redis.call('SADD', held, key)
  redis.call('PEXPIRE', held, ttl)
end
"""

# KEYS: stream. Returns the holder's JSON, or false.
_LOOKUP = (
    _HOLDER_LUA
    + """
local h, raw = holder(KEYS[1])
if h then return raw end
return false
"""
)

# KEYS: stream, the node's held set. ARGV: node, url, now, ttl in ms, takeover ('1' or '0').
# Returns false when the node holds the key now, else the JSON of the holder that keeps it.
_CLAIM = (
    _HOLDER_LUA
    + """
local h, raw = holder(KEYS[1])
if h and h.node ~= ARGV[1] and h.state == 'live' and ARGV[5] ~= '1' then return raw end
put(KEYS[1], {node = ARGV[1], url = ARGV[2], state = 'live', since = tonumber(ARGV[3])}, KEYS[2], ARGV[4])
return false
"""
)

# KEYS: stream, the node's held set. ARGV: node, state, ttl in ms. Returns 1 if the node holds the key.
_SET_STATE = (
    _HOLDER_LUA
    + """
local h = holder(KEYS[1])
if not h or h.node ~= ARGV[1] then return 0 end
h.state = ARGV[2]
put(KEYS[1], h, KEYS[2], ARGV[3])
return 1
"""
)

# KEYS: stream, the node's held set. ARGV: node.
_RELEASE = (
    _HOLDER_LUA
    + """
local h = holder(KEYS[1])
if h and h.node == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('SREM', KEYS[2], KEYS[1])
"""
)

# KEYS: node, nodes set, the node's held set, then one stream per entry. ARGV: node, the node's
# JSON, ttl in ms, url, now, then the entries' states in the order of their keys. Returns the
# 1-based positions of the entries another node holds.
_HEARTBEAT = (
    _HOLDER_LUA
    + """
local node, ttl, url, now = ARGV[1], ARGV[3], ARGV[4], tonumber(ARGV[5])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
redis.call('SADD', KEYS[2], node)
redis.call('PEXPIRE', KEYS[3], ttl)
local taken = {}
for i = 4, #KEYS do
  local key, state = KEYS[i], ARGV[i + 2]
  local h = holder(key)
  if h and h.node ~= node then
    taken[#taken + 1] = i - 3
    redis.call('SREM', KEYS[3], key)
  elseif h then
    h.url, h.state = url, state
    put(key, h, KEYS[3], ttl)
  else
    put(key, {node = node, url = url, state = state, since = now}, KEYS[3], ttl)
  end
end
return taken
"""
)

# KEYS: nodes set. ARGV: the node keys' prefix. Returns node id, node JSON, node id, node JSON...
_NODES = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local raw = redis.call('GET', ARGV[1] .. id)
  if raw then
    out[#out + 1] = id
    out[#out + 1] = raw
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return out
"""

# KEYS: node, nodes set, the node's held set. ARGV: node.
_FORGET_NODE = (
    _HOLDER_LUA
    + """
for _, key in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local h = holder(key)
  if h and h.node == ARGV[1] then redis.call('DEL', key) end
end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('SREM', KEYS[2], ARGV[1])
"""
)


def _holder(raw: str | None) -> Holder | None:
    """The holder in the JSON a script returned (the script checked its fields)."""
    if raw is None:
        return None
    data = json.loads(raw)
    return Holder(data["node"], data["url"], data["state"], float(data["since"]))


def _node(node: str, raw: str) -> Node | None:
    """A node from its key's JSON; None for a value that is not one."""
    try:
        data = json.loads(raw)
        url, info = data["url"], data["info"]
    except (ValueError, TypeError, KeyError):
        return None
    return Node(node, url, info) if isinstance(url, str) and isinstance(info, dict) else None


def _shown(url: str) -> str:
    """``url`` with its password masked, for messages."""
    parts = urlsplit(url)
    shown = url
    userinfo, at, host = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        shown = shown.replace(parts.netloc, f"{userinfo.split(':', 1)[0]}:***@{host}", 1)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(name == "password" for name, _ in query):  # unix:///path?password=...
        masked = [(name, "***" if name == "password" else value) for name, value in query]
        shown = shown.partition("?")[0] + "?" + urlencode(masked, safe="*")
    return shown


class RedisRegistry:
    def __init__(self, url: str, ttl: float = 6.0, prefix: str = "minilive:") -> None:
        self.url = url
        self.ttl = ttl
        self.prefix = prefix
        self._ttl_ms = max(1, round(ttl * 1000))
        # A pool that waits for a free connection (up to 2 s) rather than failing at once: a burst of
        # lookups must not refuse a publish with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=64,
            timeout=2,
            decode_responses=True,
            socket_connect_timeout=1,
            socket_timeout=2,
            retry=Retry(NoBackoff(), 0),
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._nodes_key = self._key("nodes")
        script = self._redis.register_script
        self._lookup = script(_LOOKUP)
        self._claim = script(_CLAIM)
        self._set_state = script(_SET_STATE)
        self._release = script(_RELEASE)
        self._heartbeat = script(_HEARTBEAT)
        self._nodes = script(_NODES)
        self._forget_node = script(_FORGET_NODE)

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Check that Redis answers, so that a wrong URL shows at start."""
        with self._reaching():
            await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)

    def _key(self, *parts: str) -> str:
        return self.prefix + "cluster:" + ":".join(parts)

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        try:
            yield
        except (exceptions.ConnectionError, exceptions.TimeoutError, OSError) as exc:
            raise RegistryUnavailable(f"redis at {_shown(self.url)}: {exc}") from exc

    # ------------------------------------------------------------ streams

    async def claim(self, key: str, node: str, url: str, takeover: bool) -> Holder | None:
        keys = [self._key("stream", key), self._key("held", node)]
        args = [node, url, repr(time.time()), self._ttl_ms, "1" if takeover else "0"]
        with self._reaching():
            return _holder(await self._claim(keys=keys, args=args))

    async def set_state(self, key: str, node: str, state: str) -> bool:
        if state not in (LIVE, GRACE):
            raise ValueError(f"unknown state {state!r}")
        keys = [self._key("stream", key), self._key("held", node)]
        with self._reaching():
            return bool(await self._set_state(keys=keys, args=[node, state, self._ttl_ms]))

    async def release(self, key: str, node: str) -> None:
        with self._reaching():
            await self._release(keys=[self._key("stream", key), self._key("held", node)], args=[node])

    async def lookup(self, key: str) -> Holder | None:
        with self._reaching():
            return _holder(await self._lookup(keys=[self._key("stream", key)]))

    # ------------------------------------------------------------ nodes

    async def heartbeat(self, node: str, url: str, entries: dict[str, str], info: dict[str, Any]) -> list[str]:
        unknown = set(entries.values()) - {LIVE, GRACE}
        if unknown:
            raise ValueError(f"unknown states {sorted(unknown)}")
        held = list(entries)
        keys = [self._key("node", node), self._nodes_key, self._key("held", node)]
        keys += [self._key("stream", key) for key in held]
        record = json.dumps({"url": url, "info": info}, ensure_ascii=False)
        args = [node, record, self._ttl_ms, url, repr(time.time()), *entries.values()]
        with self._reaching():
            taken = await self._heartbeat(keys=keys, args=args)
        return [held[position - 1] for position in taken]

    async def nodes(self) -> list[Node]:
        with self._reaching():
            flat = await self._nodes(keys=[self._nodes_key], args=[self._key("node", "")])
        found = (_node(node, raw) for node, raw in zip(flat[::2], flat[1::2], strict=True))
        return sorted((node for node in found if node is not None), key=lambda node: node.node)

    async def forget_node(self, node: str) -> None:
        keys = [self._key("node", node), self._nodes_key, self._key("held", node)]
        with self._reaching():
            await self._forget_node(keys=keys, args=[node])

    async def shared_secret(self, proposed: str) -> str:
        key = self._key("secret")
        with self._reaching():
            await self._redis.set(key, proposed, nx=True)
            value = await self._redis.get(key)
        return value.decode() if isinstance(value, bytes) else str(value)
