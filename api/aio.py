"""Small asyncio helpers of the control plane."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger("minilive")

RECANCEL_SECONDS = 0.2


async def cancel_and_wait(tasks: Iterable[asyncio.Task[None]], timeout: float = 5.0) -> None:
    """Cancel ``tasks`` and wait until they end. A task whose cancellation got lost below it is
    cancelled again every 0.2 s, up to ``timeout``. (Seen at a server's stop with the Redis store, about
    one stop in five: a consumer went back to waiting on its queue, "cancelling" forever, and the stop
    with it. Where below the consumer the cancellation was lost is not found yet.)"""
    pending = {task for task in tasks if not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_SECONDS)
    if pending:
        log.warning("%d background task(s) did not stop: %s", len(pending), ", ".join(map(repr, pending)))
