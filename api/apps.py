"""Apps and their credentials: creating apps, secrets, app settings, access tokens and daily quotas."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable
from datetime import datetime, tzinfo
from typing import Any

from api import errors, validation, webhook_targets
from api.errors import ApiError
from api.ladders import check_ladder
from api.models import GOODS_AUDIT_MODES, App, Token
from api.rooms import DAY, RoomSettings
from api.store.base import RoomStore

MAX_DELIVERIES_LISTED = 1000


# stable_token's forced refresh: at most this many a day, and one at most every this many seconds
# (a request sooner gets the current token back), as WeChat limits it.
FORCED_REFRESHES_PER_DAY = 20
FORCED_REFRESH_INTERVAL = 30
# In the last minutes of a stable token's life a plain request gets its successor; the old one stays
# valid until it expires (WeChat: "提前5分钟更新", both valid meanwhile).
STABLE_RENEW_BEFORE = 300


def daily_key(key: str, now: float, zone: tzinfo) -> str:
    """The counter of ``key`` for the day (in ``zone``) that ``now`` falls in."""
    return f"{key}:{datetime.fromtimestamp(now, zone).strftime('%Y%m%d')}"


async def count_daily(store: RoomStore, key: str, limit: int, now: float, zone: tzinfo) -> bool:
    """Count one more use of ``key`` today (in ``zone``) if fewer than ``limit`` were counted."""
    return await store.incr_counter(daily_key(key, now, zone), limit, 2 * DAY)


def goods_audit(mode: str) -> str:
    if mode not in GOODS_AUDIT_MODES:
        raise ApiError(errors.INVALID_ARGS, f"goods_audit {mode!r} must be one of {', '.join(GOODS_AUDIT_MODES)}")
    return mode


def _mac(app: App, text: str) -> str:
    digest = hmac.new(app.secret.encode(), text.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def make_token(app: App, expires_at: int, nonce: str) -> str:
    """An access_token that says whose it is and until when, signed with the app's secret:
    ``APPID.EXPIRY.NONCE.MAC``. The store says whether it is valid; the signed expiry lets an expired
    token be told from a forged or replaced one after the store has purged it (42001, not 40001)."""
    body = f"{app.appid}.{expires_at:x}.{nonce}"
    return f"{body}.{_mac(app, body)}"


def _token_parts(token: str) -> tuple[str, int, str] | None:
    """The appid, expiry and signed part of a well-formed token; None for anything else."""
    parts = token.split(".")
    if len(parts) != 4:
        return None
    try:
        return parts[0], int(parts[1], 16), token.rsplit(".", 1)[0]
    except ValueError:
        return None


class Apps:
    def __init__(self, store: RoomStore, settings: RoomSettings, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock

    async def create_app(self, name: str) -> App:
        app = App(
            appid="wx" + secrets.token_hex(8),
            secret=secrets.token_hex(16),
            name=name,
            push_key=secrets.token_hex(16),
        )
        await self.store.put_app(app)
        return app

    async def app(self, appid: str) -> App:
        app = await self.store.get_app(appid)
        if app is None:
            raise ApiError(errors.INVALID_APPID, f"no app {appid}")
        return app

    async def rotate_secret(self, appid: str) -> App:
        app = await self.app(appid)
        app.secret = secrets.token_hex(16)
        await self.store.put_app(app)
        return app

    async def update_app(self, app: App, changes: dict[str, Any]) -> App:
        """Set an app's ``webhook_url`` ("" turns webhooks off), ``play_key`` ("" turns play URL
        signing off), ``replay_retention_days``, ``renditions`` (its rooms' ladder; None: the server's)
        or ``goods_audit`` (who reviews its goods: one of ``GOODS_AUDIT_MODES``)."""
        unknown = changes.keys() - {"webhook_url", "play_key", "replay_retention_days", "renditions", "goods_audit"}
        if unknown:
            raise ApiError(errors.INVALID_ARGS, f"{', '.join(sorted(unknown))}: not a setting an app may change")
        f = validation.Fields(changes)
        current = await self.store.get_app(app.appid) or app
        if f.has("webhook_url"):
            url = f.string("webhook_url")
            webhook_targets.check_url("webhook_url", url, self.settings.webhook_private_addresses)
            current.webhook_url = url
        if f.has("play_key"):
            current.play_key = f.string("play_key")
        if f.has("replay_retention_days"):
            days = f.integer("replay_retention_days")
            if days < 1:
                raise ApiError(errors.INVALID_ARGS, "replay_retention_days must be at least 1")
            current.replay_retention_days = days
        if "renditions" in changes:
            current.renditions = check_ladder(changes["renditions"], "the app's")
        if f.has("goods_audit"):
            current.goods_audit = goods_audit(f.string("goods_audit"))
        await self.store.put_app(current)
        return current

    async def webhook_deliveries(self, app: App, limit: int) -> list[dict[str, Any]]:
        """The app's most recent webhook delivery attempts, newest first."""
        if not 1 <= limit <= MAX_DELIVERIES_LISTED:
            raise ApiError(errors.INVALID_ARGS, f"limit must be 1-{MAX_DELIVERIES_LISTED}")
        return await self.store.deliveries(app.appid, limit)

    async def _credentials(self, appid: str, secret: str) -> App:
        if not appid:
            raise ApiError(errors.APPID_MISSING)
        if not secret:
            raise ApiError(errors.SECRET_MISSING)
        app = await self.store.get_app(appid)
        if app is None:
            raise ApiError(errors.INVALID_APPID, f"no app {appid}")
        if not secrets.compare_digest(app.secret, secret):
            raise ApiError(errors.INVALID_SECRET)
        return app

    async def issue_token(self, appid: str, secret: str) -> Token:
        """/cgi-bin/token: a new token each call; the earlier ones stay valid until they expire."""
        app = await self._credentials(appid, secret)
        expires_at = math.ceil(self.clock() + self.settings.token_ttl_seconds)
        token = Token(make_token(app, expires_at, secrets.token_urlsafe(24)), appid, expires_at)
        await self.store.put_token(token)
        return token

    async def stable_token(self, appid: str, secret: str, force_refresh: bool) -> Token:
        """/cgi-bin/stable_token: the app's one stable token, the same while it is valid (its successor in
        its last 5 minutes). ``force_refresh`` replaces it at once, the old one stops working (40001), at
        most 20 times a day (45009) and once per 30 s (sooner: the current token again)."""
        app = await self._credentials(appid, secret)
        now = self.clock()
        # The current stable token is remembered by its expiry under a key no token can take (not
        # APPID.EXPIRY.NONCE.MAC): the token itself is derived again from the expiry and the secret.
        index = f"stable:{appid}"
        current = await self.store.get_token(index)
        token = make_token(app, int(current.expires_at), "stable") if current else ""
        if current is not None and await self.store.get_token(token) is None:
            current = None  # the secret changed, or the token was replaced: it is not valid any more
        if current is not None:
            issued_at = current.expires_at - self.settings.token_ttl_seconds
            if force_refresh and now - issued_at >= FORCED_REFRESH_INTERVAL:
                if not await count_daily(
                    self.store, f"stable_refresh:{appid}", FORCED_REFRESHES_PER_DAY, now, self.settings.zone
                ):
                    raise ApiError(
                        errors.QUOTA_EXCEEDED,
                        f"force_refresh may be used {FORCED_REFRESHES_PER_DAY} times a day: "
                        "call without it to get the current token",
                    )
                await self.store.put_token(Token(token, appid, now))  # revoked at once
            elif force_refresh or current.expires_at - now > STABLE_RENEW_BEFORE:
                return Token(token, appid, current.expires_at)
        expires_at = math.ceil(now + self.settings.token_ttl_seconds)
        issued = Token(make_token(app, expires_at, "stable"), appid, expires_at)
        await self.store.put_token(issued)
        await self.store.put_token(Token(index, appid, expires_at))
        return issued

    async def app_for_token(self, token: str) -> App:
        """The app a valid token belongs to. Refusals: 41001 no token, 42001 a token of ours that has
        expired, 40001 anything else (unknown, forged, replaced by a forced refresh, or signed with a
        secret that has since been rotated)."""
        if not token:
            raise ApiError(errors.ACCESS_TOKEN_MISSING)
        parts = _token_parts(token)
        app = await self.store.get_app(parts[0]) if parts else None
        if parts is None or app is None or not hmac.compare_digest(token, f"{parts[2]}.{_mac(app, parts[2])}"):
            raise ApiError(errors.INVALID_CREDENTIAL)
        record = await self.store.get_token(token)
        now = self.clock()
        if record is not None and record.appid == app.appid and record.expires_at > now:
            return app
        if parts[1] <= now:
            raise ApiError(errors.ACCESS_TOKEN_EXPIRED, "get a new one from /cgi-bin/token or /cgi-bin/stable_token")
        raise ApiError(errors.INVALID_CREDENTIAL)

    def callback_ips(self, local_address: str) -> list[str]:
        """getcallbackip: the addresses this server's requests (webhooks) come from, as configured
        (``[rooms] callback_ips``), else the address the caller reached this server at."""
        return list(self.settings.callback_ips) or ([local_address] if local_address else [])

    def _limit(self, api: str) -> int:
        quotas = self.settings.quotas
        return quotas.get(api, quotas.get("default", 10000))

    async def quota(self, app: App, api: str) -> None:
        """Count one call of ``api`` against the app's daily quota (45009 when it is used up)."""
        limit = self._limit(api)
        if not await count_daily(self.store, f"quota:{app.appid}:{api}", limit, self.clock(), self.settings.zone):
            raise ApiError(errors.QUOTA_EXCEEDED, f"{api} may be called {limit} times a day")

    async def usage(self, app: App, endpoints: list[str]) -> dict[str, Any]:
        """Today's calls of each quota'd endpoint (today in ``[rooms] time_zone``) and its daily quota."""
        now, zone = self.clock(), self.settings.zone
        listed = []
        for api in sorted(endpoints):
            calls = await self.store.counter(daily_key(f"quota:{app.appid}:{api}", now, zone))
            listed.append({"endpoint": api, "calls": calls, "quota": self._limit(api)})
        day = datetime.fromtimestamp(now, zone).date().isoformat()
        return {"day": day, "time_zone": self.settings.time_zone, "endpoints": listed}
