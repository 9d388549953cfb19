"""Field rules of createRoom/editRoom, with the official error codes.

The fields, their types and widths are ``Room``'s definition (``api.models.ROOM_INPUTS``). Names are
measured the way the official API measures them: a CJK (wide or fullwidth) character counts 2,
anything else 1; room names 6-34 (3-17 汉字), anchor names 4-30 (2-15 汉字).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from api import errors
from api.errors import ApiError
from api.models import RoomField


def display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


@dataclass(slots=True)
class TimeRules:
    min_lead_seconds: int = 600  # startTime at least 10 minutes ahead
    max_lead_seconds: int = 180 * 86400  # and at most about 6 months ahead
    min_duration_seconds: int = 1800  # endTime - startTime at least 30 minutes
    max_duration_seconds: int = 12 * 3600  # 12 h enforced by the live service (its doc says 24 h)


class Fields:
    """Typed access to a request body, refusing missing or ill-typed fields with 200002."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def has(self, name: str) -> bool:
        return name in self.body and self.body[name] is not None

    def string(self, name: str, required: bool = True, default: str = "") -> str:
        if not self.has(name):
            if required:
                raise ApiError(errors.INVALID_ARGS, f"{name} is required")
            return default
        value = self.body[name]
        if not isinstance(value, str):
            raise ApiError(errors.INVALID_ARGS, f"{name} must be a string")
        return value

    def integer(self, name: str, required: bool = True, default: int = 0) -> int:
        if not self.has(name):
            if required:
                raise ApiError(errors.INVALID_ARGS, f"{name} is required")
            return default
        value = self.body[name]
        # The official API takes numbers; numeric strings are common in PHP/JS back ends.
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise ApiError(errors.INVALID_ARGS, f"{name} must be an integer")
        return int(value)

    def flag(self, name: str, required: bool = True, default: int = 0) -> int:
        value = self.integer(name, required, default)
        if value not in (0, 1):
            raise ApiError(errors.INVALID_ARGS, f"{name} must be 0 or 1")
        return value

    def room_id(self, *names: str) -> int:
        """The room id under the first of ``names`` present (the API spells it several ways)."""
        for name in names:
            if self.has(name):
                value = self.integer(name)
                if value <= 0:
                    raise ApiError(errors.INVALID_ARGS, f"{name} must be a positive room id")
                return value
        raise ApiError(errors.INVALID_ARGS, f"{names[0]} is required")


def read_room(body: dict[str, Any], fields: Iterable[RoomField]) -> dict[str, Any]:
    """The values of ``fields`` in a createRoom/editRoom body (official names), by field name, each
    typed and checked in turn: 200002 for a missing or ill-typed value, the field's own errcode for a
    width out of range. An optional field that is absent takes its documented default, in an edit as
    at creation (editRoom has createRoom's rules: an absent closeKf is 1, not the room's value)."""
    f = Fields(body)
    values: dict[str, Any] = {}
    for field in fields:
        wire = field.wire
        default = field.default
        if wire.flag:
            value: Any = f.flag(wire.wechat, wire.required, default)
        elif field.kind is int:
            value = f.integer(wire.wechat, wire.required, default)
        else:
            value = f.string(wire.wechat, wire.required, default)
        if wire.width is not None:
            check_width(wire.wechat, value, wire.width, wire.errcode)
        values[field.name] = value
    return values


def check_width(name: str, value: str, allowed: tuple[int, int], errcode: int) -> None:
    width = display_width(value)
    low, high = allowed
    if not low <= width <= high:
        raise ApiError(errcode, f"{name} is {width} wide; it must be {low}-{high} (a CJK character counts 2)")


def check_times(start: int, end: int, now: float, rules: TimeRules) -> None:
    invalid = "parameter startTime or endTime is invalid"
    if start < now + rules.min_lead_seconds:
        raise ApiError(
            errors.INVALID_ARGS,
            f"{invalid}: startTime must be at least {rules.min_lead_seconds // 60} minutes from now",
        )
    if start > now + rules.max_lead_seconds:
        raise ApiError(errors.INVALID_ARGS, f"{invalid}: startTime must be within 6 months")
    duration = end - start
    if duration < rules.min_duration_seconds:
        raise ApiError(
            errors.INVALID_ARGS,
            f"{invalid}: endTime must be at least {rules.min_duration_seconds // 60} minutes after startTime",
        )
    if duration > rules.max_duration_seconds:
        raise ApiError(
            errors.INVALID_ARGS,
            f"{invalid}: a live may be planned for at most {rules.max_duration_seconds // 3600} hours",
        )
