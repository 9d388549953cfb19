"""The one bounded JSON decoder every client-sent JSON body and message goes through (issue 16, #6).

``json.loads`` recurses once per nesting level: 100,000 ``[`` raised a RecursionError that reached
the log as a traceback and the client as "system error". Size and depth are checked here before
decoding, so a hostile body costs one linear scan and gets errcode 47001 (HTTP 400 on the REST side).
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from aiohttp import web

from api import errors
from api.errors import ApiError

# Any JSON body over this is refused (issue 16): the largest real one, a room with every field, is a few KB.
MAX_BYTES = 1024 * 1024
# No request of either surface nests deeper than 4; 64 leaves room and stays far below the recursion limit.
MAX_DEPTH = 64

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class JsonRefused(ValueError):
    """The text is not JSON, or is too large or too deep to decode; the message says which."""


def depth(data: bytes) -> int:
    """How deep ``data``'s arrays and objects nest (brackets inside strings do not count)."""
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", data))
    return max(accumulate(_STEP[b] for b in brackets), default=0)


def loads(data: bytes | str, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` with size and depth bounded before decoding; JsonRefused for anything it refuses."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise JsonRefused(f"the body is too large: JSON bodies may have at most {max_bytes} bytes")
    if depth(raw) > max_depth:
        raise JsonRefused(f"the JSON nests too deep: at most {max_depth} levels of arrays and objects")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or not UTF-8
        raise JsonRefused("the body must be a JSON object") from None


async def read_object(request: web.Request, max_bytes: int = MAX_BYTES) -> dict[str, Any]:
    """A request's JSON object body, read no further than ``max_bytes``; ApiError 47001 otherwise."""
    too_large = JsonRefused(f"the body is too large: JSON bodies may have at most {max_bytes} bytes")
    try:
        if (request.content_length or 0) > max_bytes:
            raise too_large
        data = await request.content.read(max_bytes + 1)
        while len(data) <= max_bytes and (chunk := await request.content.read(max_bytes + 1 - len(data))):
            data += chunk
        if len(data) > max_bytes:
            raise too_large
        body = loads(data, max_bytes)
    except JsonRefused as exc:
        raise ApiError(errors.DATA_FORMAT_ERROR, str(exc)) from None
    if not isinstance(body, dict):
        raise ApiError(errors.DATA_FORMAT_ERROR, "the body must be a JSON object")
    return body
