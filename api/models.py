"""Records of the control plane: apps, tokens, rooms, media, replays and room events.

Field names follow the official live plugin where there is one (snake_case as its list output
spells them). Records are plain dataclasses that stores persist as JSON, so adding a field with
a default never breaks stored data.

``Room`` is the one definition of a room's fields: a field's ``Wire`` (its metadata) says how it
travels through the APIs, and ``ROOM_FIELDS`` lists them for what is built from that: the
createRoom/editRoom reader, the REST names, the WeChat and REST views and the OpenAPI schemas.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import time
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Self

from api import errors


class LiveStatus(enum.IntEnum):
    LIVE = 101  # 直播中
    NOT_STARTED = 102  # 未开始
    ENDED = 103  # 已结束
    BANNED = 104  # 禁播
    PAUSED = 105  # 暂停
    INTERRUPTED = 106  # 异常: the publisher dropped; back to 101 if it returns within the grace
    EXPIRED = 107  # 已过期: end_time passed before the room ever went live


# Statuses in which a room counts as "live" for the concurrent-lives limit.
ACTIVE_STATUSES = frozenset((LiveStatus.LIVE, LiveStatus.PAUSED, LiveStatus.INTERRUPTED))
# Statuses that never change again.
FINAL_STATUSES = frozenset((LiveStatus.ENDED, LiveStatus.BANNED, LiveStatus.EXPIRED))

STREAM_NAME = re.compile(r"^(?P<appid>[A-Za-z0-9_]+)-(?P<roomid>[0-9]{1,12})$")


class _Record:
    """JSON round trip that ignores unknown keys (records written by a newer version)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(slots=True)
class App(_Record):
    """One mini-program: its credentials, signing keys and limits."""

    appid: str
    secret: str
    name: str
    push_key: str  # signs push URLs: txSecret = MD5(push_key + stream + txTime)
    play_key: str = ""  # signs play URLs when set; empty: playing is open
    webhook_url: str = ""  # receives signed POSTs on status changes and replay-ready
    replay_retention_days: int = 30
    # The renditions of its rooms' streams ([transcode] renditions entries); None: the server's.
    renditions: list[Any] | None = None
    created_at: float = field(default_factory=time.time)
    # Who reviews the goods it adds (GOODS_AUDIT_MODES): approved at once, its moderation through the
    # REST API, or that after a webhook.
    goods_audit: str = "auto"
    # The room channel (issue 14): may clients join without a viewer token (receive only)? On by
    # default: the status feed has always been open to anyone who knows the room.
    channel_anonymous: bool = True
    comment_words: list[str] = field(default_factory=list)  # comments containing one are refused
    comment_webhook: str = ""  # moderation: POSTed each comment, answers {"allow": bool}


GOODS_AUDIT_MODES = ("auto", "manual", "webhook")


@dataclass(slots=True)
class Token(_Record):
    token: str
    appid: str
    expires_at: float


@dataclass(slots=True)
class Goods(_Record):
    goods_id: int
    name: str = ""
    cover_img: str = ""
    url: str = ""
    price: int = 0  # fen, as getliveinfo returns it
    price2: int = 0
    price_type: int = 1
    third_party_appid: str = ""
    on_sale: int = 1  # ours (goods/onsale), not one of getliveinfo's fields


@dataclass(slots=True)
class Assistant(_Record):
    username: str
    nickname: str = ""
    timestamp: int = 0
    headimg: str = ""
    alias: str = ""
    openid: str = ""


@dataclass(slots=True, frozen=True)
class Wire:
    """How one room field travels through the APIs (the field's metadata)."""

    wechat: str = ""  # its name in createRoom/editRoom bodies; "" if it is no input
    rest: str = ""  # its REST name (input and output), where that is not the field's own
    required: bool = False  # createRoom and editRoom require it
    rest_default: bool = False  # createRoom requires it, REST create falls back to the room's default
    editable: bool = False  # editRoom (and REST PATCH) may change it
    listed: bool = False  # one of the 18 fields of getliveinfo's room_info
    media: bool = False  # a media_id of the app's uploads: getliveinfo and REST show its URL
    width: tuple[int, int] | None = None  # the display width allowed (a CJK character counts 2)
    errcode: int = 0  # for a media_id that cannot be used, or a width outside the range
    flag: bool = False  # 0 or 1
    items: tuple[str, ...] = ("object",)  # a list's item types
    doc: str = ""


