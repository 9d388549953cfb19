"""The back end's own login sessions: ``openid.expiry.mac`` (HMAC-SHA256 with SESSION_SECRET), so that
nothing is stored and several copies of the back end share them. The mini-program keeps the token and
sends it as ``Authorization: Bearer TOKEN``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from examples.backend.errors import BackendError


def _mac(secret: str, openid: str, expiry: int) -> str:
    digest = hmac.new(secret.encode(), f"{openid}.{expiry}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue(secret: str, openid: str, ttl_seconds: int, now: float | None = None) -> str:
    expiry = int(now if now is not None else time.time()) + ttl_seconds
    return f"{openid}.{expiry}.{_mac(secret, openid, expiry)}"


def verify(secret: str, authorization: str, now: float | None = None) -> str:
    """The openid of a valid ``Bearer`` session token; 401 naming the fix otherwise."""
    scheme, _, token = authorization.partition(" ")
    parts = token.split(".")
    if scheme != "Bearer" or len(parts) != 3 or not parts[1].isdigit():
        raise BackendError(401, "login_required", "send Authorization: Bearer SESSION from POST /api/login")
    openid, expiry, mac = parts[0], int(parts[1]), parts[2]
    if not hmac.compare_digest(mac, _mac(secret, openid, expiry)):
        raise BackendError(401, "login_required", "the session was not issued by this back end: log in again")
    if expiry <= (now if now is not None else time.time()):
        raise BackendError(401, "login_expired", "the session expired: log in again (POST /api/login)")
    return openid
