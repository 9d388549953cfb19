"""A viewer of a live stream: a transport to write to, and its backpressure state."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable

from relay.formats.output import OutputFormat

_ids = itertools.count(1)


class Viewer:
    """One playing connection.

    The hub writes merged batches straight to ``transport`` (one ``write`` per flush).
    ``waiting`` means the viewer is skipping until the next keyframe: either it joined before
    the stream had one, or it fell behind (its transport buffer passed the high-water mark).
    ``behind_since`` is set only in the second case and is what gets a viewer disconnected.
    """

    __slots__ = (
        "backlog",
        "behind_since",
        "bytes_out",
        "done",
        "end",
        "format",
        "id",
        "joined_at",
        "remote",
        "skips",
        "transport",
        "waiting",
    )

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        fmt: OutputFormat,
        *,
        remote: str = "",
        end: Callable[[str], None] | None = None,
    ) -> None:
        self.id = next(_ids)
        self.transport = transport
        self.format = fmt
        self.remote = remote
        self.end = end or self._close
        self.waiting = False
        # While its start (GOP cache) goes out in slices: what is still to write, in order, the rest of
        # the start first, then the merged batches that came meanwhile (shared with every viewer).
        self.backlog: deque[memoryview | bytes] | None = None
        self.behind_since: float | None = None
        self.skips = 0
        self.bytes_out = 0
        self.joined_at = time.monotonic()
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def write(self, data: bytes) -> None:
        self.transport.write(data)
        self.bytes_out += len(data)

    def finish(self, reason: str) -> None:
        """End this viewer's session (clean end for its protocol), once."""
        if self.done.done():
            return
        self.done.set_result(reason)
        self.end(reason)

    def _close(self, reason: str) -> None:
        self.transport.close()
