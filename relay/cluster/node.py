"""This node's part in the cluster: it registers the streams it originates, pulls the streams it is
asked for from their origin, and knows where a stream's HLS is made.

A node is one server process. Its streams are of three kinds:
- originated: an anchor publishes here. Claimed in the registry before the publish is accepted
  (so that a stream is live on one node only), LIVE while the anchor is connected, GRACE while the
  hub waits for it to return, released when the stream ends.
- pulled: a viewer here asked for a stream another node originates (relay.cluster.pull).
- derived: renditions, made next to their source, at its origin; never registered.

The heartbeat keeps this node's entries alive and tells it when another node took one of its
streams over (the anchor reconnected there): the stream here then becomes a pull from the new
origin, so that this node's viewers go on without a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from typing import Any

from relay.cluster import credential
from relay.cluster.pull import Pull, close_quietly
from relay.cluster.registry import GRACE, LIVE, Holder, Registry, RegistryUnavailable
from relay.cluster.settings import ClusterSettings
from relay.hub import AccessRequest, Authorizer, Decision, Hub, PublisherInfo, StreamEvent

log = logging.getLogger("minilive.cluster")

# How many cluster listeners the request being served came through (set by relay.cluster.listener).
HOPS: contextvars.ContextVar[int] = contextvars.ContextVar("minilive_cluster_hops", default=0)
# A claim not followed by a publish (the connection went away in between) is dropped after this.
CLAIM_SECONDS = 10.0
# A cold pull answers its first viewer within this (the first keyframe at an edge).
FIRST_PULL_SECONDS = 3.0
# HLS requests look a stream's origin up at most this often (a stream found nowhere: at most
# NOT_FOUND_CACHE_SECONDS, so that a stream published elsewhere a moment ago is found soon). Plays look
# it up each time, one lookup per stream at a time however many players ask.
LOOKUP_CACHE_SECONDS = 1.0
NOT_FOUND_CACHE_SECONDS = 0.25
LOOKUP_CACHE_SIZE = 10_000
RELAY_PROTOCOL = "relay"  # how an origin counts the pulls of its edges


def base_name(name: str) -> str:
    """The source stream of a rendition name (``demo_480p`` -> ``demo``); "" for a plain name."""
    return name.rpartition("_")[0]


class Cluster:
    def __init__(self, hub: Hub, settings: ClusterSettings, registry: Registry, node: str, secret: str) -> None:
        self.hub = hub
        self.settings = settings
        self.registry = registry
        self.node = node
        self.secret = secret
        self.url = ""  # this node's cluster listener, as other nodes reach it
        self.origins: dict[str, str] = {}  # stream key -> LIVE or GRACE
        self._claimed: dict[str, float] = {}  # claimed, not yet published: key -> monotonic time
        self.locks: set[str] = set()  # held in the registry for a job only one node may do (lock())
        self.pulls: dict[str, Pull] = {}
        self._lookups: dict[str, tuple[float, Holder | None]] = {}
        self._inflight: dict[str, asyncio.Future[Holder | None]] = {}  # one registry lookup per key at a time
        self._elsewhere: dict[str, dict[str, int]] = {}  # audience on the other nodes, by stream key
        self.alive: set[str] = set()  # nodes alive at the last heartbeat
        self.registry_ok = True
        self._updates: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.counters = dict.fromkeys(
            ("pulls_started", "streams_lost_to_other_nodes", "registry_errors", "publishes_refused"), 0
        )

    # ------------------------------------------------------------ lifecycle

    async def start(self, url: str) -> None:
        self.url = url
        self.hub.add_listener(self._stream_event)
        self.hub.add_remote(self.pull)
        await self.beat()
        self._tasks = [asyncio.create_task(self._heartbeats()), asyncio.create_task(self._apply_updates())]
        log.info("cluster node %s: pulls served at %s%s", self.node, url,
                 f", pulling from {self.settings.origin}" if self.settings.origin else "")  # fmt: skip

    def stopping(self) -> None:
        """The server is shutting down: its streams end here, but stay registered (in GRACE) until their
        TTL, so that edges keep their viewers waiting for the anchor to come back on another node."""
        self._stopping = True

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # bounded: a registry call must not hold the server's shutdown
            await asyncio.wait(self._tasks, timeout=3)
        await asyncio.gather(*(close_quietly(pull) for pull in list(self.pulls.values())))
        self.pulls.clear()
        with contextlib.suppress(RegistryUnavailable):
            await asyncio.wait_for(
                self.registry.heartbeat(self.node, self.url, dict.fromkeys(self.origins, GRACE), {}), 2
            )
        with contextlib.suppress(Exception):
            await self.registry.close()

    # ------------------------------------------------------------ publishing here

    def gate(self, authorize: Authorizer) -> Authorizer:
        """``authorize`` (may this publish?), then the claim of the stream in the registry."""

        async def publish(request: AccessRequest) -> Decision:
            decision = await authorize(request)
            if not decision.allowed:
                return decision
            return await self.claim(request.app, request.name)

        return publish

    async def claim(self, app: str, name: str) -> Decision:
        key = f"{app}/{name}"
        try:
            holder = await self.registry.claim(key, self.node, self.url, self.hub.settings.publisher_takeover)
        except RegistryUnavailable as exc:
            self.counters["registry_errors"] += 1
            if self.settings.on_registry_down == "local":
                log.warning("publish of %s accepted here without the registry (%s): it is registered when the "
                            "registry is back", key, exc)  # fmt: skip
                self._claimed[key] = time.monotonic()
                return Decision.allow()
            self.counters["publishes_refused"] += 1
            return Decision.deny(
                f"the cluster registry is unreachable ({exc}), so this node cannot make sure the stream is not live "
                'on another node: try again shortly; or set [cluster] on_registry_down = "local" to accept publishes '
                "while the registry is down"
            )
        if holder is not None:
            self.counters["publishes_refused"] += 1
            return Decision.deny(
                f"stream {key} is being published at node {holder.node} and [relay] publisher_takeover is off"
            )
        self._claimed[key] = time.monotonic()
        self._lookups.pop(key, None)
        return Decision.allow()

    def _stream_event(self, event: StreamEvent) -> None:
        key = f"{event.app}/{event.name}"
        if event.type == "end":
            pull = self.pulls.pop(key, None)
            if pull is not None:
                pull.stop("the stream ended here")
        if event.info.get("relayed"):
            return
        if event.type == "publish":
            publisher: PublisherInfo = event.info["publisher"]
            if publisher.derived:
                return
            pull = self.pulls.pop(key, None)
            if pull is not None:  # an anchor pushed here a stream this node pulled: it is the origin now
                pull.stop("an anchor publishes it here")
            self._claimed.pop(key, None)
            self.origins[key] = LIVE
            self._updates.put_nowait(("state", key, LIVE))
        elif key not in self.origins or self._stopping:
            return
        elif event.type == "unpublish":
            self.origins[key] = GRACE
            self._updates.put_nowait(("state", key, GRACE))
        elif event.type == "end":
            del self.origins[key]
            self._updates.put_nowait(("release", key, ""))

    async def _apply_updates(self) -> None:
        # One at a time, in event order: a stream's release never overtakes its state change.
        while True:
            action, key, state = await self._updates.get()
            try:
                if action == "release":
                    await self.registry.release(key, self.node)
                elif key in self.origins:
                    await self.registry.set_state(key, self.node, state)
            except RegistryUnavailable as exc:
                self.counters["registry_errors"] += 1
                log.info("registry update of %s deferred to the next heartbeat: %s", key, exc)

    # ------------------------------------------------------------ heartbeat

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            try:
                await self.beat()
            except Exception:
                log.exception("cluster heartbeat failed")

    def entries(self, now: float) -> dict[str, str]:
        """What this node holds: its streams, and claims whose publish is still expected."""
        entries = dict(self.origins)
        entries.update(dict.fromkeys(self.locks, LIVE))
        for key, at in list(self._claimed.items()):
            if key in entries:
                del self._claimed[key]
            elif now - at < CLAIM_SECONDS:
                entries[key] = LIVE
            else:
                del self._claimed[key]
                self._updates.put_nowait(("release", key, ""))
        return entries

    async def beat(self) -> None:
        now = time.monotonic()
        entries = self.entries(now)
        try:
            lost = await self.registry.heartbeat(self.node, self.url, entries, {"audience": self._local_audience()})
            nodes = await self.registry.nodes()
        except RegistryUnavailable as exc:
            self.counters["registry_errors"] += 1
            if self.registry_ok:
                log.warning("cluster registry unreachable (%s): the %d stream(s) here keep flowing; new publishes "
                            "are %s until it is back", exc, len(self.hub.all_stats()),
                            "accepted here" if self.settings.on_registry_down == "local" else "refused")  # fmt: skip
            self.registry_ok = False
            return
        if not self.registry_ok:
            log.info("cluster registry reachable again: %d stream(s) registered", len(entries))
            self.registry_ok = True
        for key in lost:
            self._lost(key)
        self.alive = {n.node for n in nodes}
        elsewhere: dict[str, dict[str, int]] = {}
        for n in nodes:
            if n.node == self.node:
                continue
            for key, counts in (n.info.get("audience") or {}).items():
                mine = elsewhere.setdefault(key, {})
                for protocol, count in counts.items():
                    mine[protocol] = mine.get(protocol, 0) + int(count)
        self._elsewhere = elsewhere
        for pull in list(self.pulls.values()):
            if pull.idle(now, self.settings.linger_seconds):
                pull.stop(f"no viewer here for {self.settings.linger_seconds:g} s")

    def _local_audience(self) -> dict[str, dict[str, int]]:
        """This node's viewers by stream and protocol (edges' pulls are not viewers)."""
        out = {}
        for stats in self.hub.all_stats():
            counts = {p: n for p, n in stats["viewers_by_protocol"].items() if p != RELAY_PROTOCOL and n}
            if counts:
                out[f"{stats['app']}/{stats['name']}"] = counts
        return out

    def audience_elsewhere(self, app: str, name: str) -> dict[str, int]:
        """The viewers of stream ``app/name`` on the other nodes, as of the last heartbeat."""
        return dict(self._elsewhere.get(f"{app}/{name}", {}))

    def _lost(self, key: str) -> None:
        """Another node originates ``key`` now: this node's viewers go on with a pull from there."""
        self.origins.pop(key, None)
        self._claimed.pop(key, None)
        self._lookups.pop(key, None)
        self.counters["streams_lost_to_other_nodes"] += 1
        app, _, name = key.partition("/")
        if not self.hub.has(app, name) or key in self.pulls:
            return
        log.info("stream %s is originated at another node now: this node pulls it from there", key)
        pull = self._new_pull(app, name, 0)
        # Published at once: it replaces this node's anchor (if one is still connected) before a
        # packet more of it goes to viewers, without an unpublish (the live goes on elsewhere).
        pull.session = self.hub.publish(app, name, PublisherInfo(RELAY_PROTOCOL, "", relayed=True), pull._kicked)
        pull.first.set_result(True)
        pull.start()

    # ------------------------------------------------------------ pulling

    def _new_pull(self, app: str, name: str, hops: int) -> Pull:
        self.counters["pulls_started"] += 1
        key = f"{app}/{name}"
        pull = self.pulls[key] = Pull(self.hub, app, name, self.upstream, self.node, self.secret, hops, self._forget)
        return pull

    def _forget(self, pull: Pull) -> None:
        if self.pulls.get(pull.key) is pull:
            del self.pulls[pull.key]

    async def pull(self, app: str, name: str) -> bool:
        """The hub's remote provider: bring stream ``app/name`` here from its origin."""
        key = f"{app}/{name}"
        pull = self.pulls.get(key)
        hops = HOPS.get()
        if pull is not None and not pull.first.done() and hops > pull.hops:
            # Asked by another node for a stream this node is still looking for: its own request came
            # back around (a loop of [cluster] origin settings).
            log.warning("not pulling %s for another node: a pull of it from here came back (a loop?)", key)
            return False
        if pull is None or pull.stopped:
            if hops >= credential.MAX_HOPS:
                log.warning("not pulling %s: it came through %d nodes already (a loop of [cluster] origin?)", key, hops)
                return False
            try:
                if await self.upstream(app, name) is None:
                    return False
            except RegistryUnavailable as exc:
                log.warning("cannot look up the origin of %s: %s", key, exc)
                return False
            pull = self._new_pull(app, name, hops)
            pull.start()
        found = await pull.wait_first(FIRST_PULL_SECONDS)
        return found and self.hub.has(app, name)

    async def upstream(self, app: str, name: str) -> str | None:
        """Where to pull stream ``app/name`` from now (a cluster listener's URL); None if no other node
        originates it (or its source, for a rendition). Raises RegistryUnavailable."""
        if self.settings.origin:
            return self.settings.origin
        holder = await self._holder(app, name, cached=False)
        return holder.url if holder is not None else None

    async def _holder(self, app: str, name: str, cached: bool) -> Holder | None:
        """The other node that originates ``app/name``, or its source."""
        for key in (f"{app}/{name}", f"{app}/{base_name(name)}" if base_name(name) else ""):
            if not key:
                continue
            holder = await self._lookup(key, cached)
            if holder is not None and holder.node != self.node:
                return holder
        return None

    async def _lookup(self, key: str, cached: bool) -> Holder | None:
        """The holder of ``key``; concurrent lookups of one key make one registry call (a crowd of players
        asking for a stream must not take every connection to Redis), and with ``cached`` a recent answer."""
        now = time.monotonic()
        if cached:
            hit = self._lookups.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Holder | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            holder = await self.registry.lookup(key)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the callers waiting on it get it
            raise
        finally:
            del self._inflight[key]
        future.set_result(holder)
        if len(self._lookups) >= LOOKUP_CACHE_SIZE:
            self._lookups.clear()
        self._lookups[key] = (now + (LOOKUP_CACHE_SECONDS if holder else NOT_FOUND_CACHE_SECONDS), holder)
        return holder

    # ------------------------------------------------------------ HLS

    def originates(self, app: str, name: str) -> bool:
        """Whether stream ``app/name`` (or, for a rendition, its source) is originated here."""
        base = base_name(name)
        return f"{app}/{name}" in self.origins or bool(base and f"{app}/{base}" in self.origins)

    async def hls_upstream(self, app: str, name: str) -> str | None:
        """Where the HLS of stream ``app/name`` is made: None here (or nowhere), else the cluster
        listener of its origin (of the next node up, for a chained edge). HLS is segmented at the
        origin only, so that every node serves the same playlist, names and bytes."""
        if self.originates(app, name):
            return None
        if self.settings.origin:
            return self.settings.origin
        try:
            holder = await self._holder(app, name, cached=True)
        except RegistryUnavailable:
            return None
        return holder.url if holder is not None else None

    # ------------------------------------------------------------ rooms and replays

    async def lock(self, key: str) -> bool:
        """Hold ``key`` (not a stream: e.g. ``replay/ID``) in the registry while this node lives or until
        :meth:`unlock`; False if another node holds it or the registry cannot be reached."""
        try:
            holder = await self.registry.claim(key, self.node, self.url, takeover=False)
        except RegistryUnavailable:
            return False
        if holder is None:
            self.locks.add(key)
        return holder is None

    async def unlock(self, key: str) -> None:
        self.locks.discard(key)
        with contextlib.suppress(RegistryUnavailable):
            await self.registry.release(key, self.node)

    async def held_anywhere(self, app: str, name: str) -> bool | None:
        """Whether some live node originates stream ``app/name``; None if the registry cannot say."""
        if f"{app}/{name}" in self.origins or f"{app}/{name}" in self._claimed:
            return True
        try:
            return await self.registry.lookup(f"{app}/{name}") is not None
        except RegistryUnavailable:
            return None

    def describe(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "url": self.url,
            "registry_ok": self.registry_ok,
            "nodes_alive": len(self.alive),
            "originated": dict(self.origins),
            "pulls": [pull.describe() for pull in self.pulls.values()],
            **self.counters,
        }
