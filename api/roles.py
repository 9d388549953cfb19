"""Members of an app's live rooms and their roles: admins, anchors and operators (role management).

A member is a WeChat id (微信号) holding one or more roles. Each role is its own store collection
(``roles:{appid}:{role}``, documents by username), so that granting a role twice is refused
atomically (``add_doc``) and a role's count is one ``count_docs``. The real-name checks of WeChat
(400002, the ``codeurl`` QR code) do not apply to a self-hosted server: they are never raised.
See ../shared/reference/wechat-live-semantics.md §2.4 and docs/decisions.md "Roles and subscribers".
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from api import errors
from api.errors import ApiError
from api.models import App, LiveStatus
from api.store.base import RoomStore

# WeChat's rule for a WeChat id: 6-20 letters, digits, '_' or '-', starting with a letter.
WECHAT_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]{5,19}")
MAX_LISTED = 30  # getrolelist's limit
ROOMS_PAGE = 500  # rooms read at a time when looking for an anchor's rooms


def check_wechat_id(value: Any, errcode: int) -> str:
    """``value`` if it is a WeChat id, else the refusal ``errcode`` saying the rule."""
    if not isinstance(value, str) or WECHAT_ID.fullmatch(value) is None:
        raise ApiError(
            errcode, f"{str(value)[:40]!r} is not a WeChat id: 6-20 letters, digits, '_' or '-', starting with a letter"
        )
    return value


class Role(enum.IntEnum):
    SUPER_ADMIN = 0  # the app's owner: listed by WeChat, never set through the API
    ADMIN = 1
    ANCHOR = 2
    OPERATOR = 3


# 400003: the official limits per role.
LIMITS = {Role.ADMIN: 10, Role.ANCHOR: 500, Role.OPERATOR: 500}
ALL_ROLES = -1  # getrolelist's "every member"


@dataclass(slots=True)
class Member:
    """A getrolelist entry: the official fields (``headingimg`` sic)."""

    username: str
    roles: list[int]
    updated: int
    nickname: str = ""
    headingimg: str = ""
    openid: str = ""

    def to_wechat(self) -> dict[str, Any]:
        return {
            "headingimg": self.headingimg,
            "nickname": self.nickname,
            "openid": self.openid,
            "roleList": self.roles,
            "updateTimestamp": self.updated,
            "username": self.username,
        }


class Roles:
    def __init__(
        self, store: RoomStore, require_anchor_role: bool = False, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        # createRoom/editRoom refuse an anchorWechat without the anchor role (300030), as WeChat does;
        # off by default, so that teams that never set roles keep creating rooms.
        self.require_anchor_role = require_anchor_role
        self.clock = clock

    async def add(self, app: App, username: str, role: int) -> None:
        """addrole: grant ``role`` (1 admin, 2 anchor, 3 operator) to ``username``."""
        granted = _settable(role)
        check_wechat_id(username, errors.ROLE_USERNAME_INVALID)
        collection = _collection(app, granted)
        record = {"username": username, "time": int(self.clock())}
        if not await self.store.add_doc(collection, username, record):
            raise ApiError(errors.ROLE_DUPLICATE, f"{username} is already {granted.name.lower()}")
        # Counted after the insert, so that members added at once on several nodes never pass the limit
        # together (at worst they all back out and are told to retry).
        limit = LIMITS[granted]
        if await self.store.count_docs(collection) > limit:
            await self.store.delete_doc(collection, username)
            raise ApiError(errors.ROLE_LIMIT, f"an app has at most {limit} of role {granted.name.lower()}")

    async def delete(self, app: App, username: str, role: int) -> None:
        """deleterole: take ``role`` from ``username``; an anchor with rooms not started keeps it (400005)."""
        taken = _settable(role)
        check_wechat_id(username, errors.ROLE_USERNAME_INVALID)
        collection = _collection(app, taken)
        if await self.store.get_doc(collection, username) is None:
            raise ApiError(errors.ROLE_NOT_HELD, f"{username} is not {taken.name.lower()}")
        if taken == Role.ANCHOR:
            waiting = await self._rooms_not_started(app, username)
            if waiting:
                raise ApiError(
                    errors.ANCHOR_HAS_ROOMS,
                    f"{username} is the anchor of room(s) {', '.join(map(str, waiting))}: "
                    "change their anchorWechat or delete them first",
                )
        await self.store.delete_doc(collection, username)

    async def members(
        self, app: App, role: int = ALL_ROLES, offset: int = 0, limit: int = 10, keyword: str = ""
    ) -> tuple[list[Member], int]:
        """getrolelist: one page of the members holding ``role`` (-1: any), newest change first,
        whose username or nickname contains ``keyword`` (case-insensitive); and their number."""
        if role not in (ALL_ROLES, *Role):
            raise ApiError(errors.INVALID_ARGS, "role invalid, role must be -1 or 0 or 1 or 2 or 3")
        if offset < 0 or limit < 1:
            raise ApiError(errors.INVALID_ARGS, "offset must be >= 0 and limit >= 1")
        found: dict[str, Member] = {}
        for held in LIMITS:
            for username, doc in (await self.store.list_docs(_collection(app, held))).items():
                member = found.setdefault(username, Member(username, [], 0))
                member.roles.append(int(held))
                member.updated = max(member.updated, int(doc.get("time", 0)))
        needle = keyword.casefold()
        chosen = [
            m
            for m in found.values()
            if (role == ALL_ROLES or role in m.roles)
            and (needle in m.username.casefold() or needle in m.nickname.casefold())
        ]
        chosen.sort(key=lambda m: (-m.updated, m.username))
        return chosen[offset : offset + min(limit, MAX_LISTED)], len(chosen)

    async def holds(self, app: App, username: str, role: Role) -> bool:
        return await self.store.get_doc(_collection(app, role), username) is not None

    async def check_anchor(self, app: App, anchor_wechat: str) -> None:
        """For createRoom/editRoom (``Rooms.check_anchor``): 300030 when the setting asks for the anchor
        role and ``anchor_wechat`` does not hold it."""
        if self.require_anchor_role and not await self.holds(app, anchor_wechat, Role.ANCHOR):
            raise ApiError(
                errors.ANCHOR_WITHOUT_ROLE,
                f"{anchor_wechat} is not an anchor of this app: give it the role with role/addrole (role 2)",
            )

    async def _rooms_not_started(self, app: App, username: str) -> list[int]:
        waiting: list[int] = []
        start = 0
        while True:
            page, total = await self.store.list_rooms(app.appid, start, ROOMS_PAGE)
            waiting += [
                r.roomid for r in page if r.anchor_wechat == username and r.live_status == LiveStatus.NOT_STARTED
            ]
            start += len(page)
            if not page or start >= total:
                return sorted(waiting)


def _settable(role: int) -> Role:
    if role not in LIMITS:
        raise ApiError(errors.INVALID_ARGS, "role must be 1 (admin), 2 (anchor) or 3 (operator)")
    return Role(role)


def _collection(app: App, role: Role) -> str:
    return f"roles:{app.appid}:{int(role)}"
