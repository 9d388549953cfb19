"""The legal changes of a room's ``live_status``, in one table (as h11 keeps its connection states).

``TABLE`` maps (status, event) to the status the room goes to and the reason it records. A pair that
is not in the table is refused: the event changes nothing. Services ask the table, through
``next_status``, ``sources`` and ``legal_from``; no other place lists which statuses an event leaves.

Official codes (../shared/reference/wechat-live-semantics.md §3): 101 live, 102 not started,
103 ended, 104 banned, 105 paused, 106 interrupted, 107 expired.

    102 --published--> 101 --publisher gone, server restarted--> 106 --published (within the grace)--> 101
    106 --interruption timed out--> 103          101/105/106 --max duration reached--> 103
    101/106 --pause (the anchor may push on; viewers get nothing)--> 105
    105 --resume--> 101 if the anchor is pushing, else 106 (waiting for the anchor)
    102/101/105/106 --end--> 103      102/101/105/106 --ban--> 104      102 --endTime passed--> 107
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from api.models import LiveStatus


class Event(enum.Enum):
    """What can happen to a room."""

    PUBLISHED = "the anchor's stream started"
    PUBLISHER_GONE = "the anchor's stream stopped"
    SERVER_RESTARTED = "the server restarted while the room was live"
    PAUSE = "an admin paused the room"
    RESUME = "an admin resumed the room"
    RESUME_PUSHING = "an admin resumed the room while its anchor was pushing"
    BAN = "an admin banned the room"
    END = "an admin ended the room"
    END_TIME_PASSED = "the room's endTime passed"
    MAX_DURATION_REACHED = "the live session reached the maximum live duration"
    INTERRUPTION_TIMED_OUT = "the anchor stayed away longer than the interruption grace"


@dataclass(slots=True, frozen=True)
class Transition:
    to: LiveStatus
    # The room's status_reason; "{detail}" is filled in by whoever reports the event.
    reason: str

    def because(self, detail: str = "") -> str:
        return self.reason.format(detail=detail)


_S = LiveStatus
_ADMIN_MAY_END = (_S.NOT_STARTED, _S.LIVE, _S.PAUSED, _S.INTERRUPTED)

TABLE: dict[tuple[LiveStatus, Event], Transition] = {
    (_S.NOT_STARTED, Event.PUBLISHED): Transition(_S.LIVE, "anchor started"),
    (_S.INTERRUPTED, Event.PUBLISHED): Transition(_S.LIVE, "anchor came back"),
    (_S.LIVE, Event.PUBLISHER_GONE): Transition(_S.INTERRUPTED, "publisher gone ({detail})"),
    (_S.LIVE, Event.SERVER_RESTARTED): Transition(_S.INTERRUPTED, "the server restarted while the room was live"),
    (_S.LIVE, Event.PAUSE): Transition(_S.PAUSED, "paused by an admin"),
    (_S.INTERRUPTED, Event.PAUSE): Transition(_S.PAUSED, "paused by an admin"),
    # A resumed room waits for its anchor like an interrupted one, and the same grace applies.
    (_S.PAUSED, Event.RESUME): Transition(_S.INTERRUPTED, "resumed by an admin; waiting for the anchor"),
    # The official 105 -> 101: the anchor's stream is there, the room is live again at once.
    (_S.PAUSED, Event.RESUME_PUSHING): Transition(_S.LIVE, "resumed by an admin"),
    **{(status, Event.BAN): Transition(_S.BANNED, "banned by an admin") for status in _ADMIN_MAY_END},
    **{(status, Event.END): Transition(_S.ENDED, "ended by an admin") for status in _ADMIN_MAY_END},
    (_S.NOT_STARTED, Event.END_TIME_PASSED): Transition(_S.EXPIRED, "endTime passed before the room went live"),
    **{
        (status, Event.MAX_DURATION_REACHED): Transition(_S.ENDED, "reached the maximum live duration of {detail}")
        for status in (_S.LIVE, _S.PAUSED, _S.INTERRUPTED)
    },
    (_S.INTERRUPTED, Event.INTERRUPTION_TIMED_OUT): Transition(_S.ENDED, "anchor did not come back within {detail}"),
}


def next_status(status: int, event: Event) -> Transition | None:
    """Where ``event`` takes a room in ``status``; None if the event is not allowed there."""
    return TABLE.get((LiveStatus(status), event))


def sources(event: Event, transition: Transition) -> frozenset[LiveStatus]:
    """The statuses from which ``event`` makes exactly ``transition``. The store checks the room's
    status against these atomically: a room whose status changed since it was read (on another node)
    gets the same change, or none."""
    return frozenset(status for (status, e), t in TABLE.items() if e is event and t == transition)


def legal_from(event: Event) -> frozenset[LiveStatus]:
    """The statuses in which ``event`` is allowed (the rooms a timer has to look at)."""
    return frozenset(status for status, e in TABLE if e is event)
