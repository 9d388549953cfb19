"""The stream registry contract (relay/cluster/registry.py): every test runs against the SQLite and
the Redis registry, then the failures proper to each.

Redis is a real ``redis-server``: the session's (each test with its own key prefix), or one of the
test's own that it stops, freezes and starts again on the same port.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from relay.cluster import sqlite_registry
from relay.cluster.redis_registry import RedisRegistry
from relay.cluster.registry import GRACE, LIVE, Node, Registry, RegistryUnavailable
from relay.cluster.sqlite_registry import SqliteRegistry
from tests.conftest import REDIS_SERVER, free_port, wait_redis

RegistryFactory = Callable[..., Awaitable[Registry]]

A, URL_A = "node-a", "http://10.0.0.1:41234"
B, URL_B = "node-b", "http://10.0.0.2:41234"
KEY = "live/demo"
TTL = 1.0  # for the tests that wait for an expiry
PAST_TTL = 1.3


@pytest.fixture(params=["sqlite", "redis"])
async def make_registry(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RegistryFactory]:
    """Open registries that share one backing (the same file, or the same server and prefix), as
    the processes of a box or the nodes of a cluster do."""
    if request.param == "sqlite":
        path = tmp_path / "cluster.db"

        def new(ttl: float) -> Registry:
            return SqliteRegistry(path, ttl=ttl)

    else:
        url = request.getfixturevalue("redis_url")
        prefix = f"test-{uuid.uuid4().hex}:"

        def new(ttl: float) -> Registry:
            return RedisRegistry(url, ttl=ttl, prefix=prefix)

    opened: list[Registry] = []

    async def make(ttl: float = 6.0) -> Registry:
        registry = new(ttl)
        await registry.open()
        opened.append(registry)
        return registry

    yield make
    for registry in opened:
        await registry.close()


@pytest.fixture
async def registry(make_registry: RegistryFactory) -> Registry:
    return await make_registry()


# ------------------------------------------------------------ claims


async def test_a_free_key_is_claimed(registry: Registry) -> None:
    assert await registry.lookup(KEY) is None
    before = time.time()
    assert await registry.claim(KEY, A, URL_A, takeover=False) is None
    holder = await registry.lookup(KEY)
    assert holder is not None
    assert (holder.node, holder.url, holder.state) == (A, URL_A, LIVE)
    assert before - 0.01 <= holder.since <= time.time()


async def test_a_live_holder_keeps_its_key(make_registry: RegistryFactory) -> None:
    a, b = await make_registry(), await make_registry()
    await a.claim(KEY, A, URL_A, takeover=False)
    holder = await b.claim(KEY, B, URL_B, takeover=False)
    assert holder is not None
    assert (holder.node, holder.url, holder.state) == (A, URL_A, LIVE)
    assert await b.lookup(KEY) == holder


async def test_a_takeover_moves_the_key(make_registry: RegistryFactory) -> None:
    a, b = await make_registry(), await make_registry()
    await a.claim(KEY, A, URL_A, takeover=False)
    assert await b.claim(KEY, B, URL_B, takeover=True) is None
    holder = await a.lookup(KEY)
    assert holder is not None
    assert (holder.node, holder.url, holder.state) == (B, URL_B, LIVE)


async def test_a_key_in_grace_may_be_claimed(make_registry: RegistryFactory) -> None:
    a, b = await make_registry(), await make_registry()
    await a.claim(KEY, A, URL_A, takeover=False)
    assert await a.set_state(KEY, A, GRACE)
    holder = await b.lookup(KEY)
    assert holder is not None and holder.state == GRACE
    assert await b.claim(KEY, B, URL_B, takeover=False) is None
    holder = await a.lookup(KEY)
    assert holder is not None and (holder.node, holder.state) == (B, LIVE)


async def test_the_holder_claims_its_key_again(registry: Registry) -> None:
    await registry.claim(KEY, A, URL_A, takeover=False)
    assert await registry.claim(KEY, A, URL_A, takeover=False) is None
    await registry.set_state(KEY, A, GRACE)  # its publisher comes back within the grace
    assert await registry.claim(KEY, A, URL_A, takeover=False) is None
    holder = await registry.lookup(KEY)
    assert holder is not None and (holder.node, holder.state) == (A, LIVE)


async def test_only_the_holder_releases(make_registry: RegistryFactory) -> None:
    a, b = await make_registry(), await make_registry()
    await b.release(KEY, B)  # nobody holds it: nothing to do
    await a.claim(KEY, A, URL_A, takeover=False)
    await b.release(KEY, B)
    holder = await b.lookup(KEY)
    assert holder is not None and holder.node == A
    await a.release(KEY, A)
    assert await b.lookup(KEY) is None


async def test_only_the_holder_sets_the_state(make_registry: RegistryFactory) -> None:
    a, b = await make_registry(), await make_registry()
    assert not await a.set_state(KEY, A, GRACE)  # nobody holds it
    await a.claim(KEY, A, URL_A, takeover=False)
    assert not await b.set_state(KEY, B, GRACE)
    holder = await b.lookup(KEY)
    assert holder is not None and (holder.node, holder.state) == (A, LIVE)
    assert await a.set_state(KEY, A, GRACE)
    assert await a.set_state(KEY, A, LIVE)
    with pytest.raises(ValueError, match="paused"):
        await a.set_state(KEY, A, "paused")
    with pytest.raises(ValueError, match="paused"):
        await a.heartbeat(A, URL_A, {KEY: "paused"}, {})


async def test_one_of_many_concurrent_claims_wins(make_registry: RegistryFactory) -> None:
    registries = [await make_registry(), await make_registry()]
    nodes = [f"node-{i}" for i in range(20)]
    results = await asyncio.gather(
        *(
            registries[i % 2].claim(KEY, node, f"http://10.0.1.{i}:41234", takeover=False)
            for i, node in enumerate(nodes)
        )
    )
    winners = [node for node, result in zip(nodes, results, strict=True) if result is None]
    assert len(winners) == 1, results
    assert {result.node for result in results if result is not None} == set(winners)
    holder = await registries[0].lookup(KEY)
    assert holder is not None and holder.node == winners[0]


# ------------------------------------------------------------ heartbeats and nodes


async def test_an_entry_expires_without_heartbeat_and_a_heartbeat_writes_it_again(
    make_registry: RegistryFactory,
) -> None:
    a, b = await make_registry(TTL), await make_registry(TTL)
    await a.claim("live/lapsed", A, URL_A, takeover=False)
    await a.claim("live/free", A, URL_A, takeover=False)
    await asyncio.sleep(PAST_TTL)
    assert await b.lookup("live/lapsed") is None
    assert await b.lookup("live/free") is None
    assert await b.claim("live/free", B, URL_B, takeover=False) is None  # an expired entry is free

    # Node A was out of reach of the registry meanwhile, and still holds both streams.
    assert await a.heartbeat(A, URL_A, {"live/lapsed": GRACE, "live/free": LIVE}, {}) == ["live/free"]
    holder = await b.lookup("live/lapsed")
    assert holder is not None and (holder.node, holder.url, holder.state) == (A, URL_A, GRACE)
    holder = await b.lookup("live/free")
    assert holder is not None and holder.node == B


async def test_heartbeats_keep_a_node_and_its_entries_alive(make_registry: RegistryFactory) -> None:
    a, b = await make_registry(TTL), await make_registry(TTL)
    await a.claim("live/a", A, URL_A, takeover=False)
    await b.claim("live/b", B, URL_B, takeover=False)
    assert await a.heartbeat(A, URL_A, {"live/a": LIVE}, {"streams": 1}) == []
    assert await b.heartbeat(B, URL_B, {"live/b": LIVE}, {"streams": 1}) == []
    assert await b.nodes() == [Node(A, URL_A, {"streams": 1}), Node(B, URL_B, {"streams": 1})]
    for _ in range(2):  # only node A beats
        await asyncio.sleep(PAST_TTL / 2)
        assert await a.heartbeat(A, URL_A, {"live/a": GRACE}, {"streams": 1, "grace": 1}) == []
    holder = await b.lookup("live/a")
    assert holder is not None and (holder.node, holder.state) == (A, GRACE)
    assert await a.lookup("live/b") is None
    assert await b.nodes() == [Node(A, URL_A, {"streams": 1, "grace": 1})]


async def test_a_heartbeat_names_the_keys_another_node_took(make_registry: RegistryFactory) -> None:
    a, b = await make_registry(), await make_registry()
    for key in ("live/1", "live/2", "live/3"):
        await a.claim(key, A, URL_A, takeover=False)
    await b.claim("live/1", B, URL_B, takeover=True)
    await b.claim("live/3", B, URL_B, takeover=True)
    await b.set_state("live/3", B, GRACE)  # in grace, but still B's
    entries = {"live/1": LIVE, "live/2": LIVE, "live/3": LIVE}
    assert sorted(await a.heartbeat(A, URL_A, entries, {})) == ["live/1", "live/3"]
    for key, node in (("live/1", B), ("live/2", A), ("live/3", B)):
        holder = await b.lookup(key)
        assert holder is not None and holder.node == node, key


async def test_nodes_lists_each_node_with_its_last_info(make_registry: RegistryFactory) -> None:
    a, b = await make_registry(), await make_registry()
    assert await a.nodes() == []
    await a.heartbeat(A, URL_A, {}, {"streams": 0, "load": 0.25, "名字": ["甲", None]})
    await b.heartbeat(B, URL_B, {}, {})
    await a.heartbeat(A, URL_A, {}, {"streams": 2, "load": 0.5})
    assert await b.nodes() == [Node(A, URL_A, {"streams": 2, "load": 0.5}), Node(B, URL_B, {})]


async def test_forget_node_drops_the_node_and_its_entries(make_registry: RegistryFactory) -> None:
    a, b = await make_registry(), await make_registry()
    await a.claim("live/1", A, URL_A, takeover=False)
    await a.claim("live/2", A, URL_A, takeover=False)
    await a.heartbeat(A, URL_A, {"live/1": LIVE, "live/2": LIVE}, {})
    await a.claim("live/3", A, URL_A, takeover=False)  # after its last heartbeat
    await b.claim("live/2", B, URL_B, takeover=True)
    await b.heartbeat(B, URL_B, {"live/2": LIVE}, {})

    await b.forget_node(A)
    assert await b.lookup("live/1") is None
    assert await b.lookup("live/3") is None
    holder = await a.lookup("live/2")
    assert holder is not None and holder.node == B
    assert await a.nodes() == [Node(B, URL_B, {})]
    await b.forget_node("node-unknown")


async def test_registries_on_one_backing_see_each_other(make_registry: RegistryFactory) -> None:
    """Two SQLite registries on one file are two processes of a box; two Redis ones, two nodes."""
    a, b = await make_registry(), await make_registry()
    await a.claim(KEY, A, URL_A, takeover=False)
    await b.heartbeat(B, URL_B, {}, {"streams": 0})
    assert await a.nodes() == [Node(B, URL_B, {"streams": 0})]
    holder = await b.lookup(KEY)
    assert holder is not None and holder.node == A
    await a.release(KEY, A)
    assert await b.claim(KEY, B, URL_B, takeover=False) is None
    holder = await a.lookup(KEY)
    assert holder is not None and holder.node == B


# ------------------------------------------------------------ hostile input

ODD_KEYS = ["app/na:me", "直播/房间:1", "live/*?[x]", "live/ %s {} \n\t", "live/" + "x" * 2000]
ODD_NODE = "节点/a:1 *"


async def test_odd_keys_and_node_ids_round_trip(make_registry: RegistryFactory) -> None:
    a, b = await make_registry(), await make_registry()
    for key in ODD_KEYS:
        assert await a.claim(key, ODD_NODE, URL_A, takeover=False) is None
        assert await a.set_state(key, ODD_NODE, GRACE)
        holder = await b.lookup(key)
        assert holder is not None and (holder.node, holder.state) == (ODD_NODE, GRACE), key
    assert await b.lookup("app/na") is None
    assert await a.heartbeat(ODD_NODE, URL_A, dict.fromkeys(ODD_KEYS, LIVE), {"键": "值"}) == []
    assert await b.nodes() == [Node(ODD_NODE, URL_A, {"键": "值"})]
    await a.release(ODD_KEYS[0], ODD_NODE)
    assert await b.lookup(ODD_KEYS[0]) is None
    await b.forget_node(ODD_NODE)
    assert [await b.lookup(key) for key in ODD_KEYS] == [None] * len(ODD_KEYS)


async def test_a_huge_info_is_kept_whole(registry: Registry) -> None:
    info = {f"live/{i}": {"viewers": i, "bitrate": i * 1000.5, "title": "直播" * 20} for i in range(20_000)}
    await registry.heartbeat(A, URL_A, {}, info)
    assert await registry.nodes() == [Node(A, URL_A, info)]


# ------------------------------------------------------------ Redis: what others write, and outages


@pytest.fixture
async def redis_pair(redis_url: str) -> AsyncIterator[tuple[RedisRegistry, aioredis.Redis]]:
    """A registry, and a plain client on its server to write behind its back."""
    registry = RedisRegistry(redis_url, prefix=f"test-{uuid.uuid4().hex}:")
    admin = aioredis.from_url(redis_url, decode_responses=True)
    await registry.open()
    yield registry, admin
    await registry.close()
    await admin.aclose()


NOT_A_HOLDER = [
    "{not json",
    "[]",
    "null",
    '"live"',
    '{"node": 1, "url": "http://x", "state": "live", "since": 0}',
    '{"node": "node-b", "url": "http://x", "state": "paused", "since": 0}',
    '{"node": "node-b", "url": "http://x", "state": "live"}',
    "[" * 5000 + "]" * 5000,
]


@pytest.mark.parametrize("value", NOT_A_HOLDER, ids=range(len(NOT_A_HOLDER)))
async def test_a_value_that_is_not_a_holder_counts_as_free(
    redis_pair: tuple[RedisRegistry, aioredis.Redis], value: str
) -> None:
    registry, admin = redis_pair
    for key in ("live/claimed", "live/beaten"):
        await admin.set(f"{registry.prefix}cluster:stream:{key}", value)
        assert await registry.lookup(key) is None
        assert not await registry.set_state(key, A, GRACE)
        await registry.release(key, A)
    assert await registry.claim("live/claimed", A, URL_A, takeover=False) is None
    assert await registry.heartbeat(A, URL_A, {"live/beaten": GRACE}, {}) == []
    for key in ("live/claimed", "live/beaten"):
        holder = await registry.lookup(key)
        assert holder is not None and holder.node == A


async def test_keys_of_another_type_count_as_free(redis_pair: tuple[RedisRegistry, aioredis.Redis]) -> None:
    registry, admin = redis_pair
    await admin.hset(f"{registry.prefix}cluster:stream:{KEY}", "node", B)
    assert await registry.lookup(KEY) is None
    assert await registry.claim(KEY, A, URL_A, takeover=False) is None
    holder = await registry.lookup(KEY)
    assert holder is not None and holder.node == A


async def test_a_node_record_that_is_not_one_is_left_out(redis_pair: tuple[RedisRegistry, aioredis.Redis]) -> None:
    registry, admin = redis_pair
    for node, value in (("ghost-1", "{"), ("ghost-2", '{"url": 5, "info": {}}'), ("ghost-3", '{"url": "u"}')):
        await admin.set(f"{registry.prefix}cluster:node:{node}", value)
        await admin.sadd(f"{registry.prefix}cluster:nodes", node)
    await admin.sadd(f"{registry.prefix}cluster:nodes", "expired")
    await registry.heartbeat(A, URL_A, {}, {})
    assert await registry.nodes() == [Node(A, URL_A, {})]
    assert "expired" not in await admin.smembers(f"{registry.prefix}cluster:nodes")


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret@127.0.0.1:{port}/0",
        "redis://minilive:s3cret@127.0.0.1:{port}/0",
        "unix:///nowhere/redis.sock?password=s3cret",
    ],
)
async def test_an_unreachable_redis_is_named_without_its_password(url: str) -> None:
    registry = RedisRegistry(url.format(port=free_port()), ttl=TTL)
    try:
        for call in (registry.open, lambda: registry.lookup(KEY), lambda: registry.heartbeat(A, URL_A, {}, {})):
            with pytest.raises(RegistryUnavailable) as caught:
                await call()
            message = str(caught.value)
            assert "s3cret" not in message and "***" in message, message
            assert message.startswith("redis at " + url.partition("s3cret")[0]), message
    finally:
        await registry.close()


class RedisServer:
    """A redis-server of the test's own, on a port that stays the same when it starts again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS_SERVER is not None
        args = [REDIS_SERVER, "--save", "", "--appendonly", "no", "--port", str(self.port), "--bind", "127.0.0.1"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_redis(self.process, self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server not installed: run scripts/dev test, which installs it")
    server = RedisServer()
    server.start()
    yield server
    server.stop()


async def unavailable_soon(call: Awaitable[object]) -> None:
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match=re.escape("redis at redis://127.0.0.1:")):
        await call
    assert time.monotonic() - started < 3


async def test_calls_work_again_once_redis_is_back(redis_server: RedisServer) -> None:
    registry = RedisRegistry(redis_server.url, ttl=TTL)
    await registry.open()
    try:
        await registry.claim(KEY, A, URL_A, takeover=False)
        await registry.heartbeat(A, URL_A, {KEY: LIVE}, {})
        redis_server.stop()
        await unavailable_soon(registry.lookup(KEY))
        await unavailable_soon(registry.heartbeat(A, URL_A, {KEY: LIVE}, {}))
        await unavailable_soon(registry.claim(KEY, A, URL_A, takeover=False))

        redis_server.start()  # empty: to the registry, the entry expired during the outage
        assert await registry.lookup(KEY) is None
        assert await registry.heartbeat(A, URL_A, {KEY: LIVE}, {}) == []
        holder = await registry.lookup(KEY)
        assert holder is not None and holder.node == A
        assert await registry.nodes() == [Node(A, URL_A, {})]
    finally:
        await registry.close()


async def test_a_redis_that_does_not_answer_is_unavailable_after_the_timeout(redis_server: RedisServer) -> None:
    registry = RedisRegistry(redis_server.url, ttl=TTL)
    await registry.open()
    assert redis_server.process is not None
    try:
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            await unavailable_soon(registry.lookup(KEY))
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        assert await registry.claim(KEY, A, URL_A, takeover=False) is None
    finally:
        await registry.close()


# ------------------------------------------------------------ SQLite: a busy file


async def test_a_locked_file_is_unavailable_rather_than_a_stall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_registry, "BUSY_TIMEOUT", 0.2)
    path = tmp_path / "cluster.db"
    registry = SqliteRegistry(path, ttl=TTL)
    await registry.open()
    other = sqlite3.connect(path, isolation_level=None)  # another process, stuck in a write
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(RegistryUnavailable, match=r"cluster\.db: database is locked"):
            await registry.claim(KEY, A, URL_A, takeover=False)
        assert await registry.lookup(KEY) is None  # readers do not wait for a writer (WAL)
        other.execute("ROLLBACK")
        assert await registry.claim(KEY, A, URL_A, takeover=False) is None
    finally:
        other.close()
        await registry.close()
