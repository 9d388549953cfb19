"""The official live API's error codes, raised by the services and shaped by each surface."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay.http.cors import CORS

SYSTEM_ERROR = -1
INVALID_CREDENTIAL = 40001  # unknown, forged or replaced access_token (an expired one: 42001)
INVALID_MEDIA_TYPE = 40004
INVALID_FILE_TYPE = 40005
INVALID_FILE_SIZE = 40006
INVALID_MEDIA_ID = 40007
INVALID_IMAGE_SIZE = 40009
INVALID_APPID = 40013
INVALID_GRANT_TYPE = 40002
INVALID_SECRET = 40125
ACCESS_TOKEN_MISSING = 41001
APPID_MISSING = 41002
SECRET_MISSING = 41004
MEDIA_DATA_MISSING = 41005
REQUIRE_GET = 43001
REQUIRE_POST = 43002
QUOTA_EXCEEDED = 45009
DATA_FORMAT_ERROR = 47001
INVALID_PARAMS_SHARE = 1001
INVALID_ARGS = 200002
NAME_LENGTH = 300002
ROOM_NOT_FOUND = 300022
ROOM_STATUS_FORBIDS = 300023
COVER_INVALID = 300031
SHARE_IMG_INVALID = 300032
ANCHOR_NAME_LENGTH = 300034
FEEDS_IMG_INVALID = 300037
EMPTY_ROOM_LIST = 9410000
# goods (issue 14)
PRICE_INVALID = 300003
GOODS_IMAGE_FAILED = 300006
GOODS_URL_INVALID = 300007
AUDIT_STATE = 300010
NO_AUDIT_QUOTA = 300012
GOODS_IN_REVIEW = 300014
GOODS_CANNOT_DELETE = 300015
GOODS_IMAGE_SIZE = 300018
GOODS_NOT_FOUND = 300024
GOODS_NOT_APPROVED = 300025
ROOM_GOODS_LIMIT = 300033
NO_EXPLAINER_VIDEO = 300044
VIDEO_NOT_READY = 300045
PUSH_IN_PROGRESS = 300047
GOODS_BEING_PUSHED = 300049
GOODS_OFF_SALE = 300052
GOODS_NOT_IN_ROOM = 300053
ACCESS_TOKEN_EXPIRED = 42001
API_UNAUTHORIZED = 48001
# Roles, sub-anchors and subscribers (issue 14, roles-subscribers)
ROLE_NOT_HELD = 2003  # deleterole: the official page lists 2003 without a meaning; here, nothing to delete
ANCHOR_WITHOUT_ROLE = 300030
SUB_ANCHOR_INVALID = 300039
ROLE_USERNAME_INVALID = 400001
ROLE_LIMIT = 400003
ROLE_DUPLICATE = 400004
ANCHOR_HAS_ROOMS = 400005
SUB_ANCHOR_DUPLICATE = 500004
SUB_ANCHOR_IS_ANCHOR = 500005
PUSHED_TODAY = 9410005
PUSH_NOT_LIVE = 9410006
# Room channel (issue 14): minilive's own, no official code names a missing replay.
REPLAY_NOT_FOUND = 9410201

MESSAGES = {
    SYSTEM_ERROR: "system error",
    INVALID_CREDENTIAL: "invalid credential, access_token is invalid or not latest",
    INVALID_MEDIA_TYPE: "invalid media type",
    INVALID_FILE_TYPE: "invalid file type",
    INVALID_FILE_SIZE: "invalid file size",
    INVALID_MEDIA_ID: "invalid media_id",
    INVALID_IMAGE_SIZE: "invalid image size",
    INVALID_APPID: "invalid appid",
    INVALID_GRANT_TYPE: "invalid grant_type",
    INVALID_SECRET: "invalid appsecret",
    ACCESS_TOKEN_MISSING: "access_token missing",
    APPID_MISSING: "appid missing",
    SECRET_MISSING: "appsecret missing",
    MEDIA_DATA_MISSING: "media data missing",
    REQUIRE_GET: "require GET method",
    REQUIRE_POST: "require POST method",
    QUOTA_EXCEEDED: "reach max api daily quota limit",
    DATA_FORMAT_ERROR: "data format error",
    INVALID_PARAMS_SHARE: "invalid params",
    INVALID_ARGS: "invalid args",
    NAME_LENGTH: "name length invalid",  # the official errmsg, for rooms and goods alike
    ROOM_NOT_FOUND: "room not exist",
    ROOM_STATUS_FORBIDS: "room status forbids this operation",
    COVER_INVALID: "coverImg invalid",
    SHARE_IMG_INVALID: "shareImg invalid",
    ANCHOR_NAME_LENGTH: "anchorName length is invalid",
    FEEDS_IMG_INVALID: "feedsImg invalid",
    EMPTY_ROOM_LIST: "empty room list",
    # goods (issue 14)
    PRICE_INVALID: "price invalid",
    GOODS_IMAGE_FAILED: "goods image upload failed",
    GOODS_URL_INVALID: "goods url invalid",
    AUDIT_STATE: "audit status invalid",
    NO_AUDIT_QUOTA: "no audit quota left today",
    GOODS_IN_REVIEW: "goods in review cannot be deleted",
    GOODS_CANNOT_DELETE: "goods not exist, cannot delete",
    GOODS_IMAGE_SIZE: "goods image width or height more than 300px",
    GOODS_NOT_FOUND: "goods not exist",
    GOODS_NOT_APPROVED: "goods not approved",
    ROOM_GOODS_LIMIT: "room goods over limit",
    NO_EXPLAINER_VIDEO: "goods has no explainer video",
    VIDEO_NOT_READY: "explainer video not generated yet",
    PUSH_IN_PROGRESS: "another goods is being pushed, try again later",
    GOODS_BEING_PUSHED: "goods being pushed cannot change sale",
    GOODS_OFF_SALE: "goods off sale cannot be pushed",
    GOODS_NOT_IN_ROOM: "goods not in room",
    ACCESS_TOKEN_EXPIRED: "access_token expired",
    API_UNAUTHORIZED: "api unauthorized",
    # Roles, sub-anchors and subscribers (issue 14, roles-subscribers)
    ROLE_NOT_HELD: "the user does not hold this role",
    ANCHOR_WITHOUT_ROLE: "room wxnumber not have an anchor role",
    SUB_ANCHOR_INVALID: "sub-anchor wechat id is invalid",
    ROLE_USERNAME_INVALID: "wechat id is invalid (微信号不合规)",
    ROLE_LIMIT: "role limit reached (管理员10个，运营者500个，主播500个)",
    ROLE_DUPLICATE: "the user already holds this role (重复添加角色)",
    ANCHOR_HAS_ROOMS: "the anchor has rooms not started yet (该主播存在未开播的直播间)",
    SUB_ANCHOR_DUPLICATE: "cannot set a duplicate sub-anchor (不能设置重复的副号)",
    SUB_ANCHOR_IS_ANCHOR: "the sub-anchor cannot be the anchor (副号不能和主号重复)",
    PUSHED_TODAY: "another room of the app was already pushed today (当日另外一个房间已推送过)",
    PUSH_NOT_LIVE: "the room is not live (推送的直播间非直播中状态)",
    # Room channel (issue 14)
    REPLAY_NOT_FOUND: "replay not exist",
}

# How the REST surface maps an errcode to an HTTP status.
HTTP_STATUS = {
    SYSTEM_ERROR: 500,
    INVALID_CREDENTIAL: 401,
    ACCESS_TOKEN_EXPIRED: 401,
    ACCESS_TOKEN_MISSING: 401,
    INVALID_APPID: 401,
    INVALID_SECRET: 401,
    QUOTA_EXCEEDED: 429,
    ROOM_NOT_FOUND: 404,
    ROOM_STATUS_FORBIDS: 409,
    EMPTY_ROOM_LIST: 404,
    # goods (issue 14)
    GOODS_NOT_FOUND: 404,
    AUDIT_STATE: 409,
    REPLAY_NOT_FOUND: 404,  # room channel (issue 14)
}


class ApiError(Exception):
    """A refusal with the official errcode; ``detail`` says what exactly was wrong."""

    def __init__(self, errcode: int, detail: str = "", **extra: Any) -> None:
        self.errcode = errcode
        self.detail = detail
        self.extra = extra
        super().__init__(self.errmsg)

    @property
    def errmsg(self) -> str:
        base = MESSAGES.get(self.errcode, "error")
        return f"{base}: {self.detail}" if self.detail else base

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.errcode, 400)

    def body(self) -> dict[str, Any]:
        """The WeChat-compatible shape: HTTP 200 with this body."""
        return {"errcode": self.errcode, "errmsg": self.errmsg, **self.extra}


class StoreUnavailable(ApiError):
    """The store's server (Redis) cannot be reached now: a system error (-1) that says why; HTTP 503.
    Live streams keep flowing meanwhile."""

    def __init__(self, detail: str) -> None:
        super().__init__(SYSTEM_ERROR, f"{detail}; live streams keep flowing, try again shortly")

    @property
    def http_status(self) -> int:
        return 503


def json_error(exc: ApiError) -> web.Response:
    """The error shape of every ``/api/v1`` route: ``{"error": {"code", "message"}}`` with the HTTP
    status the errcode maps to."""
    return web.json_response(
        {"error": {"code": exc.errcode, "message": exc.errmsg}}, status=exc.http_status, headers=CORS
    )


# The console's sign-in and sessions, and the REST additions it uses (issue 15): minilive's own codes.
CONSOLE_SIGN_IN = 9410301
CONSOLE_SESSION = 9410302
CONSOLE_CSRF = 9410303
CONSOLE_FORBIDDEN = 9410304
CONSOLE_RATE_LIMITED = 9410305
CONSOLE_APP_REQUIRED = 9410306
CONSOLE_APP_UNKNOWN = 9410307
STREAM_NOT_HERE = 9410308
REPLAY_NOT_FOUND = 9410201  # the room channel's (issue 14) code for the same thing
REPLAY_RECORDING = 9410309
MESSAGES.update(
    {
        CONSOLE_SIGN_IN: "sign-in refused",
        CONSOLE_SESSION: "console session missing or over",
        CONSOLE_CSRF: "CSRF token missing or wrong",
        CONSOLE_FORBIDDEN: "not allowed for this session",
        CONSOLE_RATE_LIMITED: "too many sign-in attempts",
        CONSOLE_APP_REQUIRED: "no app named",
        CONSOLE_APP_UNKNOWN: "app not exist",
        STREAM_NOT_HERE: "the room's stream is not live on this server",
        REPLAY_NOT_FOUND: "replay not exist",
        REPLAY_RECORDING: "the replay is still being recorded",
    }
)
HTTP_STATUS.update(
    {
        CONSOLE_SIGN_IN: 401,
        CONSOLE_SESSION: 401,
        CONSOLE_CSRF: 403,
        CONSOLE_FORBIDDEN: 403,
        CONSOLE_RATE_LIMITED: 429,
        CONSOLE_APP_REQUIRED: 400,
        CONSOLE_APP_UNKNOWN: 404,
        STREAM_NOT_HERE: 404,
        REPLAY_NOT_FOUND: 404,
        REPLAY_RECORDING: 409,
    }
)
