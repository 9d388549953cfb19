"""Goods: an app's goods library (add, review, update, delete, list) and the goods of a room (import,
on/off sale, push, sort, delete).

The library is a document collection per app (``goods:{appid}``, by goods id). Prices come in as
yuan with at most two decimals and are kept in fen, as getliveinfo shows them. The review is ours,
chosen per app (``App.goods_audit``): ``auto`` approves at once, ``manual`` waits for the app's
moderation through the REST API, ``webhook`` also tells the app's webhook (a ``goods_audit`` event).
A room holds copies of its goods (``Room.goods``, changed through ``Rooms.edit_goods`` so that a goods
change never undoes a status change); what happens to them reaches the room channel on the bus.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from api import errors, validation
from api.apps import count_daily
from api.bus import RoomBus
from api.errors import ApiError
from api.models import FINAL_STATUSES, App, Goods, LiveStatus, Room, RoomEvent, _Record
from api.replays import ClipRefused, ReplayService
from api.rooms import Rooms, RoomSettings
from api.store.base import RoomStore
from api.urls import Urls
from api.views import goods_view
from api.webhooks import Webhooks
from recorder.recorder import RecorderSettings

log = logging.getLogger("minilive.goods")

NOT_AUDITED, IN_REVIEW, APPROVED, REJECTED = 0, 1, 2, 3
AUDIT_STATUSES = (NOT_AUDITED, IN_REVIEW, APPROVED, REJECTED)
FIXED, RANGE, DISCOUNT = 1, 2, 3  # priceType
NAME_WIDTH = (6, 28)  # 3-14 汉字, a CJK character counts 2
MAX_COVER_SIDE = 300
MAX_PRICE_FEN = 100_000_000 * 100  # a hundred million yuan: anything above is a typo
# A mini-program page path, optionally with a query: "pages/goods/detail?id=7".
PAGE_PATH = re.compile(r"^/?[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*(\?\S*)?$")
MAX_URL = 1024
APPID = re.compile(r"^wx[0-9A-Za-z]{16}$")
# Fields that goods/update may change on approved goods (the official rule: price type and prices).
PRICE_FIELDS = frozenset(("priceType", "price", "price2"))
INFO_FIELDS = frozenset(("coverImgUrl", "name", "url", "thirdPartyAppid", *PRICE_FIELDS))
THIRD_PARTY_TAG_API = 2  # getapproved's thirdPartyTag: 1 or 2 for goods added through the API


@dataclass(slots=True)
class LibraryGoods(_Record):
    """One goods item of an app's library."""

    goods_id: int
    appid: str
    name: str
    cover_img: str  # media_id; the APIs show its URL
    url: str
    price_type: int
    price: int  # fen
    price2: int = 0
    third_party_appid: str = ""
    audit_id: int = 0
    audit_status: int = NOT_AUDITED
    audit_reason: str = ""  # why the app's moderation rejected it
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    def in_room(self) -> Goods:
        """The copy a room keeps (getliveinfo's ``goods[]``)."""
        return Goods(
            goods_id=self.goods_id,
            name=self.name,
            cover_img=self.cover_img,
            url=self.url,
            price=self.price,
            price2=self.price2,
            price_type=self.price_type,
            third_party_appid=self.third_party_appid,
        )


def collection(appid: str) -> str:
    return f"goods:{appid}"


def push_log(roomid: int) -> str:
    """The room's pushes: one entry per push, scored by its wall-clock time (the explainer clips)."""
    return f"goods_pushes:{roomid}"


def yuan(fen: int) -> int | float:
    """Fen as the official lists show yuan: 1990 -> 19.9, 1200 -> 12."""
    return fen // 100 if fen % 100 == 0 else fen / 100


