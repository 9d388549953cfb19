"""Room webhooks: a signed POST to an app's ``webhook_url`` on every status change and replay.

Signed as Tencent's live event callbacks are: ``t`` is the signature's expiry (decimal Unix seconds,
ten minutes ahead) and ``sign`` the lowercase hex MD5 of the app's push key followed by ``t``. A 2xx
answer means delivered; anything else is retried with exponential backoff. Deliveries run in the
background, one queue per app so that an app receives its events in order, and every attempt is
logged in the store (``GET /api/v1/app/webhook_deliveries``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from api import errors, webhook_targets
from api.errors import ApiError
from api.models import App, RoomEvent
from api.store.base import RoomStore

log = logging.getLogger("minilive.webhooks")

SIGN_TTL_SECONDS = 600
# Events waiting per app while its receiver is down; the oldest are dropped beyond this.
MAX_QUEUED = 1000
# Of a receiver's answer to a test delivery, this much is shown.
ANSWER_KEPT = 2048


def sign(key: str, t: int) -> str:
    return hashlib.md5((key + str(t)).encode()).hexdigest()


def payload(event: RoomEvent, key: str, now: float) -> dict[str, Any]:
    t = int(now) + SIGN_TTL_SECONDS
    body: dict[str, Any] = {
        "event": event.type,
        "appid": event.appid,
        "roomid": event.roomid,
        "live_status": event.live_status,
        "previous_status": event.previous_status,
        "reason": event.reason,
        "time": event.time,
        "t": t,
        "sign": sign(key, t),
    }
    if event.data:
        body["data"] = event.data
    return body


class Webhooks:
    def __init__(
        self,
        store: RoomStore,
        retry_seconds: Sequence[float] = (1, 2, 4, 8, 16),
        timeout_seconds: float = 10.0,
        clock: Callable[[], float] = time.time,
        allow_private: bool = False,
    ) -> None:
        self.store = store
        self.allow_private = allow_private  # see api.webhook_targets
        self.retry_seconds = retry_seconds  # the waits between attempts: len + 1 attempts in all
        self.timeout_seconds = timeout_seconds
        self.clock = clock
        self._queues: dict[str, deque[RoomEvent]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def send(self, event: RoomEvent) -> None:
        """Queue an event for its app (a ``RoomStatus.on_change`` callback: never waits on the network)."""
        queue = self._queues.setdefault(event.appid, deque())
        if len(queue) >= MAX_QUEUED:
            dropped = queue.popleft()
            log.warning("webhook queue of app %s is full: dropped the event of room %d", event.appid, dropped.roomid)
        queue.append(event)
        if event.appid not in self._workers:
            self._workers[event.appid] = asyncio.create_task(self._work(event.appid, queue))

    async def close(self) -> None:
        pending = sum(len(queue) for queue in self._queues.values())
        if pending:
            log.warning("stopping with %d webhook deliveries pending", pending)
        for task in self._workers.values():
            task.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
        self._workers.clear()
        self._queues.clear()
        if self._session is not None:
            await self._session.close()

    async def _work(self, appid: str, queue: deque[RoomEvent]) -> None:
        while queue:
            event = queue.popleft()
            try:
                await self._deliver(event)
            except Exception:
                log.exception("webhook delivery of %s failed", event)
        # No await since the queue was found empty: an event queued now starts a new worker.
        del self._workers[appid]
        del self._queues[appid]

    async def _deliver(self, event: RoomEvent) -> None:
        app = await self.store.get_app(event.appid)
        if app is None or not app.webhook_url:
            return
        delivery = secrets.token_hex(8)
        attempts = len(self.retry_seconds) + 1
        for attempt in range(1, attempts + 1):
            record = await self._attempt(app, event, delivery, attempt)
            if record["status"] == "delivered":
                return
            if attempt == attempts:
                log.warning(
                    "webhook %s to %s for room %d failed %d times; giving up",
                    event.type,
                    app.webhook_url,
                    event.roomid,
                    attempts,
                )
                return
            await asyncio.sleep(self.retry_seconds[attempt - 1])

    async def _attempt(self, app: App, event: RoomEvent, delivery: str, attempt: int) -> dict[str, Any]:
        answer = await self._post(app, event, delivery)
        last = attempt > len(self.retry_seconds)
        return await self._log(
            app, event, delivery, attempt, answer, "delivered" if answer.delivered else "failed" if last else "retrying"
        )

    async def _log(
        self, app: App, event: RoomEvent, delivery: str, attempt: int, answer: Answer, status: str
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "delivery_id": delivery,
            "event": event.type,
            "roomid": event.roomid,
            "live_status": event.live_status,
            "url": app.webhook_url,
            "attempt": attempt,
        }
        if answer.status is not None:
            record["http_status"] = answer.status
        if answer.error:
            record["error"] = answer.error
        record["duration_ms"] = answer.duration_ms
        record["time"] = self.clock()
        record["status"] = status
        await self.store.log_delivery(app.appid, record)
        return record

    async def _post(self, app: App, event: RoomEvent, delivery: str) -> Answer:
        """One signed POST of ``event`` to the app's webhook: what came back (redirects not followed)."""
        if self._session is None:
            self._session = webhook_targets.session(
                self.allow_private,
                timeout=aiohttp.ClientTimeout(total=self.timeout_seconds),
                headers={"User-Agent": "minilive-webhooks"},
            )
        headers = {"X-Minilive-Event": event.type, "X-Minilive-Delivery": delivery}
        started = time.monotonic()
        answer = Answer()
        try:
            webhook_targets.check_url("webhook_url", app.webhook_url, self.allow_private)  # one set before 16
            async with self._session.post(
                app.webhook_url,
                json=payload(event, app.push_key, self.clock()),
                headers=headers,
                allow_redirects=False,
            ) as response:
                answer.status = response.status
                answer.body = (await response.content.read(ANSWER_KEPT)).decode(errors="replace")
        except ApiError as exc:
            answer.error = exc.errmsg
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
            answer.error = str(exc) or type(exc).__name__
        answer.duration_ms = round((time.monotonic() - started) * 1000, 1)
        return answer

    async def test(self, app: App) -> Answer:
        """A signed ``test`` event to the app's webhook now, once (no retries), logged with the others."""
        if not app.webhook_url:
            raise ApiError(errors.INVALID_ARGS, "the app has no webhook_url: set one with PATCH /api/v1/app first")
        event = RoomEvent("test", app.appid, 0, 0, reason="a test delivery")
        delivery = secrets.token_hex(8)
        answer = await self._post(app, event, delivery)
        await self._log(app, event, delivery, 1, answer, "delivered" if answer.delivered else "failed")
        return answer


@dataclass(slots=True)
class Answer:
    """What a webhook receiver answered to one POST (``status`` None: no answer, ``error`` says why)."""

    status: int | None = None
    body: str = ""  # its first ANSWER_KEPT bytes
    error: str = ""
    duration_ms: float = 0.0

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300
