"""WeChat login: a ``wx.login`` code exchanged for the user's openid (jscode2session), or, where WeChat
cannot be reached or ``MOCK_WECHAT=1``, a mock that derives a stable openid from the code."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

import aiohttp

from examples.backend.config import Config
from examples.backend.errors import BackendError

log = logging.getLogger("backend.wechat")

CODE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")  # wx.login codes are 32 such characters
TIMEOUT = aiohttp.ClientTimeout(total=5)


@dataclass(slots=True, frozen=True)
class Login:
    openid: str
    mocked: bool  # True: the openid was made up from the code; nobody proved to be that user


def mock_openid(code: str) -> str:
    """The same code always gives the same openid (tests and DevTools sessions stay stable)."""
    return "mock_" + hashlib.sha256(code.encode()).hexdigest()[:24]


async def code2session(session: aiohttp.ClientSession, config: Config, code: str) -> Login:
    if not CODE.match(code):
        raise BackendError(400, "bad_code", "code must be the code that wx.login returned (letters, digits, - and _)")
    if config.mock_wechat == "1":
        return _mocked(code, "MOCK_WECHAT=1")
    if not (config.wechat_appid and config.wechat_secret):
        if config.mock_wechat == "0":
            raise BackendError(503, "wechat_unconfigured", "set WECHAT_APPID and WECHAT_SECRET (MOCK_WECHAT=0)")
        return _mocked(code, "WECHAT_APPID/WECHAT_SECRET are not set")
    params = {
        "appid": config.wechat_appid,
        "secret": config.wechat_secret,
        "js_code": code,
        "grant_type": "authorization_code",
    }
    try:
        async with session.get(f"{config.wechat_url}/sns/jscode2session", params=params, timeout=TIMEOUT) as reply:
            # WeChat answers text/plain JSON.
            body = await reply.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        # Never a mock once WeChat credentials are set: an outage must not let anyone pick an openid.
        raise BackendError(503, "wechat_unreachable", f"WeChat's jscode2session cannot be reached: {exc}") from None
    if not isinstance(body, dict) or body.get("errcode") or not body.get("openid"):
        errcode = body.get("errcode") if isinstance(body, dict) else None
        errmsg = body.get("errmsg") if isinstance(body, dict) else str(body)[:200]
        # 40029: the code is invalid or used; 40163: used already. The mini-program calls wx.login again.
        raise BackendError(401, "login_refused", f"jscode2session refused the code ({errcode}: {errmsg}): log in again")
    return Login(str(body["openid"]), mocked=False)


def _mocked(code: str, why: str) -> Login:
    openid = mock_openid(code)
    log.warning("MOCK code2session (%s): openid %s is made up from the code, not checked by WeChat", why, openid)
    return Login(openid, mocked=True)