def to_fen(name: str, value: Any) -> int:
    """A price in yuan with at most two decimals, as fen (300003 otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ApiError(errors.PRICE_INVALID, f"{name} must be a number of yuan, e.g. 19.9")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ApiError(errors.PRICE_INVALID, f"{name} {value!r} is not a number of yuan") from None
    if not amount.is_finite() or amount <= 0:
        raise ApiError(errors.PRICE_INVALID, f"{name} must be more than 0 yuan")
    fen = amount * 100
    if fen != fen.to_integral_value():
        raise ApiError(errors.PRICE_INVALID, f"{name} {value} has more than two decimals")
    if fen > MAX_PRICE_FEN:
        raise ApiError(errors.PRICE_INVALID, f"{name} {value} is more than {MAX_PRICE_FEN // 100} yuan")
    return int(fen)


def read_prices(f: validation.Fields, current: LibraryGoods | None = None) -> tuple[int, int, int]:
    """priceType, price and price2 (fen) of a goodsInfo; in an update, absent ones keep ``current``'s."""
    price_type = f.integer("priceType", current is None, current.price_type if current else FIXED)
    if price_type not in (FIXED, RANGE, DISCOUNT):
        raise ApiError(errors.PRICE_INVALID, "priceType must be 1 (fixed), 2 (range) or 3 (discount)")
    if f.has("price"):
        price = to_fen("price", f.body["price"])
    elif current is not None:
        price = current.price
    else:
        raise ApiError(errors.INVALID_ARGS, "price is required")
    if price_type == FIXED:
        return price_type, price, 0
    if f.has("price2"):
        price2 = to_fen("price2", f.body["price2"])
    elif current is not None and current.price_type == price_type:
        price2 = current.price2
    else:
        raise ApiError(errors.INVALID_ARGS, "price2 is required with priceType 2 and 3")
    if price_type == RANGE and not price < price2:
        raise ApiError(errors.PRICE_INVALID, "a price range (priceType 2) needs price < price2")
    if price_type == DISCOUNT and not price2 < price:
        raise ApiError(errors.PRICE_INVALID, "a discount (priceType 3) needs price2 (now) < price (before)")
    return price_type, price, price2


def read_name(f: validation.Fields) -> str:
    name = f.string("name")
    validation.check_width("name", name, NAME_WIDTH, errors.NAME_LENGTH)
    return name


def read_url(f: validation.Fields) -> str:
    url = f.string("url")
    if len(url) > MAX_URL or not PAGE_PATH.match(url):
        raise ApiError(
            errors.GOODS_URL_INVALID,
            f"url {url[:100]!r} is not a mini-program page path such as pages/goods/detail?id=7",
        )
    return url


def read_third_party(f: validation.Fields) -> str:
    appid = f.string("thirdPartyAppid", required=False)
    if appid and not APPID.match(appid):
        raise ApiError(errors.INVALID_ARGS, f"thirdPartyAppid {appid[:40]!r} is not a mini-program appid")
    return appid


def goods_info(body: dict[str, Any]) -> validation.Fields:
    info = body.get("goodsInfo")
    if not isinstance(info, dict):
        raise ApiError(errors.INVALID_ARGS, "goodsInfo must be an object")
    return validation.Fields(info)


