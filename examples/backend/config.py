"""The back end's settings, from the environment (a team deploys it as a twelve-factor app)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

MOCK_MODES = ("auto", "1", "0")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable and the fix."""


@dataclass(slots=True, frozen=True)
class Config:
    minilive_url: str  # where this back end reaches minilive, e.g. http://127.0.0.1:8080
    appid: str  # the minilive app (minilive apps add), not the mini-program's WeChat appid
    secret: str
    public_url: str = ""  # minilive as the mini-program reaches it (wss://... channel URLs); default minilive_url
    wechat_appid: str = ""  # the mini-program's own appid and AppSecret, for jscode2session
    wechat_secret: str = ""
    # "1": always the mock; "0": never; "auto": the mock only while no WeChat credentials are set (a
    # back end with credentials answers 503 when WeChat cannot be reached: it never falls back).
    mock_wechat: str = "auto"
    wechat_url: str = "https://api.weixin.qq.com"
    session_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    session_ttl_seconds: int = 7 * 24 * 3600
    anchors: frozenset[str] = frozenset()  # openids that get push URLs; "*" lets anyone (development only)
    renditions: tuple[str, ...] = ()  # the server's [transcode] renditions, which the REST API does not show
    host: str = "127.0.0.1"
    port: int = 8000

    @property
    def channel_base(self) -> str:
        base = (self.public_url or self.minilive_url).rstrip("/")
        return "ws" + base.removeprefix("http") if base.startswith("http") else base

    def may_push(self, openid: str) -> bool:
        return "*" in self.anchors or openid in self.anchors

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Config:
        missing = [name for name in ("MINILIVE_URL", "MINILIVE_APPID", "MINILIVE_SECRET") if not env.get(name)]
        if missing:
            raise ConfigError(
                f"set {', '.join(missing)}: the minilive server's URL and the app that `minilive apps add` printed"
            )
        mock = env.get("MOCK_WECHAT", "auto").strip().lower() or "auto"
        if mock not in MOCK_MODES:
            raise ConfigError("MOCK_WECHAT must be 1 (always mock code2session), 0 (never) or auto")
        port = env.get("PORT", "8000")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"PORT must be a TCP port number, not {port!r}")
        optional = {
            "public_url": env.get("MINILIVE_PUBLIC_URL", ""),
            "wechat_appid": env.get("WECHAT_APPID", ""),
            "wechat_secret": env.get("WECHAT_SECRET", ""),
            "wechat_url": env.get("WECHAT_API_URL", "https://api.weixin.qq.com"),
            "host": env.get("HOST", "127.0.0.1"),
        }
        if env.get("SESSION_SECRET"):
            optional["session_secret"] = env["SESSION_SECRET"]
        return cls(
            minilive_url=env["MINILIVE_URL"].rstrip("/"),
            appid=env["MINILIVE_APPID"],
            secret=env["MINILIVE_SECRET"],
            mock_wechat=mock,
            anchors=frozenset(_words(env.get("ANCHOR_OPENIDS", ""))),
            renditions=tuple(_words(env.get("RENDITIONS", ""))),
            port=int(port),
            **optional,
        )


def _words(value: str) -> list[str]:
    return [word.strip() for word in value.split(",") if word.strip()]
