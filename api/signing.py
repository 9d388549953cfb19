"""Tencent-style anti-leech signatures, as in the push address that getpushurl returns.

txTime   = lowercase hex of the expiry (Unix seconds)
txSecret = lowercase hex MD5(key + streamName + txTime)
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qs, urlencode


def tx_secret(key: str, stream: str, tx_time: str) -> str:
    return hashlib.md5((key + stream + tx_time).encode()).hexdigest()


def sign_query(key: str, stream: str, expires_at: int) -> str:
    """``txSecret=..&txTime=..`` for a URL valid until ``expires_at``."""
    tx_time = f"{expires_at & 0xFFFFFFFF:x}"
    return urlencode({"txSecret": tx_secret(key, stream, tx_time), "txTime": tx_time})


def verify_query(key: str, stream: str, query: str, now: float) -> str | None:
    """None if ``query`` carries a valid, unexpired signature for ``stream``; else why not."""
    params = parse_qs(query)
    secret = (params.get("txSecret") or [""])[0]
    tx_time = (params.get("txTime") or [""])[0]
    if not secret or not tx_time:
        return "the URL has no txSecret/txTime signature: use the push URL from getpushurl"
    try:
        expires = int(tx_time, 16)
    except ValueError:
        return f"txTime {tx_time!r} is not hexadecimal Unix time"
    # Tencent's examples use upper case, WeChat's push addresses lower case: accept both.
    expected = tx_secret(key, stream, tx_time.lower())
    expected_upper = tx_secret(key, stream, tx_time.upper())
    secret = secret.lower()
    if not (hmac.compare_digest(secret, expected) or hmac.compare_digest(secret, expected_upper)):
        return "txSecret does not match: the URL was not signed with this app's key (rotated?)"
    if expires <= now:
        return "the signature expired (txTime is in the past): fetch a new push URL from getpushurl"
    return None
