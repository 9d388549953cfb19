"""Giving the heap's free pages back to the system after a flood of RTMP connections (issue 16, #2).

Why memory stayed taken after a flood closed: the bytes of unfinished messages are held as one
``bytes`` object per chunk (4 KiB with a common chunk size), allocated by glibc's malloc in the main
arena, between objects that live on (read buffers, other connections' state). When the flood closes,
they are free inside the heap, but glibc gives back on its own only the free space at the heap's top:
holes in the middle stay resident. That is fragmentation of one arena, not one arena per thread
(the event loop allocates in the main arena; ``MALLOC_ARENA_MAX`` made no difference) nor Python's
allocator (128-byte chunks, which pymalloc serves, were given back). ``malloc_trim(0)`` releases the
free pages inside the heap too (``MADV_DONTNEED``). It walks the heap, a few ms to tens of ms, so it
runs only after connections that closed gave back at least ``trim_after_bytes`` of unfinished
messages, at most every ``MIN_INTERVAL`` seconds, on a thread (ctypes releases the GIL).
bench/RESULTS.md ("hostile clients at full size") has the figures of each option tried.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import math
import os
import time
from collections.abc import Callable

log = logging.getLogger("minilive.rtmp")

MIN_INTERVAL = 10.0


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (the allocator calls below are glibc's), else None (musl). By its
    soname, not ``ctypes.util.find_library``, which runs ldconfig in a subprocess."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None without glibc."""
    libc = glibc()
    return libc.malloc_trim if libc is not None else None


M_MMAP_THRESHOLD = -3  # mallopt parameter, malloc.h


def set_mmap_threshold(size: int) -> bool:
    """Allocations of ``size`` bytes or more are mmapped, and given back as they are freed: glibc's
    threshold no longer rises (as it does by default, up to 32 MiB, after each mmapped block freed).
    False without glibc."""
    libc = glibc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, size))


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class HeapTrim:
    """Calls ``malloc_trim(0)`` once enough bytes were given back (``freed``, a running total)."""

    def __init__(self, after_bytes: int) -> None:
        self.after_bytes = after_bytes  # 0: never
        self.trims = 0
        self._trim = _malloc_trim() if after_bytes > 0 else None
        self._freed_at_last = 0
        self._last = -math.inf
        self._running = False

    def check(self, freed: int, now: float) -> bool:
        """Start a trim if ``freed`` grew by ``after_bytes`` since the last one; True if it did."""
        if (
            self._trim is None
            or self._running
            or freed - self._freed_at_last < self.after_bytes
            or now - self._last < MIN_INTERVAL
        ):
            return False
        given_back = freed - self._freed_at_last
        self._freed_at_last, self._last, self._running = freed, now, True
        self.trims += 1
        asyncio.get_running_loop().run_in_executor(None, self._run, given_back)
        return True

    def _run(self, given_back: int) -> None:
        assert self._trim is not None
        before, started = rss_bytes(), time.perf_counter()
        try:
            self._trim(0)
        finally:
            self._running = False
        log.info(
            "closed connections gave back %.0f MB of unfinished messages; malloc_trim took %.0f ms,"
            " RSS %.0f -> %.0f MB",
            given_back / 1e6,
            (time.perf_counter() - started) * 1000,
            before / 1e6,
            rss_bytes() / 1e6,
        )
