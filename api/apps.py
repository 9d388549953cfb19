"""Apps and their credentials: creating apps, secrets, app settings, access tokens and daily quotas."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from api import errors, validation
from api.errors import ApiError
from api.ladders import check_ladder
from api.models import GOODS_AUDIT_MODES, App, Token
from api.rooms import DAY, RoomSettings
from api.store.base import RoomStore

MAX_DELIVERIES_LISTED = 1000


async def count_daily(store: RoomStore, key: str, limit: int, now: float) -> bool:
    """Count one more use of ``key`` today (local time) if fewer than ``limit`` were counted."""
    day = time.strftime("%Y%m%d", time.localtime(now))
    return await store.incr_counter(f"{key}:{day}", limit, 2 * DAY)


def goods_audit(mode: str) -> str:
    if mode not in GOODS_AUDIT_MODES:
        raise ApiError(errors.INVALID_ARGS, f"goods_audit {mode!r} must be one of {', '.join(GOODS_AUDIT_MODES)}")
    return mode


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
            parts = urlsplit(url)
            if url and (parts.scheme not in ("http", "https") or not parts.netloc):
                raise ApiError(errors.INVALID_ARGS, f"webhook_url {url!r} is not an http(s) URL")
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

    async def issue_token(self, appid: str, secret: str) -> Token:
        if not appid:
            raise ApiError(errors.APPID_MISSING)
        if not secret:
            raise ApiError(errors.SECRET_MISSING)
        app = await self.store.get_app(appid)
        if app is None:
            raise ApiError(errors.INVALID_APPID, f"no app {appid}")
        if not secrets.compare_digest(app.secret, secret):
            raise ApiError(errors.INVALID_SECRET)
        token = Token(secrets.token_urlsafe(48), appid, self.clock() + self.settings.token_ttl_seconds)
        await self.store.put_token(token)
        return token

    async def app_for_token(self, token: str) -> App:
        if not token:
            raise ApiError(errors.ACCESS_TOKEN_MISSING)
        record = await self.store.get_token(token)
        if record is None or record.expires_at <= self.clock():
            raise ApiError(errors.INVALID_CREDENTIAL)
        app = await self.store.get_app(record.appid)
        if app is None:
            raise ApiError(errors.INVALID_CREDENTIAL)
        return app

    async def quota(self, app: App, api: str) -> None:
        """Count one call of ``api`` against the app's daily quota (45009 when it is used up)."""
        quotas = self.settings.quotas
        limit = quotas.get(api, quotas.get("default", 10000))
        if not await count_daily(self.store, f"quota:{app.appid}:{api}", limit, self.clock()):
            raise ApiError(errors.QUOTA_EXCEEDED, f"{api} may be called {limit} times a day")
