"""The goods endpoints: the official goods library and goods-in-room API, and the REST routes of the
app's goods review.

Official replies use the official names: camelCase in ``/wxaapi/broadcast/goods/...``, snake_case in
``getgoodswarehouse``, prices in yuan (the library) as the official lists show them. Handlers parse,
call one ``GoodsLibrary`` function (``request.app[GOODS]``) and shape the reply.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api import errors
from api.errors import ApiError
from api.goods import THIRD_PARTY_TAG_API, LibraryGoods, yuan
from api.keys import GOODS, URLS
from api.models import App
from api.rest import authenticated, json_body, query_int
from api.validation import Fields
from api.wechat import Reply, official

GOODS_API = "/wxaapi/broadcast/goods/"
WAREHOUSE = "/wxa/business/getgoodswarehouse"


def _goods_id(f: Fields, name: str = "goodsId") -> int:
    value = f.integer(name)
    if value <= 0:
        raise ApiError(errors.INVALID_ARGS, f"{name} must be a positive goods id")
    return value


def _ids(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not value or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise ApiError(errors.INVALID_ARGS, f"{name} must be a non-empty array of goods ids")
    return value


def approved_view(goods: LibraryGoods, request: web.Request) -> Reply:
    """An item of goods/getapproved."""
    return {
        "goodsId": goods.goods_id,
        "coverImgUrl": request.app[URLS].media_url(goods.cover_img),
        "name": goods.name,
        "price": yuan(goods.price),
        "price2": yuan(goods.price2),
        "url": goods.url,
        "priceType": goods.price_type,
        "thirdPartyTag": THIRD_PARTY_TAG_API,
        "thirdPartyAppid": goods.third_party_appid,
    }


def warehouse_view(goods: LibraryGoods, request: web.Request) -> Reply:
    """An item of getgoodswarehouse (its official names mix snake_case and camelCase)."""
    return {
        "goods_id": goods.goods_id,
        "name": goods.name,
        "cover_img_url": request.app[URLS].media_url(goods.cover_img),
        "url": goods.url,
        "price_type": goods.price_type,
        "price": yuan(goods.price),
        "price2": yuan(goods.price2),
        "audit_status": goods.audit_status,
        "third_party_tag": THIRD_PARTY_TAG_API,
        "thirdPartyAppid": goods.third_party_appid,
    }


# ---------------------------------------------------------------- the library


@official("POST")
async def add(request: web.Request, app: App, f: Fields) -> Reply:
    goods = await request.app[GOODS].add(app, f.body)
    return {"goodsId": goods.goods_id, "auditId": goods.audit_id}


@official("POST")
async def reset_audit(request: web.Request, app: App, f: Fields) -> Reply:
    await request.app[GOODS].reset_audit(app, _goods_id(f), f.integer("auditId"))
    return {}


@official("POST")
async def audit(request: web.Request, app: App, f: Fields) -> Reply:
    return {"auditId": await request.app[GOODS].resubmit(app, _goods_id(f))}


@official("POST")
async def delete(request: web.Request, app: App, f: Fields) -> Reply:
    await request.app[GOODS].delete(app, _goods_id(f))
    return {}


@official("POST")
async def update(request: web.Request, app: App, f: Fields) -> Reply:
    await request.app[GOODS].update(app, f.body)
    return {}


@official("GET")
async def approved(request: web.Request, app: App, f: Fields) -> Reply:
    page, total = await request.app[GOODS].listing(
        app, f.integer("offset"), f.integer("limit", required=False, default=30), f.integer("status")
    )
    return {"total": total, "goods": [approved_view(goods, request) for goods in page]}


@official("POST")
async def warehouse(request: web.Request, app: App, f: Fields) -> Reply:
    found = await request.app[GOODS].some(app, _ids(f.body.get("goods_ids"), "goods_ids"))
    return {"goods": [warehouse_view(goods, request) for goods in found], "total": len(found)}


@official("POST")
async def set_key(request: web.Request, app: App, f: Fields) -> Reply:
    await request.app[GOODS].set_key(app, f.body.get("goodsKey"))
    return {}


@official("GET")
async def get_key(request: web.Request, app: App, f: Fields) -> Reply:
    return {"vendorGoodsKey": await request.app[GOODS].get_key(app)}


# ---------------------------------------------------------------- goods in a room


@official("POST")
async def on_sale(request: web.Request, app: App, f: Fields) -> Reply:
    await request.app[GOODS].set_on_sale(app, f.room_id("roomId"), _goods_id(f), f.flag("onSale"))
    return {}


@official("POST")
async def delete_in_room(request: web.Request, app: App, f: Fields) -> Reply:
    await request.app[GOODS].remove_from_room(app, f.room_id("roomId"), _goods_id(f))
    return {}


@official("POST")
async def push(request: web.Request, app: App, f: Fields) -> Reply:
    await request.app[GOODS].push(app, f.room_id("roomId"), _goods_id(f))
    return {}


@official("POST")
async def sort(request: web.Request, app: App, f: Fields) -> Reply:
    listed = f.body.get("goods")
    if not isinstance(listed, list) or not listed or not all(isinstance(item, dict) for item in listed):
        raise ApiError(errors.INVALID_ARGS, 'goods must be a non-empty array of {"goodsId": ID}')
    order = [_goods_id(Fields(item)) for item in listed]
    await request.app[GOODS].sort(app, f.room_id("roomId"), order)
    return {}


@official("POST")
async def video(request: web.Request, app: App, f: Fields) -> Reply:
    return {"url": await request.app[GOODS].video(app, f.room_id("roomId"), _goods_id(f))}


# ---------------------------------------------------------------- REST: the app's review


def _app_of_path(request: web.Request, app: App) -> None:
    if request.match_info["appid"] != app.appid:
        raise ApiError(
            errors.INVALID_APPID, f"the access token is for app {app.appid}, not {request.match_info['appid']}"
        )


def rest_view(goods: LibraryGoods, request: web.Request) -> dict[str, Any]:
    """Library goods as the REST API shows them: prices in fen, the cover's media_id and URL."""
    data = goods.to_dict()
    data["cover_img_url"] = request.app[URLS].media_url(goods.cover_img)
    return data


