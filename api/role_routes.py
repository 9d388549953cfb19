"""The official role management endpoints (``/wxaapi/broadcast/role/...``): addrole, deleterole,
getrolelist. Thin handlers over ``api.roles.Roles``."""

from __future__ import annotations

from aiohttp import web

from api.keys import ROLES
from api.models import App
from api.roles import ALL_ROLES
from api.validation import Fields
from api.wechat import Reply, official

ROLE_API = "/wxaapi/broadcast/role/"


@official("POST")
async def add_role(request: web.Request, app: App, f: Fields) -> Reply:
    # No codeurl: WeChat returns one only for an anchor who must pass its real-name check first.
    await request.app[ROLES].add(app, f.string("username"), f.integer("role"))
    return {}


@official("POST")
async def delete_role(request: web.Request, app: App, f: Fields) -> Reply:
    await request.app[ROLES].delete(app, f.string("username"), f.integer("role"))
    return {}


@official("GET")
async def role_list(request: web.Request, app: App, f: Fields) -> Reply:
    members, total = await request.app[ROLES].members(
        app,
        f.integer("role", required=False, default=ALL_ROLES),
        f.integer("offset", required=False),
        f.integer("limit", required=False, default=10),
        f.string("keyword", required=False),
    )
    return {"total": total, "list": [m.to_wechat() for m in members]}


def routes() -> list[web.RouteDef]:
    """Every method reaches an endpoint: a wrong one is answered as WeChat does (43001/43002)."""
    endpoints = {"addrole": add_role, "deleterole": delete_role, "getrolelist": role_list}
    return [web.route("*", ROLE_API + name, handler) for name, handler in endpoints.items()]
