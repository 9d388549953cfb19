"""The access decision every ingest and output asks before publishing or playing.

``api`` injects the policy (rooms, signatures, anonymous mode); protocols only ask.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class AccessRequest:
    action: str  # "publish" or "play"
    protocol: str  # "rtmp", "http-flv", "ws-flv", "whip", ...
    app: str
    name: str
    query: str
    remote: str


@dataclass(slots=True, frozen=True)
class Decision:
    allowed: bool
    reason: str = ""

    @classmethod
    def allow(cls) -> Decision:
        return cls(True)

    @classmethod
    def deny(cls, reason: str) -> Decision:
        return cls(False, reason)


Authorizer = Callable[[AccessRequest], Awaitable[Decision]]


async def allow_all(request: AccessRequest) -> Decision:
    return Decision.allow()


async def decide(authorizer: Authorizer, request: AccessRequest, log) -> Decision:
    """Ask ``authorizer``; a failing policy refuses (fail closed) and says where to look."""
    try:
        return await authorizer(request)
    except Exception:
        log.exception("%s authorization failed for %s/%s", request.action, request.app, request.name)
        return Decision.deny("internal error while authorizing; see the server log")