class GoodsLibrary:
    def __init__(
        self,
        store: RoomStore,
        rooms: Rooms,
        bus: RoomBus,
        webhooks: Webhooks,
        urls: Urls,
        replays: ReplayService,
        settings: RoomSettings,
        recording: RecorderSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.rooms = rooms
        self.bus = bus
        self.webhooks = webhooks
        self.urls = urls
        self.replays = replays  # cuts the explainer clips
        self.settings = settings
        self.recording = recording
        self.clock = clock

    # ------------------------------------------------------------ the library

    async def forget_room(self, roomid: int) -> None:
        """A deleted room's goods pushes (the explainer clips' times) go with it."""
        await self.store.drop_log(push_log(roomid))

    async def add(self, app: App, body: dict[str, Any]) -> LibraryGoods:
        """goods/add: a new goods item, submitted for review at once (300012 past the daily reviews)."""
        f = goods_info(body)
        name, url = read_name(f), read_url(f)
        price_type, price, price2 = read_prices(f)
        third_party = read_third_party(f)
        cover = await self._cover(app, f.string("coverImgUrl"))
        await self._count_review(app)
        goods_id = await self.store.next_id("goods")
        goods = LibraryGoods(goods_id, app.appid, name, cover, url, price_type, price, price2, third_party)
        await self._submit(app, goods)
        log.info("goods %d added for app %s: %r", goods_id, app.appid, name)
        return goods

    async def get(self, app: App, goods_id: int, missing: int = errors.GOODS_NOT_FOUND) -> LibraryGoods:
        data = await self.store.get_doc(collection(app.appid), str(goods_id))
        if data is None:
            raise ApiError(missing, f"goods {goods_id} is not in this app's library")
        return LibraryGoods.from_dict(data)

    async def reset_audit(self, app: App, goods_id: int, audit_id: int) -> None:
        """goods/resetaudit: withdraw a review in progress; the goods become not audited (0)."""
        goods = await self.get(app, goods_id)
        if goods.audit_status != IN_REVIEW or goods.audit_id != audit_id:
            raise ApiError(
                errors.AUDIT_STATE,
                f"goods {goods_id} has no review {audit_id} in progress (audit status {goods.audit_status})",
            )
        goods.audit_status = NOT_AUDITED
        await self._put(goods)

    async def resubmit(self, app: App, goods_id: int) -> int:
        """goods/audit: submit goods not audited or rejected for review again; the new audit id."""
        goods = await self.get(app, goods_id)
        if goods.audit_status not in (NOT_AUDITED, REJECTED):
            raise ApiError(
                errors.AUDIT_STATE,
                f"goods {goods_id} is {'in review' if goods.audit_status == IN_REVIEW else 'approved'} already",
            )
        await self._count_review(app)
        await self._submit(app, goods)
        return goods.audit_id

    async def decide(self, app: App, goods_id: int, approve: bool, reason: str) -> LibraryGoods:
        """The app's moderation approves or rejects goods in review (the REST audit route)."""
        goods = await self.get(app, goods_id)
        if goods.audit_status != IN_REVIEW:
            raise ApiError(errors.AUDIT_STATE, f"goods {goods_id} is not in review (audit status {goods.audit_status})")
        goods.audit_status = APPROVED if approve else REJECTED
        goods.audit_reason = "" if approve else reason
        await self._put(goods)
        return goods

    async def update(self, app: App, body: dict[str, Any]) -> LibraryGoods:
        """goods/update: the fields given. Goods in review may not change; approved goods may change
        their prices only, and the rooms that hold them show the new prices."""
        f = goods_info(body)
        goods = await self.get(app, f.integer("goodsId"))
        given = {key for key in f.body if key in INFO_FIELDS and f.has(key)}
        if goods.audit_status == IN_REVIEW:
            raise ApiError(errors.AUDIT_STATE, f"goods {goods.goods_id} is in review: withdraw it (resetaudit) first")
        if goods.audit_status == APPROVED and given - PRICE_FIELDS:
            raise ApiError(
                errors.AUDIT_STATE,
                f"goods {goods.goods_id} is approved: only priceType, price and price2 may change, "
                f"not {', '.join(sorted(given - PRICE_FIELDS))}",
            )
        if "name" in given:
            goods.name = read_name(f)
        if "url" in given:
            goods.url = read_url(f)
        if "thirdPartyAppid" in given:
            goods.third_party_appid = read_third_party(f)
        if "coverImgUrl" in given:
            goods.cover_img = await self._cover(app, f.string("coverImgUrl"))
        if given & PRICE_FIELDS:
            goods.price_type, goods.price, goods.price2 = read_prices(f, goods)
        await self._put(goods)
        copy = goods.in_room().to_dict()
        del copy["on_sale"]  # the room's own
        await self._in_rooms(app, goods.goods_id, "update", lambda entry: entry.update(copy))
        return goods

    async def delete(self, app: App, goods_id: int) -> None:
        """goods/delete: gone from the library and from the rooms that hold it (ended rooms keep theirs)."""
        goods = await self.get(app, goods_id, errors.GOODS_CANNOT_DELETE)
        if goods.audit_status == IN_REVIEW:
            raise ApiError(errors.GOODS_IN_REVIEW, f"goods {goods_id} is in review: withdraw it (resetaudit) first")
        await self.store.delete_doc(collection(app.appid), str(goods_id))
        await self._in_rooms(app, goods_id, "delete", None)

    async def listing(self, app: App, offset: int, limit: int, status: int) -> tuple[list[LibraryGoods], int]:
        """goods/getapproved: one page of the goods in an audit status, by goods id, and their number."""
        if status not in AUDIT_STATUSES:
            raise ApiError(
                errors.INVALID_ARGS, "status must be 0 (not audited), 1 (in review), 2 (approved), 3 (rejected)"
            )
        if offset < 0 or not 1 <= limit <= 100:
            raise ApiError(errors.INVALID_ARGS, "offset must be >= 0 and limit 1-100")
        found = [g for g in await self.all(app) if g.audit_status == status]
        return found[offset : offset + limit], len(found)

    async def all(self, app: App) -> list[LibraryGoods]:
        """The app's whole library, by goods id."""
        docs = await self.store.list_docs(collection(app.appid))
        return sorted((LibraryGoods.from_dict(d) for d in docs.values()), key=lambda g: g.goods_id)

    async def some(self, app: App, goods_ids: list[int]) -> list[LibraryGoods]:
        """getgoodswarehouse: the goods of these ids that exist, in the order asked (at most 20)."""
        if len(goods_ids) > 20:
            raise ApiError(errors.INVALID_ARGS, "goods_ids may name at most 20 goods")
        found = []
        for goods_id in dict.fromkeys(goods_ids):
            data = await self.store.get_doc(collection(app.appid), str(goods_id))
            if data is not None:
                found.append(LibraryGoods.from_dict(data))
        return found

    async def set_key(self, app: App, keys: Any) -> None:
        """goods/setkey: the app's global goods key (the page query names the live pendant matches)."""
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
            raise ApiError(errors.INVALID_ARGS, 'goodsKey must be Array<string>, e.g. ["productId"]')
        if len(keys) > 20 or any(len(k) > 64 for k in keys):
            raise ApiError(errors.INVALID_ARGS, "goodsKey holds at most 20 keys of at most 64 characters")
        await self.store.put_doc("goods_keys", app.appid, {"keys": keys})

    async def get_key(self, app: App) -> list[str]:
        data = await self.store.get_doc("goods_keys", app.appid)
        return list(data["keys"]) if data else []

    async def _cover(self, app: App, media_id: str) -> str:
        """A goods image: a media_id of the app's uploads, at most 300x300; kept for good once used."""
        media = await self.store.get_media(media_id) if media_id else None
        if media is None or media.appid != app.appid:
            raise ApiError(
                errors.GOODS_IMAGE_FAILED,
                f"coverImgUrl {media_id[:80]!r} is not a media_id of this app: upload with /cgi-bin/media/upload",
            )
        if not media.pinned and media.expires_at <= self.clock():
            raise ApiError(errors.GOODS_IMAGE_FAILED, f"media_id {media_id} expired (valid 3 days): upload it again")
        if media.width > MAX_COVER_SIDE or media.height > MAX_COVER_SIDE:
            raise ApiError(
                errors.GOODS_IMAGE_SIZE,
                f"the goods image is {media.width}x{media.height}; at most {MAX_COVER_SIDE}x{MAX_COVER_SIDE}",
            )
        if not media.pinned:
            media.pinned = True
            await self.store.put_media(media)
        return media_id

    async def _count_review(self, app: App) -> None:
        limit = self.settings.goods_reviews_per_day
        if not await count_daily(self.store, f"goods_reviews:{app.appid}", limit, self.clock(), self.settings.zone):
            raise ApiError(errors.NO_AUDIT_QUOTA, f"goods may be submitted for review {limit} times a day")

    async def _submit(self, app: App, goods: LibraryGoods) -> None:
        """A new review under the app's audit mode."""
        goods.audit_id = await self.store.next_id("goods_audit")
        goods.audit_status = APPROVED if app.goods_audit == "auto" else IN_REVIEW
        goods.audit_reason = ""
        await self._put(goods)
        if app.goods_audit == "webhook":
            data = {
                "goods_id": goods.goods_id,
                "audit_id": goods.audit_id,
                "goods": goods.to_dict(),
                "decide": f"POST /api/v1/apps/{app.appid}/goods/{goods.goods_id}/audit",
            }
            event = RoomEvent("goods_audit", app.appid, 0, 0, reason="goods submitted for review", data=data)
            await self.webhooks.send(event)

    async def _put(self, goods: LibraryGoods) -> None:
        goods.updated_at = self.clock()
        await self.store.put_doc(collection(goods.appid), str(goods.goods_id), goods.to_dict())

    async def _in_rooms(
        self, app: App, goods_id: int, action: str, change: Callable[[dict[str, Any]], None] | None
    ) -> None:
        """Apply a library change to the copies in the app's rooms that are not over: ``change`` edits a
        copy, None removes it. Each room hears it on the bus."""
        rooms, _ = await self.store.list_rooms(app.appid, 0, 1_000_000)
        for room in rooms:
            if room.live_status in FINAL_STATUSES or not any(g["goods_id"] == goods_id for g in room.goods):
                continue

            def edit(fresh: Room) -> dict[str, Any] | None:
                if change is None:
                    fresh.goods = [g for g in fresh.goods if g["goods_id"] != goods_id]
                    return None
                entry = _entry(fresh, goods_id)
                change(entry)
                return entry

            try:
                entry = await self.rooms.edit_goods(app, room.roomid, edit)
            except ApiError as exc:  # the room ended, went away or dropped it meanwhile: it keeps what it has
                log.info("goods %d not changed in room %d: %s", goods_id, room.roomid, exc.errmsg)
                continue
            await self._announce(room.roomid, action, **({"goods": entry} if entry else {"goods_id": goods_id}))

    # ------------------------------------------------------------ goods in a room

    async def add_to_room(self, app: App, roomid: int, goods_ids: list[int]) -> None:
        """room/addgoods: approved goods of the library into the room, after those it has (the ones it
        has already are left as they are)."""
        await self.rooms.unended(app, roomid)  # the room's refusals (300022, 300023) before the goods'
        copies = []
        for goods_id in dict.fromkeys(goods_ids):
            goods = await self.get(app, goods_id)
            if goods.audit_status != APPROVED:
                raise ApiError(
                    errors.GOODS_NOT_APPROVED, f"goods {goods_id} is not approved (audit status {goods.audit_status})"
                )
            copies.append(goods.in_room().to_dict())
        limit = self.settings.max_room_goods

        def edit(room: Room) -> list[dict[str, Any]]:
            held = {g["goods_id"] for g in room.goods}
            new = [c for c in copies if c["goods_id"] not in held]
            if len(room.goods) + len(new) > limit:
                raise ApiError(errors.ROOM_GOODS_LIMIT, f"a room holds at most {limit} goods; it has {len(room.goods)}")
            room.goods.extend(new)
            return new

        added = await self.rooms.edit_goods(app, roomid, edit)
        if added:
            await self._announce(roomid, "add", goods_list=added)

    async def set_on_sale(self, app: App, roomid: int, goods_id: int, on_sale: int) -> None:
        """goods/onsale: put goods of the room on sale (1) or take them off (0); not while being pushed."""
        if await self._pushing(roomid, goods_id):
            raise ApiError(
                errors.GOODS_BEING_PUSHED, f"goods {goods_id} is being pushed: change its sale after the push"
            )

        def edit(room: Room) -> dict[str, Any]:
            entry = _entry(room, goods_id)
            entry["on_sale"] = on_sale
            return entry

        entry = await self.rooms.edit_goods(app, roomid, edit)
        await self._announce(roomid, "onsale", goods=entry, on_sale=on_sale)

    async def remove_from_room(self, app: App, roomid: int, goods_id: int) -> None:
        """goods/deleteInRoom."""

        def edit(room: Room) -> None:
            _entry(room, goods_id)
            room.goods = [g for g in room.goods if g["goods_id"] != goods_id]

        await self.rooms.edit_goods(app, roomid, edit)
        await self._announce(roomid, "delete", goods_id=goods_id)

    async def sort(self, app: App, roomid: int, goods_ids: list[int]) -> None:
        """goods/sort: the goods named come first, in that order; the others follow as they were."""
        if len(set(goods_ids)) != len(goods_ids):
            raise ApiError(errors.INVALID_ARGS, "goods names a goodsId twice")

        named = set(goods_ids)

        def edit(room: Room) -> list[int]:
            first = [_entry(room, goods_id) for goods_id in goods_ids]
            room.goods = first + [g for g in room.goods if g["goods_id"] not in named]
            return [g["goods_id"] for g in room.goods]

        order = await self.rooms.edit_goods(app, roomid, edit)
        await self._announce(roomid, "sort", goods_ids=order)

    async def push(self, app: App, roomid: int, goods_id: int) -> None:
        """goods/push: pin goods of the live room for its viewers (one push at a time per room); the
        push's wall-clock time is kept for the goods' explainer clip."""
        room = await self.rooms.room(app, roomid)
        if room.live_status != LiveStatus.LIVE:
            raise ApiError(
                errors.ROOM_STATUS_FORBIDS, f"room {roomid} is not live ({room.live_status}): push while live"
            )
        entry = _entry(room, goods_id)
        if not entry.get("on_sale", 1):
            raise ApiError(errors.GOODS_OFF_SALE, f"goods {goods_id} is off sale: put it on sale (onsale) first")
        now = self.clock()
        busy = await self._last_push(roomid, now)
        if busy is not None:
            raise ApiError(
                errors.PUSH_IN_PROGRESS,
                f"goods {busy['goods_id']} is being pushed: push again after {self.settings.goods_push_seconds:g} s",
            )
        await self.store.append_log(push_log(roomid), now, {"goods_id": goods_id, "time": now})
        await self._announce(roomid, "push", goods=entry)

    async def video(self, app: App, roomid: int, goods_id: int) -> str:
        """goods/getVideo: the URL of the goods' explainer clip, cut from the room's recording between its
        last push and the next push (or the end of the live). 300044 if it was never pushed; 300045
        while it is still being explained or recorded, or when nothing recorded it."""
        room = await self.rooms.room(app, roomid)
        pushes = await self.pushes(roomid)
        mine = [i for i, push in enumerate(pushes) if push["goods_id"] == goods_id]
        if not mine:
            raise ApiError(errors.NO_EXPLAINER_VIDEO, f"goods {goods_id} was never pushed in room {roomid}")
        start = pushes[mine[-1]]["time"]
        later = pushes[mine[-1] + 1 :]
        end: float | None = later[0]["time"] if later else None
        if room.live_status not in FINAL_STATUSES:
            if end is None:
                raise ApiError(
                    errors.VIDEO_NOT_READY,
                    f"goods {goods_id} is still being explained: it ends at the next push or the end",
                )
            # The segment holding the end is on disk once it closes: about two segments later at most.
            wait = end + 2 * self.recording.segment_seconds - self.clock()
            if wait > 0:
                raise ApiError(errors.VIDEO_NOT_READY, f"the explainer is being recorded: ask again in {wait:.0f} s")
        limit = self.recording.clip_max_seconds
        if end is not None and end - start > limit:
            end = start + limit  # the first clip_max_seconds of a long explanation
        try:
            clip = await self.replays.clip(roomid, start, end, name=f"goods-{goods_id}-{start:.0f}")
        except ClipRefused as exc:
            raise ApiError(errors.VIDEO_NOT_READY, str(exc)) from None
        if clip is None:
            why = (
                "its replay is closed (closeReplay 1), so nothing is recorded"
                if room.close_replay
                else "no recording covers it yet"
            )
            raise ApiError(errors.VIDEO_NOT_READY, f"no explainer video of goods {goods_id}: {why}")
        return self.replays.clip_url(clip)

    async def pushes(self, roomid: int) -> list[dict[str, Any]]:
        """Every push of the room, oldest first: ``goods_id``, ``time`` (wall clock)."""
        return await self.store.read_log(push_log(roomid), limit=100_000)

    async def _last_push(self, roomid: int, now: float) -> dict[str, Any] | None:
        """The push still showing (within ``goods_push_seconds``), if any."""
        recent = await self.store.read_log(push_log(roomid), now - self.settings.goods_push_seconds, now)
        return recent[-1] if recent else None

    async def _pushing(self, roomid: int, goods_id: int) -> bool:
        last = await self._last_push(roomid, self.clock())
        return last is not None and last["goods_id"] == goods_id

    async def _announce(self, roomid: int, action: str, **fields: Any) -> None:
        """Tell the room's members, on every node: ``{"type": "goods", "action": ..., "time": ...}``; goods
        as getliveinfo shows them (prices in fen, the cover's URL)."""
        message: dict[str, Any] = {"type": "goods", "action": action}
        for key, value in fields.items():
            if key == "goods":
                value = goods_view(value, self.urls)
            elif key == "goods_list":
                key, value = "goods", [goods_view(g, self.urls) for g in value]
            message[key] = value
        message["time"] = self.clock()
        await self.bus.publish(roomid, message)


def _entry(room: Room, goods_id: int) -> dict[str, Any]:
    for entry in room.goods:
        if entry["goods_id"] == goods_id:
            return entry
    raise ApiError(errors.GOODS_NOT_IN_ROOM, f"room {room.roomid} has no goods {goods_id}: import it (addgoods) first")