@authenticated
async def list_goods(request: web.Request, app: App) -> web.Response:
    _app_of_path(request, app)
    status = query_int(request, "status", -1)
    found = [g for g in await request.app[GOODS].all(app) if status in (-1, g.audit_status)]
    return web.json_response({"goods": [rest_view(g, request) for g in found], "total": len(found)})


@authenticated
async def decide(request: web.Request, app: App) -> web.Response:
    _app_of_path(request, app)
    f = Fields(await json_body(request))
    approve = f.body.get("approve")
    if not isinstance(approve, bool):
        raise ApiError(errors.INVALID_ARGS, "approve must be true or false")
    reason = f.string("reason", required=False)[:500]
    goods = await request.app[GOODS].decide(app, int(request.match_info["goods_id"]), approve, reason)
    return web.json_response(rest_view(goods, request))


def routes() -> list[web.RouteDef]:
    """Every method reaches an official endpoint: a wrong one is answered as WeChat does (43001/43002)."""
    g = GOODS_API
    endpoints = {
        g + "add": add,
        g + "resetaudit": reset_audit,
        g + "audit": audit,
        g + "delete": delete,
        g + "update": update,
        g + "getapproved": approved,
        WAREHOUSE: warehouse,
        g + "setkey": set_key,
        g + "getkey": get_key,
        g + "onsale": on_sale,
        g + "deleteInRoom": delete_in_room,
        g + "push": push,
        g + "sort": sort,
        g + "getVideo": video,
    }
    app_goods = "/api/v1/apps/{appid}/goods"
    return [
        *(web.route("*", path, handler) for path, handler in endpoints.items()),
        web.get(app_goods, list_goods),
        web.post(app_goods + "/{goods_id:[0-9]+}/audit", decide),
    ]
