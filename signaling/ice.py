"""Which host candidates minilive's peer connections offer: configured addresses and a UDP port range.

aioice gathers host candidates on every interface but loopback, on ephemeral ports, with no setting
for either; a server behind a firewall needs a fixed interface and port range. aiortc builds its ICE
``Connection`` by name from ``aiortc.rtcicetransport``, so that name is replaced with a subclass that
applies the policy of the ``with policy(...)`` block the connection was created in. Connections made
outside such a block (aiortc clients in the same process, as in tests) keep aioice's behaviour.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import aioice.ice
import aioice.turn
from aiortc import RTCConfiguration, RTCIceServer, rtcicetransport


@dataclass(slots=True)
class IceSettings:
    # Addresses to offer host candidates on (e.g. the public interface's); empty: every interface's
    # address but loopback, as aioice picks them.
    addresses: list[str] = field(default_factory=list)
    # UDP ports for host candidates, inclusive; 0, 0: any ephemeral port.
    port_min: int = 0
    port_max: int = 0
    # STUN/TURN servers: "stun:HOST:PORT", "turn:HOST:PORT?transport=udp"; aiortc uses one of each.
    servers: list[str] = field(default_factory=list)
    turn_username: str = ""
    turn_password: str = ""

    def configuration(self) -> RTCConfiguration:
        servers = [
            RTCIceServer(url, self.turn_username or None, self.turn_password or None)
            if url.startswith("turn")
            else RTCIceServer(url)
            for url in self.servers
        ]
        return RTCConfiguration(iceServers=servers)


_policy: contextvars.ContextVar[IceSettings | None] = contextvars.ContextVar("minilive_ice_policy", default=None)


@contextmanager
def policy(settings: IceSettings) -> Iterator[None]:
    """ICE connections created inside the block gather host candidates as ``settings`` say."""
    token = _policy.set(settings)
    try:
        yield
    finally:
        _policy.reset(token)


class _Connection(aioice.Connection):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._minilive_policy = _policy.get()

    async def get_component_candidates(
        self, component: int, addresses: list[str], timeout: int = 5
    ) -> list[aioice.Candidate]:
        settings = self._minilive_policy
        if settings is None:
            return await super().get_component_candidates(component, addresses, timeout)
        if settings.addresses and addresses:  # none at all under the relay-only policy
            addresses = settings.addresses
        if not settings.port_max:
            return await super().get_component_candidates(component, addresses, timeout)
        candidates = [await self._bind(component, address, settings) for address in addresses]
        found = [c for c in candidates if c is not None]
        if self.stun_server:
            protocols = [p for p in self._protocols if p.local_candidate in found and ":" not in p.local_candidate.host]
            results = await asyncio.gather(
                *(aioice.ice.server_reflexive_candidate(p, self.stun_server) for p in protocols),
                return_exceptions=True,
            )
            found += [r[0] for r in results if isinstance(r, tuple)]
        # TURN (if configured) as aioice does it; with no addresses it binds nothing else.
        return found + await super().get_component_candidates(component, [], timeout)

    async def _bind(self, component: int, address: str, settings: IceSettings) -> aioice.Candidate | None:
        loop = asyncio.get_running_loop()
        ports = list(range(settings.port_min, settings.port_max + 1))
        start = random.randrange(len(ports))
        for port in ports[start:] + ports[:start]:
            try:
                transport, protocol = await loop.create_datagram_endpoint(
                    lambda: aioice.ice.StunProtocol(self), local_addr=(address, port)
                )
            except OSError:
                continue
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, aioice.turn.UDP_SOCKET_BUFFER_SIZE)
            host, bound = transport.get_extra_info("sockname")[:2]
            protocol.local_candidate = aioice.Candidate(
                foundation=aioice.ice.candidate_foundation("host", "udp", host),
                component=component,
                transport="udp",
                priority=aioice.ice.candidate_priority(component, "host"),
                host=host,
                port=bound,
                type="host",
            )
            self._protocols.append(protocol)
            return protocol.local_candidate
        return None


rtcicetransport.Connection = _Connection  # type: ignore[misc]
