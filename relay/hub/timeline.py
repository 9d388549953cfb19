"""A stream's clock: every publisher's timestamps mapped onto one monotonic timeline."""

from __future__ import annotations

from relay.formats.packet import AUDIO, VIDEO

# A timestamp that moves backwards by more than this, or forwards by this much more than the
# wall clock did, is an encoder reset rather than jitter: the stream's timeline is re-anchored.
BACKWARD_RESET_MS = 1000
FORWARD_RESET_MS = 10000


class Timeline:
    """The last timestamp placed per track and when, so that a stream's timestamps never go back,
    whichever publisher (or reconnect, or takeover) sends them."""

    __slots__ = ("last", "last_wall")

    def __init__(self) -> None:
        self.last = {AUDIO: -1, VIDEO: -1}
        self.last_wall = 0.0

    @property
    def now_ms(self) -> int:
        """The latest timestamp placed on any track (0 before the first)."""
        return max(0, *self.last.values())

    def anchor(self, timestamp: int, now: float) -> int:
        """The offset that continues the timeline, where the last publisher left it, for a publisher
        whose first timestamp is ``timestamp``."""
        last = max(self.last.values())
        if last < 0:
            return -timestamp
        gap = max(1, int((now - self.last_wall) * 1000))
        return last + gap - timestamp

    def place(self, kind: int, ts: int, now: float) -> tuple[int, int]:
        """(timestamp on the timeline, correction to add to the publisher's offset) for a frame the
        publisher's offset put at ``ts``."""
        last = self.last[kind]
        shift = 0
        if last >= 0:
            if ts < last:
                if last - ts > BACKWARD_RESET_MS:
                    shift = last - ts
                ts = last
            elif ts - last > FORWARD_RESET_MS:
                wall = int((now - self.last_wall) * 1000)
                if ts - last > wall + FORWARD_RESET_MS:
                    shift = -(ts - last - max(wall, 1))
                    ts += shift
        self.last[kind] = ts
        self.last_wall = now
        return ts, shift
