"""Where a webhook may point (issue 16, #8): public addresses only, unless a setting allows others.

An app's webhook URL is a request this server makes on the app's behalf. Pointed at 127.0.0.1,
169.254.169.254 or a private network, it would reach services that trust the server's own address
(Redis, a cloud's metadata endpoint). Such URLs are refused when they are set (app ``webhook_url``,
which the goods ``webhook`` review also uses, and the channel's ``comment_webhook``); at delivery,
names are resolved through ``PublicResolver``, so a name that later resolves to such an address is
not reached either, and redirects are never followed (a redirect could point anywhere).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from api import errors
from api.errors import ApiError

ALLOW_SETTING = "[rooms] webhook_private_addresses = true"


def is_public(address: str) -> bool:
    """Whether ``address`` (an IP literal) is a global unicast address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_url(name: str, url: str, allow_private: bool) -> None:
    """Refuse (200002) a webhook URL that is not http(s), or whose host is a non-public IP or localhost."""
    if not url:
        return  # "" turns the webhook off
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(errors.INVALID_ARGS, f'{name} {url!r} is not an http(s) URL (or "" for none)')
    if allow_private:
        return
    host = parts.hostname.rstrip(".")
    try:
        public = is_public(host)
    except ValueError:  # a name: checked again each time it is resolved for a delivery
        public = host != "localhost" and not host.endswith(".localhost")
    if not public:
        raise ApiError(
            errors.INVALID_ARGS,
            f"{name} {url!r} points at a loopback, link-local or private address: use a public address,"
            f" or allow such addresses with {ALLOW_SETTING}",
        )


class PublicResolver(AbstractResolver):
    """aiohttp's resolver with every non-public address dropped: a name resolving only to such
    addresses fails to connect, with an error that says why."""

    def __init__(self) -> None:
        self._resolver = aiohttp.DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        found: list[ResolveResult] = await self._resolver.resolve(host, port, family)
        public = [result for result in found if is_public(result["host"])]
        if not public:
            reason = f"{host} resolves to no public address; allow private ones with {ALLOW_SETTING}"
            raise OSError(errno.EHOSTUNREACH, reason)
        return public

    async def close(self) -> None:
        await self._resolver.close()


def session(allow_private: bool, **kwargs: Any) -> aiohttp.ClientSession:
    """A client session for webhook deliveries: names resolve to public addresses only, unless allowed."""
    connector = None if allow_private else aiohttp.TCPConnector(resolver=PublicResolver())
    return aiohttp.ClientSession(connector=connector, **kwargs)
