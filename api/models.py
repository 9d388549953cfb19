"""Records of the control plane: apps, tokens, rooms, media, replays and room events.

Field names follow the official live plugin where there is one (snake_case as its list output
spells them). Records are plain dataclasses that stores persist as JSON, so adding a field with
a default never breaks stored data.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import time
from dataclasses import dataclass, field
from typing import Any, Self


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
    created_at: float = field(default_factory=time.time)


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


@dataclass(slots=True)
class Assistant(_Record):
    username: str
    nickname: str = ""
    timestamp: int = 0
    headimg: str = ""
    alias: str = ""
    openid: str = ""


@dataclass(slots=True)
class Room(_Record):
    roomid: int
    appid: str
    name: str
    cover_img: str  # media_id as given at create/edit; the list shows its URL
    share_img: str
    feeds_img: str
    start_time: int
    end_time: int
    anchor_name: str
    anchor_wechat: str
    live_type: int = 0  # create's `type`: 1 push (OBS, ffmpeg), 0 phone
    sub_anchor_wechat: str = ""
    creater_wechat: str = ""
    creater_openid: str = ""
    is_feeds_public: int = 1
    close_like: int = 0
    close_goods: int = 0
    close_comment: int = 0
    close_replay: int = 1
    close_share: int = 0
    close_kf: int = 1
    ban_comment: int = 0  # updatecomment's 禁言 switch
    live_status: int = LiveStatus.NOT_STARTED
    goods: list[dict[str, Any]] = field(default_factory=list)
    assistants: list[dict[str, Any]] = field(default_factory=list)
    # life cycle
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    live_started_at: float = 0.0  # first publish ever
    session_started_at: float = 0.0  # start of the current live session (a 106 -> 101 return keeps it)
    interrupted_at: float = 0.0  # when it entered 106
    ended_at: float = 0.0
    live_sessions: int = 0
    status_reason: str = ""

    @property
    def stream_name(self) -> str:
        """The stream name of the official push address: ``{appid}-{roomId}``."""
        return f"{self.appid}-{self.roomid}"


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
