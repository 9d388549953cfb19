"""The asyncio RTMP server: a thin shell that moves bytes between sockets, the protocol core and the hub."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import deque
from dataclasses import dataclass, field

from ingest.heap import HeapTrim
from ingest.rtmp import connection as rtmp
from relay.formats.output import RtmpFormat
from relay.formats.rtmp_chunk import PendingBudget
from relay.hub import (
    AccessRequest,
    Authorizer,
    Decision,
    Hub,
    PublisherInfo,
    PublishSession,
    StreamBusy,
    StreamRefused,
    Subscription,
    Viewer,
    allow_all,
    decide,
)

log = logging.getLogger("minilive.rtmp")

# A setting-up connection's read is deferred to a later turn only up to this size (a handshake is
# 3 KB, connect and play a few hundred bytes): a bigger one is handled at once, where the chunk reader
# bounds it, so deferred reads hold at most this much per connection.
SETUP_DEFER_BYTES = 16 * 1024


@dataclass(slots=True)
class RtmpSettings:
    handshake_timeout: float = 10.0
    # After the handshake, the connect command must arrive (and be answered) within this.
    connect_timeout: float = 10.0
    # A connection that has neither published nor played by then is dropped (half-open floods).
    setup_timeout: float = 30.0
    # A publisher that sends nothing at all for this long is gone (silent TCP stall). A trickle
    # such as live-pusher's background "waiting image" keeps it alive.
    publisher_idle_timeout: float = 10.0
    max_connections: int = 10000
    max_connections_per_address: int = 100
    # Addresses (or networks) not held to that cap: by default the machine itself, where benchmarks,
    # local relays and transcoders connect many times. Add cluster peers that pull over RTMP.
    address_cap_exempt: list[str] = field(default_factory=lambda: ["127.0.0.1/8", "::1"])
    # RTMP applications (the first path segment of rtmp://HOST/APP/STREAM) this server serves.
    apps: list[str] = field(default_factory=lambda: ["live"])
    # Audio, video and aggregate messages; every other message is a command or data, small by nature:
    max_message_size: int = 16 * 1024 * 1024
    connect_message_size: int = 4096  # before connect: AMF is decoded for unauthenticated peers
    command_message_size: int = 64 * 1024  # after connect (onMetaData of real encoders: about 1 KB)
    # Bytes of unfinished messages one connection may hold before its publish is accepted, and after.
    prepublish_buffer: int = 4 * 1024 * 1024
    publishing_buffer: int = 32 * 1024 * 1024
    # Bytes of unfinished messages all connections together may hold: past it new connections are
    # refused and the connection that adds bytes is dropped.
    pending_budget: int = 256 * 1024 * 1024
    # Media a publisher sends while its publish request is being authorized is held, up to this.
    max_held_messages: int = 2000
    # Connections that have neither published nor played yet (handshake, connect, play) are served for
    # at most this long per turn of the event loop; the others wait, unread, for the next turns. A
    # stampede of a thousand players then never holds up the merged writes to those already watching.
    setup_slice_ms: float = 10.0
    # After connections that closed gave back this many bytes of unfinished messages (a flood), the
    # heap's free pages are returned to the system (malloc_trim, at most every 10 s; 0: never).
    trim_after_bytes: int = 32 * 1024 * 1024

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        for name in ("handshake_timeout", "connect_timeout", "setup_timeout", "publisher_idle_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"[rtmp] {name} must be more than 0 seconds, not {getattr(self, name)}")
        if self.trim_after_bytes < 0:
            raise ValueError(f"[rtmp] trim_after_bytes must be 0 (never) or more, not {self.trim_after_bytes}")
        for name in ("max_connections", "max_connections_per_address", "max_held_messages"):
            if getattr(self, name) < 1:
                raise ValueError(f"[rtmp] {name} must be at least 1, not {getattr(self, name)}")
        # A connect of a real client (tcUrl, swfUrl, Enhanced RTMP's fourCcList) is a few hundred bytes.
        for address in self.address_cap_exempt:
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError:
                raise ValueError(
                    f"[rtmp] address_cap_exempt: {address!r} is not an IP address or network (e.g. 10.0.0.0/8)"
                ) from None
        if not 512 <= self.connect_message_size <= self.command_message_size <= self.max_message_size:
            raise ValueError(
                "[rtmp] need 512 <= connect_message_size <= command_message_size <= max_message_size,"
                f" have {self.connect_message_size}, {self.command_message_size}, {self.max_message_size}"
            )
        if self.max_message_size > 16 * 1024 * 1024:
            raise ValueError(f"[rtmp] max_message_size cannot pass RTMP's 16 MiB, not {self.max_message_size}")
        if not 0 < self.prepublish_buffer <= self.pending_budget or self.publishing_buffer < self.prepublish_buffer:
            raise ValueError(
                "[rtmp] need 0 < prepublish_buffer <= publishing_buffer and prepublish_buffer <= pending_budget,"
                f" have {self.prepublish_buffer}, {self.publishing_buffer}, {self.pending_budget}"
            )


class RtmpServer:
    def __init__(
        self,
        hub: Hub,
        authorize_publish: Authorizer,
        authorize_play: Authorizer = allow_all,
        settings: RtmpSettings | None = None,
        play_wait_seconds: float = 0.0,
    ) -> None:
        self.hub = hub
        self.authorize_publish = authorize_publish
        self.authorize_play = authorize_play
        self.settings = settings or RtmpSettings()
        self.play_wait_seconds = play_wait_seconds
        self.connections: set[RtmpProtocol] = set()
        self.per_address: dict[str, int] = {}
        s = self.settings
        self.limits = rtmp.Limits(
            s.max_message_size, s.connect_message_size, s.command_message_size, s.prepublish_buffer, s.publishing_buffer
        )
        self.budget = PendingBudget(s.pending_budget)
        self.heap = HeapTrim(s.trim_after_bytes)
        self._exempt = [ipaddress.ip_network(a, strict=False) for a in s.address_cap_exempt]
        # Refusals, protocol errors and handshakes (completed: a connect command came), for /metrics (see totals()).
        self.counters: dict[str, int] = dict.fromkeys(
            ("refused_total", "refused_address", "refused_budget", "protocol_errors", "timeouts", "handshakes"), 0
        )
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        # Setting-up connections waiting for a turn (their bytes read, reading paused), in order.
        self._setup_queue: deque[RtmpProtocol] = deque()
        self._setup_turn = False  # a callback to serve the next turn is scheduled
        self._setup_until = 0.0  # time.monotonic() until which this turn may serve setups

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> list[tuple[str, int]]:
        """Listen on ``host:port``; ``reuse_port``: share the port with other processes (SO_REUSEPORT)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: RtmpProtocol(self), host, port, backlog=1024, reuse_port=reuse_port
        )
        self._ticker = asyncio.create_task(self._tick())
        return [s.getsockname()[:2] for s in self._server.sockets]

    async def close(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        if self._server:
            self._server.close()
        for conn in list(self.connections):
            conn.shutdown()
        if self._server:
            await self._server.wait_closed()

    def totals(self) -> dict[str, int]:
        return {
            **self.counters,
            "connections": len(self.connections),
            "pending_bytes": self.budget.held,
            "heap_trims": self.heap.trims,
        }

    def admit(self, conn: RtmpProtocol, host: str) -> str:
        """Why a new connection from ``host`` is refused, or "" (and it is counted in)."""
        s = self.settings
        if len(self.connections) >= s.max_connections:
            self.counters["refused_total"] += 1
            return f"{len(self.connections)} connections is the limit (max_connections)"
        if self.per_address.get(host, 0) >= s.max_connections_per_address and not self._exempted(host):
            self.counters["refused_address"] += 1
            return f"{s.max_connections_per_address} connections from one address is the limit"
        if self.budget.held >= self.budget.limit:
            self.counters["refused_budget"] += 1
            return f"unfinished messages hold {self.budget.held} bytes, at the limit (pending_budget)"
        self.connections.add(conn)
        self.per_address[host] = self.per_address.get(host, 0) + 1
        return ""

    def may_set_up(self, conn: RtmpProtocol) -> bool:
        """Whether ``conn`` (not yet publishing or playing) may handle its bytes in this turn: the
        turn's setup slice lasts and nobody is waiting before it. If not, it waits in line."""
        if not self._setup_turn:  # the first setup of this turn opens its slice
            self._setup_turn = True
            self._setup_until = time.monotonic() + self.settings.setup_slice_ms / 1000
            asyncio.get_running_loop().call_soon(self._next_setup_turn)
        if not self._setup_queue and time.monotonic() < self._setup_until:
            return True
        self._setup_queue.append(conn)
        return False

    def _next_setup_turn(self) -> None:
        """A new turn: serve waiting setups in order (at least one, for progress) while the slice lasts."""
        self._setup_turn = False
        queue = self._setup_queue
        if not queue:
            return
        self._setup_turn = True
        self._setup_until = time.monotonic() + self.settings.setup_slice_ms / 1000
        queue.popleft().resume_setup()
        while queue and time.monotonic() < self._setup_until:
            queue.popleft().resume_setup()
        asyncio.get_running_loop().call_soon(self._next_setup_turn)

    def _exempted(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._exempt)

    def forget(self, conn: RtmpProtocol, host: str) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            left = self.per_address.pop(host, 1) - 1
            if left > 0:
                self.per_address[host] = left

    async def _tick(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            self.heap.check(self.budget.freed, now)
            for conn in list(self.connections):
                if conn.session is not None:
                    if now - conn.last_data > s.publisher_idle_timeout:
                        conn.drop(f"publisher sent nothing for {s.publisher_idle_timeout:.0f} s")
                elif conn.viewer is None:
                    if not conn.core.handshake.done:
                        if now - conn.opened > s.handshake_timeout:
                            self.counters["timeouts"] += 1
                            conn.drop("handshake timed out")
                    elif not conn.core.connected:
                        # Timed from the first tick that saw the handshake done: no clock on the hot path.
                        conn.handshaken = conn.handshaken or now
                        if now - conn.handshaken > s.connect_timeout:
                            self.counters["timeouts"] += 1
                            conn.drop("no connect command in time (connect_timeout)")
                        elif now - conn.opened > s.setup_timeout:  # the overall deadline holds too
                            self.counters["timeouts"] += 1
                            conn.drop("neither published nor played in time")
                    elif now - conn.opened > s.setup_timeout and not conn.busy:
                        self.counters["timeouts"] += 1
                        conn.drop("neither published nor played in time")


class RtmpProtocol(asyncio.Protocol):
    def __init__(self, server: RtmpServer) -> None:
        self.server = server
        self.core = rtmp.ServerConnection(server.limits, server.budget)
        self.transport: asyncio.Transport | None = None
        self.remote = ""
        self.host = ""
        self.opened = self.last_data = time.monotonic()
        self.handshaken = 0.0  # when the ticker first saw the handshake done
        self.session: PublishSession | None = None
        self.publish_stream_id = 0
        self.viewer: Viewer | None = None
        self.watching: Subscription | None = None
        self.busy = False  # an authorization is in flight
        self.held: list[rtmp.Event] | None = None
        self.held_bytes = 0
        self.closed = False
        self._play_name = ""
        self._task: asyncio.Future[None] | None = None  # the authorization in flight
        self._stash: list[bytes] | None = None  # bytes read while waiting for a setup turn

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.host = peer[0] if peer else "?"
        self.remote = f"{peer[0]}:{peer[1]}" if peer else "?"
        refusal = self.server.admit(self, self.host)
        if refusal:
            log.warning("rtmp %s refused: %s", self.remote, refusal)
            transport.abort()
            self.closed = True
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.last_data = time.monotonic()
        if self.session is None and self.viewer is None:  # setting up: served in slices (setup_slice_ms)
            if self._stash is not None:
                self._stash.append(data)
                return
            if len(data) <= SETUP_DEFER_BYTES and not self.server.may_set_up(self):
                self._stash = [data]
                self.transport.pause_reading()  # type: ignore[union-attr]
                return
        self._receive(data)

    def resume_setup(self) -> None:
        """Its turn came: handle the bytes read meanwhile, then read again."""
        stash, self._stash = self._stash, None
        if self.closed or stash is None:
            return
        self._receive(b"".join(stash))
        if not self.closed and not self.transport.is_closing():  # type: ignore[union-attr]
            self.transport.resume_reading()  # type: ignore[union-attr]

    def _receive(self, data: bytes) -> None:
        try:
            events = self.core.receive_data(data)
        except ValueError as exc:
            self.server.counters["protocol_errors"] += 1
            self.drop(f"protocol error: {exc}")
            return
        out = self.core.data_to_send()
        if out:
            self.transport.write(out)  # type: ignore[union-attr]
        session = self.session
        for event in events:
            if type(event) is rtmp.Media:
                if session is not None and event.stream_id == self.publish_stream_id:
                    session.send(event.type_id, event.timestamp, event.payload)
                elif self.held is not None:
                    self._hold(event)
            else:
                self._handle(event)
                session = self.session

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.forget(self, self.host)
        self.core.reader.release()
        self._end_publish("disconnected")
        viewer = self.viewer
        if viewer is not None:
            self.viewer = None
            if self.watching is not None:
                self.watching.close()
            viewer.done.done() or viewer.done.set_result("disconnected")
            log.info(
                "rtmp play end %s/%s from %s: %.1f s, %.2f MB, %d skips",
                self.core.app,
                self._play_name,
                self.remote,
                time.monotonic() - viewer.joined_at,
                viewer.bytes_out / 1e6,
                viewer.skips,
            )

    # ------------------------------------------------------------ events

    def _hold(self, event: rtmp.Event) -> None:
        assert self.held is not None
        size = len(event.payload)  # type: ignore[union-attr]
        self.held_bytes += size
        settings = self.server.settings
        if len(self.held) >= settings.max_held_messages or self.held_bytes > settings.prepublish_buffer:
            self.drop("too much media sent before the publish was accepted (prepublish_buffer)")
            return
        self.held.append(event)

    def _handle(self, event: rtmp.Event) -> None:
        if isinstance(event, rtmp.Connect):
            self.server.counters["handshakes"] += 1
            apps = self.server.settings.apps
            if event.app not in apps:
                log.info("rtmp %s refused: unknown app %r", self.remote, event.app)
                self.core.reject_connect(
                    event, f"unknown application '{event.app}'; push and play at rtmp://HOST/{apps[0]}/STREAM"
                )
                self._flush()
                self.transport.close()  # type: ignore[union-attr]
                return
            pipelined = self.core.accept_connect(event)
            self._flush()
            for queued in pipelined:
                self._handle(queued)
        elif isinstance(event, rtmp.Publish):
            if self.session is not None or self.busy:
                self.core.reject_publish(event, "NetStream.Publish.BadName", "this connection is already publishing")
                self._flush()
                return
            self.busy = True
            self.held = []
            self._task = asyncio.ensure_future(self._publish(event))
        elif isinstance(event, rtmp.Play):
            if self.viewer is not None or self.busy:
                return
            self.busy = True
            self._task = asyncio.ensure_future(self._play(event))
        elif isinstance(event, rtmp.Metadata):
            if self.session is not None and event.stream_id == self.publish_stream_id:
                self.session.metadata(event.payload, event.values)
            elif self.held is not None:
                self._hold(event)
        elif isinstance(event, rtmp.DeleteStream):
            if self.session is not None and event.stream_id == self.publish_stream_id:
                name = self.session.name
                self._end_publish("unpublish")
                self.core.unpublished(event.stream_id, name)
                self._flush()
            elif self.viewer is not None:
                self.transport.close()  # type: ignore[union-attr]

    async def _publish(self, event: rtmp.Publish) -> None:
        app = self.core.app
        if event.name:
            request = AccessRequest("publish", "rtmp", app, event.name, event.query, self.remote)
            decision = await decide(self.server.authorize_publish, request, log)
        else:
            decision = Decision.deny("empty stream name")
        if self.closed:
            return
        self.busy = False
        if not decision.allowed:
            log.info("rtmp publish refused %s/%s from %s: %s", app, event.name, self.remote, decision.reason)
            self.core.reject_publish(event, "NetStream.Publish.Unauthorized", decision.reason)
            self._flush()
            self.transport.close()  # type: ignore[union-attr]
            return
        info = PublisherInfo("rtmp", self.remote, event.query)
        try:
            self.session = self.server.hub.publish(app, event.name, info, self._kicked)
        except StreamBusy as exc:
            log.info("rtmp publish refused %s/%s from %s: %s", app, event.name, self.remote, exc)
            self.core.reject_publish(event, "NetStream.Publish.BadName", str(exc))
            self._flush()
            self.held = None
            return
        self.publish_stream_id = event.stream_id
        self.core.accept_publish(event)
        self._flush()
        log.info("rtmp publish start %s/%s from %s", app, event.name, self.remote)
        held, self.held = self.held or [], None
        self.held_bytes = 0
        for item in held:
            if isinstance(item, rtmp.Media):
                self.session.send(item.type_id, item.timestamp, item.payload)
            elif isinstance(item, rtmp.Metadata):
                self.session.metadata(item.payload, item.values)

    async def _play(self, event: rtmp.Play) -> None:
        server = self.server
        app = self.core.app
        self._play_name = event.name
        request = AccessRequest("play", "rtmp", app, event.name, event.query, self.remote)
        decision = await decide(server.authorize_play, request, log)
        if self.closed:
            return
        if not decision.allowed:
            self.busy = False
            self.core.reject_play(event, "NetStream.Play.Failed", decision.reason)
            self._flush()
            self.transport.close()  # type: ignore[union-attr]
            return
        try:
            found = await server.hub.wait_for(app, event.name, server.play_wait_seconds)
            refusal = f"no live stream named {app}/{event.name}"
        except StreamRefused as exc:
            found, refusal = False, str(exc)
        self.busy = False
        if self.closed:
            return
        if not found:
            self.core.reject_play(event, "NetStream.Play.StreamNotFound", refusal)
            self._flush()
            return
        self.core.accept_play(event)
        self._flush()
        sid = event.stream_id

        def end(reason: str) -> None:
            if not self.closed:
                self.core.play_ended(sid, event.name, reason)
                self._flush()
                self.transport.close()  # type: ignore[union-attr]

        self.viewer = Viewer(self.transport, RtmpFormat(sid), remote=self.remote, end=end)  # type: ignore[arg-type]
        self.watching = server.hub.add_viewer(app, event.name, self.viewer)
        log.info("rtmp play start %s/%s from %s", app, event.name, self.remote)

    # ------------------------------------------------------------ helpers

    def _flush(self) -> None:
        out = self.core.data_to_send()
        if out and not self.closed:
            self.transport.write(out)  # type: ignore[union-attr]

    def _kicked(self, reason: str) -> None:
        log.info(
            "rtmp publisher %s of %s/%s disconnected: %s",
            self.remote,
            self.core.app,
            self._publish_name(),
            reason,
        )
        self.session = None
        if self.transport is not None:
            self.transport.abort()

    def _publish_name(self) -> str:
        return self.session.name if self.session else ""

    def _end_publish(self, reason: str) -> None:
        session = self.session
        if session is None:
            return
        self.session = None
        session.close(reason)
        log.info(
            "rtmp publish end %s/%s from %s (%s): %.1f s, %d packets",
            session.app,
            session.name,
            self.remote,
            reason,
            time.monotonic() - session.started,
            session.packets,
        )

    def drop(self, reason: str) -> None:
        if self.closed:
            return
        log.info("rtmp %s dropped: %s", self.remote, reason)
        if self.transport is not None:
            self.transport.abort()

    def shutdown(self) -> None:
        if self.transport is not None and not self.closed:
            self._end_publish("shutdown")
            self.transport.close()
