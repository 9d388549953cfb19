"""Who watches a room's stream: the one seam through which the control plane counts viewers.

The composition root injects an ``AudienceOf``; REST room views, the status poll and the status
feeds all ask it, so a better count (every protocol, every node) plugs in at one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict


class Audience(TypedDict):
    total: int
    by_protocol: dict[str, int]  # protocol name -> viewers; protocols without viewers may be absent


# Called with a room's stream name (``Room.stream_name``).
AudienceOf = Callable[[str], Audience]
