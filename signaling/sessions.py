"""WebRTC settings, and the sessions (WHIP publishers, WHEP viewers) that exist right now.

A session is reachable only through its resource URL, whose id is unguessable. Every session ends
through :meth:`Session.close`, whatever the cause (DELETE, ICE failure, timeout, kick, shutdown),
and leaves the registry there: nothing outlives its peer connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web
from aiortc import RTCPeerConnection

from relay.http.fast import exempt
from signaling.ice import IceSettings

log = logging.getLogger("minilive.webrtc")


@dataclass(slots=True)
class WebRtcSettings:
    ice: IceSettings = field(default_factory=IceSettings)
    # A session whose ICE and DTLS are not up this long after its offer was answered is closed.
    connect_timeout: float = 15.0
    # A WHIP publisher that sends no media for this long is gone.
    idle_timeout: float = 10.0
    # WHIP and WHEP sessions on this node, connecting or connected.
    max_sessions: int = 1000
    # Of those, from one client address (issue 16): one address cannot take the node's sessions.
    max_sessions_per_address: int = 20
    # Addresses or networks that cap does not apply to: a reverse proxy on this host brings every client
    # from loopback (as the HTTP and RTMP caps' exemptions).
    address_cap_exempt: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1"])
    # WHEP viewers of one stream.
    max_whep_viewers: int = 100
    # Frames a WHEP viewer may have queued before it skips to the next keyframe.
    viewer_queue_frames: int = 500

    def validate(self) -> None:
        """Raise ValueError naming the setting that cannot work (api.config checks address_cap_exempt)."""
        for name in ("max_sessions", "max_sessions_per_address"):
            if getattr(self, name) < 1:
                raise ValueError(f"[webrtc] {name} must be at least 1 (it is {getattr(self, name)})")
        if self.connect_timeout <= 0:
            raise ValueError(f"[webrtc] connect_timeout must be more than 0 (it is {self.connect_timeout})")


class Session:
    """What WHIP and WHEP sessions share: the peer connection, timeouts and the way out."""

    protocol = ""

    def __init__(self, registry: Registry, app: str, name: str, remote: str) -> None:
        self.registry = registry
        self.id = secrets.token_urlsafe(18)
        self.app = app
        self.name = name
        self.remote = remote
        self.pc = RTCPeerConnection(registry.settings.ice.configuration())
        self.opened = time.monotonic()
        self.connected = False
        self.closed = False
        self.close_reason = ""
        self._closing: asyncio.Future[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(registry.settings.connect_timeout, self._connect_timed_out)
        self.pc.on("connectionstatechange", self._state_changed)

    @property
    def etag(self) -> str:
        return f'"{self.id[:12]}"'

    def _connect_timed_out(self) -> None:
        if not self.connected:
            self.registry.counters["timeouts"] += 1
            self.end("ICE/DTLS did not connect in time (connect_timeout)")

    async def _state_changed(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and not self.connected and not self.closed:
            self.connected = True
            self._timer.cancel()
            self.on_connected()
        elif state in ("failed", "closed"):
            self.end(f"connection {state}")

    def on_connected(self) -> None:
        """ICE and DTLS are up."""

    def end(self, reason: str) -> None:
        """Close from a callback that cannot wait."""
        if not self.closed and self._closing is None:
            self._closing = asyncio.ensure_future(self.close(reason))

    async def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._timer.cancel()
        self.registry.remove(self)
        self.release()
        await self.pc.close()
        untangle(self.pc)
        self.log_end()

    def release(self) -> None:
        """Give back what the session holds in the hub (synchronous, runs before the pc closes)."""

    def log_end(self) -> None:
        log.info(
            "%s end %s/%s from %s (%s): %.1f s",
            self.protocol,
            self.app,
            self.name,
            self.remote,
            self.close_reason,
            time.monotonic() - self.opened,
        )


def untangle(pc: RTCPeerConnection) -> None:
    """Break the reference cycles a closed peer connection is left in, so that reference counting frees
    it and its session at once. aiortc (1.16) removes its own listeners on close, but its ICE gatherer,
    ICE and DTLS transports keep theirs, bound methods of the connection: a cycle that only a full
    collection reclaims, and those are rare in a long-running server (issue 16, finding #5)."""
    transports = {t.receiver.transport for t in pc.getTransceivers()}
    if pc.sctp is not None:
        transports.add(pc.sctp.transport)
    for dtls in transports:
        if dtls is None:
            continue
        dtls.remove_all_listeners()
        dtls.transport.remove_all_listeners()
        dtls.transport.iceGatherer.remove_all_listeners()


class Locator(Protocol):
    """Where sessions live when several server processes share the HTTP port (a cluster, injected by
    the composition root): a session's DELETE or PATCH may land on a process that does not hold it."""

    def opened(self, session_id: str) -> None:
        """This process holds ``session_id`` now."""

    def closed(self, session_id: str) -> None:
        """It does not any more."""

    async def forward(self, request: web.Request) -> web.StreamResponse | None:
        """The answer of the process that holds the session ``request`` names; None if none does."""


class Registry:
    def __init__(self, settings: WebRtcSettings, locator: Locator | None = None) -> None:
        self.settings = settings
        self.sessions: dict[str, Session] = {}
        self.per_address: dict[str, int] = {}  # sessions and offers being answered, by client address
        self.offers = 0  # offers being answered
        self.locator = locator
        self._exempt = [ipaddress.ip_network(a, strict=False) for a in settings.address_cap_exempt]
        # Offers refused by max_sessions and by max_sessions_per_address; sessions the ICE deadline ended.
        self.counters = dict.fromkeys(("refused_total", "refused_address", "timeouts"), 0)

    def admit(self, remote: str) -> tuple[int, str] | None:
        """Count in an offer from ``remote`` until its session is added (:meth:`add`) or it is withdrawn
        (:meth:`withdraw`), so that concurrent offers cannot pass the caps together while they are
        authorized; or say why it is refused: HTTP status, a reason that names the setting (counted)."""
        s = self.settings
        if len(self.sessions) + self.offers >= s.max_sessions:
            self.counters["refused_total"] += 1
            return (
                503,
                f"this server has {s.max_sessions} WebRTC sessions, the limit ([webrtc] max_sessions);"
                " try another node or later",
            )
        if self.per_address.get(remote, 0) >= s.max_sessions_per_address and not exempt(remote, self._exempt):
            self.counters["refused_address"] += 1
            return 429, (
                f"{s.max_sessions_per_address} WebRTC sessions from one address is the limit"
                " ([webrtc] max_sessions_per_address); end one (DELETE its resource URL) first"
            )
        self.offers += 1
        self._count(remote, 1)
        return None

    def withdraw(self, remote: str) -> None:
        """An offer :meth:`admit` counted in was refused: it no longer counts."""
        self.offers -= 1
        self._count(remote, -1)

    def _count(self, remote: str, change: int) -> None:
        left = self.per_address.get(remote, 0) + change
        if left:
            self.per_address[remote] = left
        else:
            del self.per_address[remote]

    def totals(self) -> dict[str, int]:
        return {"sessions": len(self.sessions), **self.counters}

    def add(self, session: Session) -> None:
        """The session of an offer :meth:`admit` counted in (and counted by its address already)."""
        self.sessions[session.id] = session
        self.offers -= 1
        if self.locator is not None:
            self.locator.opened(session.id)

    def remove(self, session: Session) -> None:
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
            self._count(session.remote, -1)
            if self.locator is not None:
                self.locator.closed(session.id)

    def find(self, protocol: str, name: str, session_id: str) -> Session | None:
        """The session behind a resource URL; None unless every part of the URL matches."""
        session = self.sessions.get(session_id)
        if session is None or session.protocol != protocol or session.name != name:
            return None
        return session

    def count(self, protocol: str) -> int:
        return sum(1 for s in self.sessions.values() if s.protocol == protocol)

    async def close_all(self, reason: str) -> None:
        await asyncio.gather(*(s.close(reason) for s in list(self.sessions.values())), return_exceptions=True)