def _wire(**facts: Any) -> dict[str, Wire]:
    """A room field's metadata (a field without any is an output of the REST API only)."""
    return {"wire": Wire(**facts)}


STATUS_CODES = "101 live, 102 not started, 103 ended, 104 banned, 105 paused, 106 interrupted, 107 expired"
# Most createRoom fields: required by createRoom and editRoom, listed by getliveinfo.
_OFFICIAL: dict[str, Any] = {"required": True, "editable": True, "listed": True}
_SWITCH: dict[str, Any] = {"editable": True, "flag": True}


@dataclass(slots=True)
class Room(_Record):
    roomid: int = field(metadata=_wire(listed=True))
    appid: str
    name: str = field(metadata=_wire(wechat="name", width=(6, 34), errcode=errors.NAME_LENGTH, **_OFFICIAL))
    # media_ids as given at create/edit; the APIs show their URLs
    cover_img: str = field(
        metadata=_wire(
            wechat="coverImg",
            media=True,
            errcode=errors.COVER_INVALID,
            doc="media_id from /cgi-bin/media/upload",
            **_OFFICIAL,
        )
    )
    share_img: str = field(
        metadata=_wire(wechat="shareImg", media=True, errcode=errors.SHARE_IMG_INVALID, doc="media_id", **_OFFICIAL)
    )
    feeds_img: str = field(
        metadata=_wire(wechat="feedsImg", media=True, errcode=errors.FEEDS_IMG_INVALID, doc="media_id", **_OFFICIAL)
    )
    start_time: int = field(
        metadata=_wire(wechat="startTime", doc="Unix seconds, 10 minutes to 6 months ahead", **_OFFICIAL)
    )
    end_time: int = field(
        metadata=_wire(wechat="endTime", doc="Unix seconds, 30 minutes to 12 hours after start_time", **_OFFICIAL)
    )
    anchor_name: str = field(
        metadata=_wire(wechat="anchorName", width=(4, 30), errcode=errors.ANCHOR_NAME_LENGTH, **_OFFICIAL)
    )
    anchor_wechat: str = field(metadata=_wire(wechat="anchorWechat", required=True, editable=True))
    live_type: int = field(
        default=0,
        metadata=_wire(
            wechat="type", rest="type", required=True, listed=True, flag=True, doc="1: pushed (OBS, ffmpeg), 0: phone"
        ),
    )
    sub_anchor_wechat: str = field(default="", metadata=_wire(wechat="subAnchorWechat"))
    creater_wechat: str = field(default="", metadata=_wire(wechat="createrWechat"))
    creater_openid: str = field(default="", metadata=_wire(listed=True))
    is_feeds_public: int = field(default=1, metadata=_wire(wechat="isFeedsPublic", listed=True, **_SWITCH))
    # Required by createRoom; REST creates rooms with them open.
    close_like: int = field(default=0, metadata=_wire(wechat="closeLike", rest_default=True, **_OFFICIAL, flag=True))
    close_goods: int = field(default=0, metadata=_wire(wechat="closeGoods", rest_default=True, **_OFFICIAL, flag=True))
    close_comment: int = field(
        default=0, metadata=_wire(wechat="closeComment", rest_default=True, **_OFFICIAL, flag=True)
    )
    close_replay: int = field(default=1, metadata=_wire(wechat="closeReplay", listed=True, **_SWITCH))
    close_share: int = field(default=0, metadata=_wire(wechat="closeShare", **_SWITCH))
    close_kf: int = field(default=1, metadata=_wire(wechat="closeKf", listed=True, **_SWITCH))
    ban_comment: int = field(default=0, metadata=_wire(flag=True, doc="updatecomment's switch (禁言)"))
    live_status: int = field(default=LiveStatus.NOT_STARTED, metadata=_wire(listed=True, doc=STATUS_CODES))
    goods: list[dict[str, Any]] = field(default_factory=list, metadata=_wire(listed=True))
    assistants: list[dict[str, Any]] = field(default_factory=list)
    renditions: list[Any] | None = field(
        default=None,
        metadata=_wire(
            items=("string", "object"),
            doc='the stream\'s renditions, as [transcode] renditions entries ("480p" or a table); '
            "null: the app's, else the server's; []: none. REST PATCH sets it",
        ),
    )
    # life cycle
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    live_started_at: float = field(default=0.0, metadata=_wire(doc="first publish ever (0: never)"))
    session_started_at: float = field(
        default=0.0, metadata=_wire(doc="start of the current live session (a 106 -> 101 return keeps it)")
    )
    interrupted_at: float = field(default=0.0, metadata=_wire(doc="when it entered 106"))
    ended_at: float = 0.0
    live_sessions: int = 0
    status_reason: str = field(default="", metadata=_wire(doc="why the status last changed"))

    @property
    def stream_name(self) -> str:
        """The stream name of the official push address: ``{appid}-{roomId}``."""
        return f"{self.appid}-{self.roomid}"


