"""minilive's public HTTP API as the back end uses it, with the app's access token fetched from
``/cgi-bin/token`` and cached until shortly before it expires."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from examples.backend.config import Config
from examples.backend.errors import BackendError

TIMEOUT = aiohttp.ClientTimeout(total=10)
REFRESH_EARLY_SECONDS = 300  # a token about to expire is replaced before a call can fail with it
STALE_TOKEN = (40001, 42001)  # unknown (secret rotated, server data reset) and expired


class Minilive:
    def __init__(self, session: aiohttp.ClientSession, config: Config) -> None:
        self.session = session
        self.config = config
        self._token: tuple[str, float] | None = None  # (access token, refresh at)
        self._lock = asyncio.Lock()  # one /cgi-bin/token call at a time, however many requests wait

    async def access_token(self, fresh: bool = False) -> str:
        async with self._lock:
            if fresh or self._token is None or self._token[1] <= time.monotonic():
                params = {"grant_type": "client_credential", "appid": self.config.appid, "secret": self.config.secret}
                body = await self._call("GET", "/cgi-bin/token", params=params)
                if "access_token" not in body:
                    why = body.get("errmsg")
                    raise BackendError(502, "minilive_refused", f"minilive refused MINILIVE_APPID/SECRET: {why}")
                refresh_at = time.monotonic() + max(int(body["expires_in"]) - REFRESH_EARLY_SECONDS, 1)
                self._token = (str(body["access_token"]), refresh_at)
            return self._token[0]

    async def rest(self, method: str, path: str, json: Any = None) -> dict[str, Any]:
        """``/api/v1`` with the app's token (a fresh token once, if minilive no longer knows it)."""
        for attempt in (0, 1):
            token = await self.access_token(fresh=attempt == 1)
            headers = {"Authorization": f"Bearer {token}"}
            body = await self._call(method, f"/api/v1{path}", json=json, headers=headers)
            error = body.get("error")
            if not (isinstance(error, dict) and error.get("code") in STALE_TOKEN):
                break
        if isinstance(error, dict):
            raise BackendError(_status(error.get("code")), "minilive_error", str(error.get("message")))
        return body

    async def wxa(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        """An official (WeChat-compatible) GET with ``access_token`` in the query."""
        for attempt in (0, 1):
            token = await self.access_token(fresh=attempt == 1)
            body = await self._call("GET", path, params={**params, "access_token": token})
            if body.get("errcode") not in STALE_TOKEN:
                break
        if body.get("errcode"):
            raise BackendError(_status(body["errcode"]), "minilive_error", f"{body['errcode']}: {body.get('errmsg')}")
        return body

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        url = self.config.minilive_url + path
        try:
            async with self.session.request(method, url, timeout=TIMEOUT, **kwargs) as reply:
                body = await reply.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise BackendError(502, "minilive_unreachable", f"{url} (MINILIVE_URL) did not answer: {exc}") from None
        if not isinstance(body, dict):
            raise BackendError(502, "minilive_unreachable", f"{url} answered no JSON object: is MINILIVE_URL right?")
        return body


def _status(errcode: Any) -> int:
    """The HTTP status the mini-program gets for a minilive error code."""
    if errcode in (300022, 9410000):  # room not found
        return 404
    if errcode in (300023,):  # the room's status forbids it
        return 409
    if errcode in STALE_TOKEN or errcode == 40013:  # the back end's own credentials
        return 502
    return 400
