"""Where a running server's memory is, for a leak hunt (issue 16): what ``GET /api/v1/debug/runtime``
adds with ``?malloc=N`` and ``?buffers=N``.

RSS alone cannot tell a leak from glibc keeping freed memory: ``glibc`` (``mallinfo2``) gives the heap's
size next to what is in use in it; ``tracemalloc`` (only if the server was started with
``PYTHONTRACEMALLOC=1``: tracing costs every allocation) names the lines that allocated what is alive,
and the diff against the previous call the lines that grew. Byte buffers (``bytes``, ``bytearray``)
are not tracked by the collector, so a count of live objects by type never sees them: ``buffers``
sums the ones that tracked containers refer to, by the container's type.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import sys
import tracemalloc
from collections import Counter
from typing import Any

from ingest.heap import glibc

_MALLINFO2_FIELDS = [
    "arena",
    "ordblks",
    "smblks",
    "hblks",
    "hblkhd",
    "usmblks",
    "fsmblks",
    "uordblks",
    "fordblks",
    "keepcost",
]


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2_FIELDS]


@functools.cache
def _mallinfo2() -> Any:
    function = getattr(glibc(), "mallinfo2", None)  # glibc 2.33 and later
    if function is None:
        return None
    function.restype = _Mallinfo2
    return function


def glibc_heap() -> dict[str, int] | None:
    """glibc's view over every arena, in bytes: ``heap`` obtained from the system (brk and per-thread
    arenas), ``in_use`` of it, ``free`` inside it (what ``malloc_trim`` could give back), ``mmapped``
    (big blocks, given back on free). None without glibc."""
    function = _mallinfo2()
    if function is None:
        return None
    info = function()
    return {"heap": info.arena, "in_use": info.uordblks, "free": info.fordblks, "mmapped": info.hblkhd}


class MallocReport:
    """``?malloc=N``: the top N lines by size of what is alive, and by growth since the last call."""

    def __init__(self) -> None:
        self._previous: tracemalloc.Snapshot | None = None

    def __call__(self, top: int) -> dict[str, object]:
        report: dict[str, object] = {"glibc": glibc_heap(), "tracing": tracemalloc.is_tracing()}
        if not tracemalloc.is_tracing():
            report["hint"] = "start the server with PYTHONTRACEMALLOC=1 for the lines that allocated"
            return report
        current, peak = tracemalloc.get_traced_memory()
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        report["traced"] = {"current": current, "peak": peak}
        report["top"] = [_line(stat.traceback, stat.size, stat.count) for stat in snapshot.statistics("lineno")[:top]]
        if self._previous is not None:
            diff = snapshot.compare_to(self._previous, "lineno")[:top]
            report["grown"] = [_line(stat.traceback, stat.size_diff, stat.count_diff) for stat in diff]
        self._previous = snapshot
        return report


def _line(traceback: tracemalloc.Traceback, size: int, count: int) -> dict[str, object]:
    frame = traceback[0]
    return {"at": f"{frame.filename}:{frame.lineno}", "size": size, "count": count}


def buffers(top: int) -> dict[str, object]:
    """``?buffers=N``: bytes and bytearray objects held by tracked containers, each counted once, and
    the N container types holding the most of them. Walks every tracked object: seconds on a busy
    server, a one-off for a diagnosis."""
    seen: set[int] = set()
    totals = {"bytes": [0, 0], "bytearray": [0, 0]}
    holders: Counter[str] = Counter()
    for holder in gc.get_objects():
        for referent in gc.get_referents(holder):
            kind = type(referent)
            if (kind is bytes or kind is bytearray) and id(referent) not in seen:
                seen.add(id(referent))
                size = sys.getsizeof(referent)
                totals[kind.__name__][0] += 1
                totals[kind.__name__][1] += size
                holders[type(holder).__qualname__] += size
    return {
        **{name: {"count": count, "size": size} for name, (count, size) in totals.items()},
        "holders": dict(holders.most_common(top)),
    }
