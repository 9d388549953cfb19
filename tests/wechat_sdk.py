"""A real WeChat SDK (wechatpy) pointed at a test server, as integrations drive the official API.

``sdk_client(server, app)`` gives a ``WeChatClient`` whose token comes from the server's
/cgi-bin/token and whose calls (``client.wxa._post("wxaapi/broadcast/room/create", data=...)``,
``client.misc.get_wechat_ips()``...) go to the server. wechatpy is synchronous (requests):
call it with ``await call(client.wxa._post, path, data=body)``, which runs it in a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from wechatpy import WeChatClient
from wechatpy.client.api.base import BaseWeChatAPI

from api.models import App
from api.server import Server

T = TypeVar("T")
WECHAT_HOST = "https://api.weixin.qq.com"


class SdkClient(WeChatClient):
    """wechatpy's client with api.weixin.qq.com replaced by ``base`` (http://127.0.0.1:PORT)."""

    def __init__(self, base: str, appid: str, secret: str, auto_retry: bool = True) -> None:
        super().__init__(appid, secret, auto_retry=auto_retry)
        self.base = base
        self.API_BASE_URL = self._here(self.API_BASE_URL)
        for api in vars(self).values():  # client.wxa, client.misc...: each names its own base
            if isinstance(api, BaseWeChatAPI) and getattr(api, "API_BASE_URL", None):
                api.API_BASE_URL = self._here(api.API_BASE_URL)

    def _here(self, url: str) -> str:
        return url.replace(WECHAT_HOST, self.base, 1)

    def fetch_access_token(self) -> dict[str, Any]:
        query = {"grant_type": "client_credential", "appid": self.appid, "secret": self.secret}
        return self._fetch_access_token(url=self._here(f"{WECHAT_HOST}/cgi-bin/token"), params=query)


def sdk_client(server: Server, app: App, auto_retry: bool = True) -> SdkClient:
    """A wechatpy client of ``app`` talking to ``server``; ``auto_retry`` off shows token errors as
    they are (wechatpy fetches a new token and retries on 40001/40014/42001)."""
    return SdkClient(f"http://127.0.0.1:{server.http_port}", app.appid, app.secret, auto_retry)


async def call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a (blocking) wechatpy call off the event loop that serves it."""
    return await asyncio.to_thread(function, *args, **kwargs)
