"""Viewer tokens: who a room channel member is, vouched for by the app's own server.

The team's server (holding the app's access token) asks ``POST /api/v1/rooms/{id}/viewer_tokens``
for a viewer of its mini-program; the viewer joins the room's channel with the token. A token is
``BASE64URL(payload JSON) "." BASE64URL(HMAC-SHA256(key, payload))``; the key is derived from the
app's secret, so every node can check a token without the store holding tokens, and rotating the
secret revokes them all. A token is bound to one room and one openid and expires quickly: it is
only checked when a member joins.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

VIEWER, ADMIN = "viewer", "admin"
ROLES = (VIEWER, ADMIN)
MAX_TOKEN_CHARS = 2048  # an openid, a nickname and a few numbers; anything longer is not ours


class TokenRefused(ValueError):
    """The token is malformed, forged, for another room, or expired; the message says which."""


@dataclass(slots=True, frozen=True)
class ViewerIdentity:
    roomid: int
    openid: str
    nickname: str
    role: str  # VIEWER, or ADMIN: may moderate and comment while comments are banned
    expires_at: int  # Unix seconds

    @property
    def admin(self) -> bool:
        return self.role == ADMIN


def _key(secret: str) -> bytes:
    # A key of its own: a token's signature reveals nothing usable elsewhere.
    return hmac.new(secret.encode(), b"minilive viewer token v1", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(secret: str, viewer: ViewerIdentity) -> str:
    payload = json.dumps(
        {"r": viewer.roomid, "o": viewer.openid, "n": viewer.nickname, "a": viewer.role, "e": viewer.expires_at},
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()
    signature = hmac.new(_key(secret), payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(signature)}"


def verify(secret: str, token: str, roomid: int, now: float) -> ViewerIdentity:
    """The viewer a token names, if it was signed with ``secret`` for room ``roomid`` and is unexpired."""
    body, _, signature = token.partition(".")
    if len(token) > MAX_TOKEN_CHARS or not body or not signature:
        raise TokenRefused("malformed viewer token: pass the token that viewer_tokens returned, unchanged")
    try:
        payload = _unb64(body)
        given = _unb64(signature)
    except (binascii.Error, ValueError):
        raise TokenRefused("malformed viewer token: it is not base64url") from None
    expected = hmac.new(_key(secret), payload, hashlib.sha256).digest()
    if not hmac.compare_digest(given, expected):
        raise TokenRefused("viewer token signature does not match: it was not issued by this server for this app")
    fields: dict[str, Any] = json.loads(payload)
    viewer = ViewerIdentity(int(fields["r"]), str(fields["o"]), str(fields["n"]), str(fields["a"]), int(fields["e"]))
    if viewer.roomid != roomid:
        raise TokenRefused(f"viewer token is for room {viewer.roomid}, not {roomid}")
    if viewer.expires_at <= now:
        raise TokenRefused("viewer token expired: ask your server for a new one (POST .../viewer_tokens)")
    return viewer
