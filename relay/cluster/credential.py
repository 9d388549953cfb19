"""The node credential: what a node shows another node's cluster listener.

A header ``X-Minilive-Node: NODE;EXPIRES;SIGNATURE``, where the signature is HMAC-SHA256 of
``NODE;EXPIRES;PATH`` under the cluster's secret: it names the node, holds for one path, and
expires within a minute, so a copied header is worth little. It is never an anchor's txSecret.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "X-Minilive-Node"
HOPS_HEADER = "X-Minilive-Hops"
FORWARDED_FOR = "X-Forwarded-For"
LIFETIME = 60.0
MAX_HOPS = 4  # origin -> edge -> edge -> edge: deeper is a loop of `origin` settings


def _signature(secret: str, node: str, expires: int, path: str) -> str:
    message = f"{node};{expires};{path}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, node: str, path: str, now: float | None = None) -> str:
    """The header value with which ``node`` asks for ``path``."""
    expires = int((time.time() if now is None else now) + LIFETIME)
    return f"{node};{expires};{_signature(secret, node, expires, path)}"


def verify(secret: str, value: str, path: str, now: float | None = None) -> str | None:
    """The node that signed ``value`` for ``path``; None if the credential is missing, malformed,
    expired or signed with another secret."""
    if not secret or not value or len(value) > 512:
        return None
    node, _, rest = value.partition(";")
    expires_text, _, signature = rest.partition(";")
    if not node or not expires_text.isdigit() or len(expires_text) > 12:
        return None
    expires = int(expires_text)
    now = time.time() if now is None else now
    if not now <= expires <= now + 2 * LIFETIME:
        return None
    if not hmac.compare_digest(signature, _signature(secret, node, expires, path)):
        return None
    return node
