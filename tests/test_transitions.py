"""The live_status table, checked exhaustively: every status with every event.

The expectation is written here on its own, not read from the table: from the official semantics
(wechat-live-semantics.md §3) and minilive's own rules (docs/decisions.md: pause and resume, the
maximum live duration, a restart).
"""

from __future__ import annotations

import pytest

from api.models import FINAL_STATUSES, LiveStatus
from api.transitions import Event, Transition, legal_from, next_status, sources

# Where each event takes a room in each status; "-": the event is refused there.
GRID = """
event                    102  101  103  104  105  106  107
PUBLISHED                101   -    -    -    -   101   -
PUBLISHER_GONE            -   106   -    -    -    -    -
SERVER_RESTARTED          -   106   -    -    -    -    -
PAUSE                     -   105   -    -    -   105   -
RESUME                    -    -    -    -   106   -    -
RESUME_PUSHING            -    -    -    -   101   -    -
BAN                      104  104   -    -   104  104   -
END                      103  103   -    -   103  103   -
END_TIME_PASSED          107   -    -    -    -    -    -
MAX_DURATION_REACHED      -   103   -    -   103  103   -
INTERRUPTION_TIMED_OUT    -    -    -    -    -   103   -
"""

# The status_reason each allowed change records, with "DETAIL" as what the reporter adds.
REASONS: dict[Event, str | dict[int, str]] = {
    Event.PUBLISHED: {102: "anchor started", 106: "anchor came back"},
    Event.PUBLISHER_GONE: "publisher gone (DETAIL)",
    Event.SERVER_RESTARTED: "the server restarted while the room was live",
    Event.PAUSE: "paused by an admin",
    Event.RESUME: "resumed by an admin; waiting for the anchor",
    Event.RESUME_PUSHING: "resumed by an admin",
    Event.BAN: "banned by an admin",
    Event.END: "ended by an admin",
    Event.END_TIME_PASSED: "endTime passed before the room went live",
    Event.MAX_DURATION_REACHED: "reached the maximum live duration of DETAIL",
    Event.INTERRUPTION_TIMED_OUT: "anchor did not come back within DETAIL",
}


def expected() -> dict[tuple[int, Event], int | None]:
    header, *rows = (line.split() for line in GRID.strip().splitlines())
    statuses = [int(code) for code in header[1:]]
    cells: dict[tuple[int, Event], int | None] = {}
    for name, *targets in rows:
        for status, target in zip(statuses, targets, strict=True):
            cells[status, Event[name]] = None if target == "-" else int(target)
    return cells


EXPECTED = expected()


def reason(event: Event, status: int) -> str:
    text = REASONS[event]
    return text if isinstance(text, str) else text[status]


def test_the_expectation_covers_every_status_and_event():
    assert {status for status, _ in EXPECTED} == set(LiveStatus)
    assert {event for _, event in EXPECTED} == set(Event) == REASONS.keys()


@pytest.mark.parametrize("status", list(LiveStatus), ids=lambda s: f"{s.value}")
@pytest.mark.parametrize("event", list(Event), ids=lambda e: e.name)
def test_every_status_and_event(status: LiveStatus, event: Event):
    target = EXPECTED[status, event]
    transition = next_status(status, event)
    if target is None:
        assert transition is None, f"{event.name} must be refused in {status.value}"
        return
    assert transition is not None, f"{event.name} must be allowed in {status.value}"
    assert transition.to == target
    assert transition.because("DETAIL") == reason(event, status)


def test_plain_integer_statuses_are_looked_up_and_unknown_ones_refused_loudly():
    assert next_status(102, Event.PUBLISHED) == Transition(LiveStatus.LIVE, "anchor started")
    with pytest.raises(ValueError):
        next_status(0, Event.PUBLISHED)


def test_final_statuses_never_change():
    for status in FINAL_STATUSES:
        assert [event for event in Event if next_status(status, event)] == []


@pytest.mark.parametrize("event", list(Event), ids=lambda e: e.name)
def test_legal_from_and_sources(event: Event):
    allowed = {status for (status, e), target in EXPECTED.items() if e is event and target is not None}
    assert legal_from(event) == allowed
    for status in allowed:
        transition = next_status(status, event)
        assert transition is not None
        # Every status that makes the same change, and only those: the store's atomic check.
        change = (transition.to, transition.because("DETAIL"))
        same = {s for s in allowed if (EXPECTED[s, event], reason(event, s)) == change}
        assert sources(event, transition) == same


def test_sources_keep_a_start_and_a_return_apart():
    started = next_status(LiveStatus.NOT_STARTED, Event.PUBLISHED)
    came_back = next_status(LiveStatus.INTERRUPTED, Event.PUBLISHED)
    assert started is not None and came_back is not None
    assert sources(Event.PUBLISHED, started) == {LiveStatus.NOT_STARTED}
    assert sources(Event.PUBLISHED, came_back) == {LiveStatus.INTERRUPTED}
    assert sources(Event.END, Transition(LiveStatus.ENDED, "ended by an admin")) == {101, 102, 105, 106}