@dataclass(slots=True, frozen=True)
class RoomField:
    name: str
    kind: type  # int, str, float or list
    default: Any  # dataclasses.MISSING for the fields every room is created with
    wire: Wire
    nullable: bool = False

    @property
    def rest_name(self) -> str:
        return self.wire.rest or self.name


def _room_fields() -> tuple[RoomField, ...]:
    hints = typing.get_type_hints(Room)

    def field_of(f: dataclasses.Field[Any]) -> RoomField:
        hint = hints[f.name]
        options = typing.get_args(hint) if typing.get_origin(hint) is types.UnionType else ()
        nullable = type(None) in options
        if nullable:
            hint = next(option for option in options if option is not type(None))
        return RoomField(f.name, typing.get_origin(hint) or hint, f.default, f.metadata.get("wire", Wire()), nullable)

    return tuple(field_of(f) for f in dataclasses.fields(Room))


ROOM_FIELDS = _room_fields()
# What createRoom reads, and of that what editRoom may change; the fields holding media_ids; what
# getliveinfo lists.
ROOM_INPUTS = tuple(f for f in ROOM_FIELDS if f.wire.wechat)
ROOM_EDITABLE = tuple(f for f in ROOM_INPUTS if f.wire.editable)
ROOM_MEDIA = tuple(f for f in ROOM_FIELDS if f.wire.media)
ROOM_LISTED = tuple(f for f in ROOM_FIELDS if f.wire.listed)


def parse_stream(name: str) -> tuple[str, int] | None:
    """The appid and room id a stream name stands for (``Room.stream_name`` read back), if any."""
    match = STREAM_NAME.match(name)
    if match is None:
        return None
    return match["appid"], int(match["roomid"])


@dataclass(slots=True)
class Media(_Record):
    """A temporary image uploaded with /cgi-bin/media/upload; valid for three days."""

    media_id: str
    appid: str
    type: str
    content_type: str
    size: int
    width: int
    height: int
    path: str  # relative to the data dir
    created_at: float
    expires_at: float  # the media_id may be used in create/edit until then
    pinned: bool = False  # used by a room: the file is kept and served as long as the room exists


@dataclass(slots=True)
class Replay(_Record):
    """One recorded live session of a room (see recorder/)."""

    replay_id: str
    roomid: int
    appid: str
    session: int
    status: str  # "recording", "ready", "failed"
    created_at: float
    expire_at: float
    path: str = ""  # folder relative to the replays folder (DATA_DIR/replays), served under /replays/
    duration: float = 0.0
    size: int = 0
    renditions: list[str] = field(default_factory=list)  # recorded beside the source: master.m3u8
    node: str = ""  # in a cluster, the node recording it: another finalizes it only once that node is dead


@dataclass(slots=True, frozen=True)
class RoomEvent:
    """A room's status changed (or a replay became ready); goes to webhooks, SSE/WS and other nodes."""

    type: str  # "status" or "replay_ready"
    appid: str
    roomid: int
    live_status: int
    previous_status: int = 0
    reason: str = ""
    time: float = field(default_factory=time.time)
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoomEvent:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
