"""Room webhooks to a real HTTP receiver: the signature, retries with backoff, order, the delivery log."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time

import aiohttp
import pytest
from aiohttp import web

from api.models import LiveStatus, RoomEvent
from tests.conftest import make_room
from tests.test_rest_api import Client, go_live


class Receiver:
    """An app's webhook endpoint: answers with ``answers`` in turn (then 200), and can be held shut."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.calls: list[tuple[dict, dict]] = []  # (headers, body)
        self.gate = asyncio.Event()
        self.gate.set()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        await self.gate.wait()
        self.calls.append((dict(request.headers), await request.json()))
        return web.Response(status=self.answers.pop(0) if self.answers else 200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"

    async def stop(self) -> None:
        self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_calls(self, count: int, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count:
            assert time.monotonic() < deadline, f"{len(self.calls)} webhook calls, expected {count}"
            await asyncio.sleep(0.02)


@pytest.fixture
async def receiver():
    started: list[Receiver] = []

    async def start(answers: list[int] | None = None) -> Receiver:
        r = Receiver(list(answers or []))
        await r.start()
        started.append(r)
        return r

    yield start
    for r in started:
        await r.stop()


@pytest.fixture
async def hook_server(make_server):
    return await make_server(webhook_retry_seconds=[0.05, 0.1, 0.2, 0.4, 0.8])


async def wait_deliveries(server, appid: str, count: int, timeout: float = 5) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(found := await server.store.deliveries(appid)) < count:
        assert time.monotonic() < deadline, f"{len(found)} deliveries logged, expected {count}"
        await asyncio.sleep(0.02)
    return found


async def test_signed_delivery_retried_until_it_succeeds(hook_server, receiver):
    server = hook_server
    hook = await receiver([500, 500])
    app, room = await make_room(server)
    app = await server.apps.update_app(app, {"webhook_url": hook.url})

    await server.room_status.admin_action(app, room.roomid, "end")
    await hook.wait_calls(3)
    records = await wait_deliveries(server, app.appid, 3)

    bodies = [body for _, body in hook.calls]
    for body in bodies:
        t = body["t"]
        assert isinstance(t, int) and time.time() + 590 < t <= time.time() + 600
        assert body["sign"] == hashlib.md5(f"{app.push_key}{t}".encode()).hexdigest()
        assert {k: body[k] for k in ("event", "appid", "roomid", "live_status", "previous_status", "reason")} == {
            "event": "status",
            "appid": app.appid,
            "roomid": room.roomid,
            "live_status": LiveStatus.ENDED,
            "previous_status": LiveStatus.NOT_STARTED,
            "reason": "ended by an admin",
        }
    headers = [h for h, _ in hook.calls]
    assert len({h["X-Minilive-Delivery"] for h in headers}) == 1  # one delivery, three attempts
    assert headers[0]["Content-Type"] == "application/json" and headers[0]["X-Minilive-Event"] == "status"

    # Newest first: the success, then the two failures.
    assert [(r["attempt"], r["status"], r["http_status"]) for r in records] == [
        (3, "delivered", 200),
        (2, "retrying", 500),
        (1, "retrying", 500),
    ]
    assert all(r["roomid"] == room.roomid and r["duration_ms"] >= 0 and r["time"] > 0 for r in records)

    # The owner reads the same log over REST.
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as session:
        token = await server.apps.issue_token(app.appid, app.secret)
        session.headers["Authorization"] = f"Bearer {token.token}"
        listed = await Client(session, app).call("GET", "/api/v1/app/webhook_deliveries?limit=2", 200)
    assert [r["attempt"] for r in listed["deliveries"]] == [3, 2]


async def test_events_keep_their_order_and_never_block_the_change(hook_server, receiver):
    server = hook_server
    hook = await receiver()
    hook.gate.clear()  # the receiver hangs until the changes are all made
    app, room = await make_room(server)
    _, quiet_room = await make_room(server, "no webhook")
    app = await server.apps.update_app(app, {"webhook_url": hook.url})

    await go_live(server, room)
    await server.room_status.admin_action(app, room.roomid, "pause")
    await server.room_status.admin_action(app, room.roomid, "resume")
    await server.room_status.admin_action(app, room.roomid, "end")
    await server.room_status.admin_action(await server.store.get_app(quiet_room.appid), quiet_room.roomid, "ban")
    await server.webhooks.send(
        RoomEvent("replay_ready", app.appid, room.roomid, LiveStatus.ENDED, data={"replay_id": "r1"})
    )
    assert hook.calls == []  # every change is made while the first delivery still waits
    hook.gate.set()

    await hook.wait_calls(5)
    got = [(b["event"], b["previous_status"], b["live_status"]) for _, b in hook.calls]
    assert got == [
        ("status", 102, 101),
        ("status", 101, 105),
        ("status", 105, 106),
        ("status", 106, 103),
        ("replay_ready", 0, 103),
    ]
    assert hook.calls[-1][1]["data"] == {"replay_id": "r1"}
    await asyncio.sleep(0.1)
    assert len(hook.calls) == 5  # the app without a webhook_url sent nothing
    assert await server.store.deliveries(quiet_room.appid) == []


async def test_unreachable_receiver_is_given_up_after_six_attempts(hook_server):
    server = hook_server
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: connections are refused
    app, room = await make_room(server)
    app = await server.apps.update_app(app, {"webhook_url": f"http://127.0.0.1:{port}/hook"})
    await server.room_status.admin_action(app, room.roomid, "ban")
    records = await wait_deliveries(server, app.appid, 6)
    assert [r["attempt"] for r in records] == [6, 5, 4, 3, 2, 1]
    assert [r["status"] for r in records] == ["failed"] + ["retrying"] * 5
    assert all(r["error"] and "http_status" not in r for r in records)
    await asyncio.sleep(1.0)
    assert len(await server.store.deliveries(app.appid)) == 6
