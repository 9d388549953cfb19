"""Field rules of createRoom/editRoom, with the official error codes.

Names are measured the way the official API measures them: a CJK (wide or fullwidth) character
counts 2, anything else 1; room names 6-34 (3-17 汉字), anchor names 4-30 (2-15 汉字).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from api import errors
from api.errors import ApiError

NAME_WIDTH = (6, 34)
ANCHOR_NAME_WIDTH = (4, 30)


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


def check_name(name: str) -> None:
    width = display_width(name)
    low, high = NAME_WIDTH
    if not low <= width <= high:
        raise ApiError(errors.NAME_LENGTH, f"name is {width} wide; it must be {low}-{high} (a CJK character counts 2)")


def check_anchor_name(name: str) -> None:
    width = display_width(name)
    low, high = ANCHOR_NAME_WIDTH
    if not low <= width <= high:
        raise ApiError(
            errors.ANCHOR_NAME_LENGTH,
            f"anchorName is {width} wide; it must be {low}-{high} (a CJK character counts 2)",
        )


def check_times(start: int, end: int, now: float, rules: TimeRules, check_lead: bool = True) -> None:
    invalid = "parameter startTime or endTime is invalid"
    if check_lead:
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
