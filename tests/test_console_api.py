"""The console's server side over real HTTP: sign-in (an app's secret, the admin token), the session
cookie and its attributes, CSRF on cookie writes, what an app session and an admin session may reach,
sign-out and expiry, sessions shared by two servers over Redis, the admin token CLI, the console's
pages, and the REST endpoints the console added (media, usage, webhook test, stream details, kick,
replay delete), their answers held to the OpenAPI document."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import io
import os
import shutil
import stat
import sys
import time
import zipfile
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from api import config
from api.console.sessions import COOKIE, SEEN, SESSIONS
from api.models import LiveStatus, Replay
from api.openapi import DOCUMENT
from tests.conftest import make_room, publish, run
from tests.test_openapi_responses import Api, strict

ROOT = Path(__file__).resolve().parent.parent


class Console:
    """A browser's side of the console, by hand: the cookie and the CSRF token it was given."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.cookie = ""
        self.csrf = ""
        self.set_cookie = ""  # the last Set-Cookie header, for its attributes

    async def login(self, body: dict[str, Any], status: int = 200, **kwargs: Any) -> dict[str, Any]:
        async with self.session.post("/console/api/login", json=body, **kwargs) as response:
            answer = await response.json()
            assert response.status == status, answer
            if status == 200:
                self.set_cookie = response.headers["Set-Cookie"]
                self.cookie = SimpleCookie(self.set_cookie)[COOKIE].value
                self.csrf = answer["csrf"]
                assert response.headers["Cache-Control"] == "no-store"
        return answer

    async def call(
        self, method: str, path: str, status: int, *, csrf: str | None = None, app: str = "", **kwargs: Any
    ) -> Any:
        """A request with the session's cookie (and its CSRF token unless ``csrf`` says otherwise)."""
        headers = {"Cookie": f"{COOKIE}={self.cookie}", "X-CSRF-Token": self.csrf if csrf is None else csrf}
        if app:
            headers["X-Minilive-App"] = app
        async with self.session.request(method, path, headers=headers, **kwargs) as response:
            body = await response.json() if response.content_type == "application/json" else None
            assert response.status == status, body
            return body


def client(server) -> aiohttp.ClientSession:
    # No cookie jar: the tests send the cookie themselves, as a browser would, and see every Set-Cookie.
    return aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}", cookie_jar=aiohttp.DummyCookieJar())


async def admin_token(data_dir: Path, *args: str) -> str:
    code, out, err = await run(
        sys.executable, "-m", "api.cli", "admin", "token", "--data-dir", str(data_dir), *args, timeout=30
    )
    assert code == 0, err.decode()
    return out.decode().strip()


async def test_app_sign_in_sets_a_strict_http_only_cookie_that_authorizes_the_rest_api(make_server):
    server = await make_server()
    app, room = await make_room(server)
    async with client(server) as session:
        console = Console(session)
        body = await console.login({"appid": app.appid, "secret": app.secret})
        assert body == {"role": "app", "appid": app.appid, "csrf": console.csrf} and len(console.csrf) >= 24
        attributes = console.set_cookie.lower()
        assert "httponly" in attributes and "samesite=strict" in attributes and "path=/" in attributes
        assert "secure" not in attributes.replace("samesite", "")  # plain http: a Secure cookie would be lost
        assert await console.call("GET", "/console/api/me", 200) == body
        listed = await console.call("GET", "/api/v1/rooms", 200)
        assert [r["roomid"] for r in listed["rooms"]] == [room.roomid]
        assert (await console.call("GET", "/console/api/apps", 200))["apps"] == [
            {"appid": app.appid, "name": app.name, "created_at": app.created_at}
        ]
        # Behind a TLS proxy the cookie is Secure.
        await console.login({"appid": app.appid, "secret": app.secret}, headers={"X-Forwarded-Proto": "https"})
        assert "; secure" in console.set_cookie.lower()
        # The store keeps a digest of the cookie, never the cookie itself.
        assert console.cookie not in str(await server.store.list_docs(SESSIONS))


async def test_wrong_credentials_are_401_without_saying_which_and_a_form_cannot_sign_in(make_server):
    server = await make_server()
    app, _ = await make_room(server)
    async with client(server) as session:
        console = Console(session)
        wrong = await console.login({"appid": app.appid, "secret": "x" * 32}, status=401)
        unknown = await console.login({"appid": "wxnobody", "secret": app.secret}, status=401)
        assert wrong == unknown == {"error": {"code": 9410301, "message": "sign-in refused: wrong appid or secret"}}
        refused = await console.login({"admin_token": "guess"}, status=401)
        assert "minilive admin token" in refused["error"]["message"]
        await console.login({"appid": app.appid}, status=401)
        async with session.post("/console/api/login", data={"appid": app.appid, "secret": app.secret}) as response:
            assert response.status == 400 and "Set-Cookie" not in response.headers
        async with session.get("/console/api/me") as response:
            assert response.status == 401 and (await response.json())["error"]["code"] == 9410302
        async with session.get("/api/v1/rooms", headers={"Cookie": f"{COOKIE}=forged"}) as response:
            assert response.status == 401


async def test_sign_in_attempts_per_address_are_limited(make_server):
    server = await make_server()
    server.console.settings.login_attempts_per_minute = 4
    app, _ = await make_room(server)
    async with client(server) as session:
        console = Console(session)
        for _ in range(3):
            await console.login({"appid": app.appid, "secret": "wrong"}, status=401)
        await console.login({"appid": app.appid, "secret": app.secret})
        # The fifth attempt within the minute is refused before the credentials are read: right ones too.
        limited = await console.login({"appid": app.appid, "secret": app.secret}, status=429)
        assert limited["error"]["code"] == 9410305 and "127.0.0.1" in limited["error"]["message"]
        # The session opened before the limit still works.
        await console.call("GET", "/console/api/me", 200)


async def test_cookie_writes_need_the_csrf_token_and_bearer_writes_do_not(make_server):
    server = await make_server()
    app, room = await make_room(server)
    async with client(server) as session:
        console = Console(session)
        await console.login({"appid": app.appid, "secret": app.secret})
        change = {"json": {"webhook_url": "http://127.0.0.1:9/hook"}}
        missing = await console.call("PATCH", "/api/v1/app", 403, csrf="", **change)
        assert missing["error"]["code"] == 9410303 and "X-CSRF-Token" in missing["error"]["message"]
        await console.call("PATCH", "/api/v1/app", 403, csrf=console.csrf[:-1] + "A", **change)
        await console.call("POST", f"/api/v1/rooms/{room.roomid}/end", 403, csrf="")
        assert (await server.store.get_app(app.appid)).webhook_url == ""
        assert (await server.rooms.room(app, room.roomid)).live_status == LiveStatus.NOT_STARTED
        assert (await console.call("PATCH", "/api/v1/app", 200, **change))["webhook_url"] == "http://127.0.0.1:9/hook"
        # Reads need no token; a Bearer token is not a browser session and needs none either.
        await console.call("GET", "/api/v1/app", 200, csrf="")
        async with session.post("/api/v1/token", json={"appid": app.appid, "secret": app.secret}) as response:
            token = (await response.json())["access_token"]
        bearer = {"Authorization": f"Bearer {token}"}
        async with session.patch("/api/v1/app", json={"webhook_url": ""}, headers=bearer) as response:
            assert response.status == 200


async def test_an_app_session_reaches_only_its_own_app_and_the_admin_names_any(make_server):
    server = await make_server()
    app, room = await make_room(server, "ours")
    other, other_room = await make_room(server, "theirs")
    token = await admin_token(server.settings.data_dir)
    async with client(server) as session:
        owner, admin = Console(session), Console(session)
        await owner.login({"appid": app.appid, "secret": app.secret})
        theirs = f"/api/v1/rooms/{other_room.roomid}"
        assert (await owner.call("GET", theirs, 404))["error"]["code"] == 300022
        await owner.call("POST", f"{theirs}/end", 404)
        named = await owner.call("GET", theirs, 403, app=other.appid)
        assert named["error"]["code"] == 9410304
        await owner.call("POST", f"{theirs}/end", 403, app=other.appid)
        await owner.call("GET", f"/api/v1/apps/{other.appid}/goods", 403)
        await owner.call("POST", "/console/api/apps", 403, json={"name": "mine"})
        assert (await server.rooms.room(other, other_room.roomid)).live_status == LiveStatus.NOT_STARTED

        body = await admin.login({"admin_token": token})
        assert body["role"] == "admin" and body["appid"] is None
        required = await admin.call("GET", "/api/v1/rooms", 400)
        assert "X-Minilive-App" in required["error"]["message"]
        await admin.call("GET", "/api/v1/rooms", 404, app="wxnobody")
        listed = await admin.call("GET", "/api/v1/rooms", 200, app=other.appid)
        assert [r["roomid"] for r in listed["rooms"]] == [other_room.roomid]
        await admin.call("GET", f"/api/v1/rooms/{room.roomid}", 200, app=app.appid)
        await admin.call("GET", f"/api/v1/apps/{other.appid}/goods", 200)  # the path names the app
        ended = await admin.call("POST", f"{theirs}/end", 200, app=other.appid)
        assert ended["live_status"] == LiveStatus.ENDED
        apps = (await admin.call("GET", "/console/api/apps", 200))["apps"]
        assert {a["appid"] for a in apps} == {app.appid, other.appid}
        await admin.call("POST", "/console/api/apps", 403, csrf="", json={"name": "new"})
        await admin.call("POST", "/console/api/apps", 400, json={"name": ""})
        created = await admin.call("POST", "/console/api/apps", 201, json={"name": "new shop"})
        assert created["name"] == "new shop" and len(created["secret"]) == 32
        assert (await server.store.get_app(created["appid"])).secret == created["secret"]


async def test_sign_out_expiry_and_changed_credentials_end_sessions(make_server):
    server = await make_server()
    app, _ = await make_room(server)
    token = await admin_token(server.settings.data_dir)
    async with client(server) as session:
        console = Console(session)
        await console.login({"appid": app.appid, "secret": app.secret})
        old = console.cookie
        async with session.post("/console/api/logout", headers={"Cookie": f"{COOKIE}={old}"}) as response:
            assert response.status == 204 and f'{COOKIE}=""' in response.headers["Set-Cookie"]
        await console.call("GET", "/console/api/me", 401)
        await console.call("GET", "/api/v1/app", 401)
        assert await server.store.list_docs(SESSIONS) == {}

        # Unused longer than session_idle_minutes: over, and forgotten.
        await console.login({"appid": app.appid, "secret": app.secret})
        await console.call("GET", "/console/api/me", 200)
        ((key, doc),) = (await server.store.list_docs(SESSIONS)).items()
        idle = server.console.settings.session_idle_minutes * 60
        await server.store.put_doc(SESSIONS, key, {**doc, "created": time.time() - idle - 5})
        await console.call("GET", "/api/v1/app", 401)
        assert await server.store.list_docs(SESSIONS) == {}

        # Used within the idle time, it lasts; past session_max_hours it ends anyway.
        await console.login({"appid": app.appid, "secret": app.secret})
        ((key, doc),) = (await server.store.list_docs(SESSIONS)).items()
        await server.store.put_doc(SESSIONS, key, {**doc, "created": time.time() - idle + 30})
        await server.store.put_doc(SEEN, key, {"seen": time.time() - 30})
        await console.call("GET", "/console/api/me", 200)
        await server.store.put_doc(SESSIONS, key, {**doc, "created": time.time() - 13 * 3600})
        await server.store.put_doc(SEEN, key, {"seen": time.time()})
        await console.call("GET", "/console/api/me", 401)

        # A rotated secret ends the app's sessions; a rotated admin token the admin's.
        await console.login({"appid": app.appid, "secret": app.secret})
        await server.apps.rotate_secret(app.appid)
        await console.call("GET", "/console/api/me", 401)
        await console.login({"admin_token": token})
        await console.call("GET", "/console/api/me", 200)
        assert await admin_token(server.settings.data_dir, "--rotate") != token
        await console.call("GET", "/console/api/me", 401)


async def test_sessions_work_across_two_servers_sharing_redis(make_server, redis_url):
    one = await make_server(redis=redis_url)
    two = await make_server(redis=redis_url)
    app, room = await make_room(one)
    async with client(one) as first, client(two) as second:
        console = Console(first)
        await console.login({"appid": app.appid, "secret": app.secret})
        elsewhere = Console(second)
        elsewhere.cookie, elsewhere.csrf = console.cookie, console.csrf
        assert (await elsewhere.call("GET", f"/api/v1/rooms/{room.roomid}", 200))["roomid"] == room.roomid
        await elsewhere.call("POST", f"/api/v1/rooms/{room.roomid}/end", 403, csrf="")
        async with second.post("/console/api/logout", headers={"Cookie": f"{COOKIE}={console.cookie}"}) as response:
            assert response.status == 204
        await console.call("GET", "/console/api/me", 401)


async def test_admin_token_cli_prints_a_stable_token_kept_0600(tmp_path):
    first = await admin_token(tmp_path / "data")
    assert len(first) >= 40 and first == await admin_token(tmp_path / "data")
    kept = tmp_path / "data" / "console_admin_token"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and kept.read_text().strip() == first
    rotated = await admin_token(tmp_path / "data", "--rotate")
    assert rotated != first and rotated == await admin_token(tmp_path / "data")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert os.listdir(tmp_path / "data") == ["console_admin_token"]  # no temporary file left


async def test_console_pages_are_served_with_a_strict_policy(make_server):
    server = await make_server()
    async with client(server) as session:
        async with session.get("/console", allow_redirects=False) as response:
            assert response.status == 301 and response.headers["Location"] == "/console/"
        async with session.get("/console/") as response:
            assert response.status == 200 and response.content_type == "text/html"
            assert "minilive console" in await response.text()
            policy = response.headers["Content-Security-Policy"]
            assert "default-src 'self'" in policy and "script-src 'self';" in policy
            assert f"ws://127.0.0.1:{server.http_port}" in policy and "frame-ancestors 'none'" in policy
            assert response.headers["Cache-Control"] == "no-cache"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        for path in ("/console/../api/server.py", "/console/%2e%2e/sessions.py", "/console/nothing.js"):
            async with session.get(path) as response:
                assert response.status == 404, path
        async with session.get("/console/api/nothing") as response:
            assert response.status == 404


async def test_the_wheel_ships_the_console_pages(tmp_path):
    """What `pip install minilive` gets: the pages inside the package (built as pip builds it, from a
    copy of the source, so the build leaves nothing in the checkout)."""
    source = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.so", "node_modules")
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("api", "relay", "ingest", "signaling", "recorder"):
        shutil.copytree(ROOT / package, source / package, ignore=skip)
    code, _, err = await run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source), timeout=300
    )
    assert code == 0, err.decode()[-2000:]
    (wheel,) = tmp_path.glob("minilive-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "api/console/static/index.html" in names and "api/console/sessions.py" in names


# ---------------------------------------------------------------- the REST endpoints the console added


@pytest.fixture
async def documented(make_server):
    """A server, an app with a room, and a console session whose every answer is checked against the
    OpenAPI document."""
    server = await make_server(webhook_retry_seconds=[], webhook_timeout_seconds=2)
    app, room = await make_room(server)
    async with client(server) as session:
        console = Console(session)
        await console.login({"appid": app.appid, "secret": app.secret})
        session.headers.update({"Cookie": f"{COOKIE}={console.cookie}", "X-CSRF-Token": console.csrf})
        yield server, app, room, Api(session, copy.deepcopy(DOCUMENT))


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


async def test_media_upload_gives_a_media_id_a_room_takes(documented):
    _, _, room, api = documented
    form = aiohttp.FormData()
    form.add_field("media", png(300, 300), filename="cover.png", content_type="image/png")
    uploaded = await api.call("POST", "/api/v1/media", 201, data=form)
    async with api.session.get(uploaded["url"]) as response:
        assert response.status == 200 and await response.read() == png(300, 300)
    edited = await api.call(
        "PATCH", f"/api/v1/rooms/{room.roomid}", 200, "/api/v1/rooms/{id}", json={"cover_img": uploaded["media_id"]}
    )
    assert edited["cover_img"] == uploaded["media_id"]
    form = aiohttp.FormData()
    form.add_field("media", b"not an image", filename="x.png", content_type="image/png")
    refused = await api.call("POST", "/api/v1/media", 400, data=form)
    assert refused["error"]["code"] == 40005
    await api.call("POST", "/api/v1/media", 400, json={"media": "x"})


async def test_usage_counts_todays_official_calls(documented):
    server, app, _, api = documented
    issued = await server.apps.issue_token(app.appid, app.secret)
    for _ in range(2):
        async with api.session.post(
            f"/wxa/business/getliveinfo?access_token={issued.token}", json={"start": 0, "limit": 10}
        ) as response:
            assert (await response.json())["errcode"] == 0
    usage = await api.call("GET", "/api/v1/app/usage", 200)
    assert usage["time_zone"] == "Asia/Shanghai" and len(usage["day"]) == 10
    by_name = {e["endpoint"]: e for e in usage["endpoints"]}
    assert by_name["getliveinfo"] == {"endpoint": "getliveinfo", "calls": 2, "quota": 100000}
    assert by_name["create"] == {"endpoint": "create", "calls": 0, "quota": 10000}
    assert "token" not in by_name  # /cgi-bin/token counts against no quota


async def test_webhook_test_delivers_a_signed_event_and_shows_the_answer(documented, aiohttp_server):
    server, app, _, api = documented
    calls: list[tuple[dict[str, str], dict[str, Any]]] = []
    answers = [web.Response(text="ok " + "x" * 3000), web.Response(status=500, text="broken")]

    async def hook(request: web.Request) -> web.Response:
        calls.append((dict(request.headers), await request.json()))
        return answers.pop(0)

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    hook_server = await aiohttp_server(receiver)
    refused = await api.call("POST", "/api/v1/app/webhook_test", 400)
    assert "webhook_url" in refused["error"]["message"]
    await server.apps.update_app(app, {"webhook_url": str(hook_server.make_url("/hook"))})
    answer = await api.call("POST", "/api/v1/app/webhook_test", 200)
    assert answer["status"] == 200 and answer["error"] == "" and answer["duration_ms"] >= 0
    assert answer["body"].startswith("ok xx") and len(answer["body"]) == 2048
    headers, body = calls[0]
    assert headers["X-Minilive-Event"] == "test" and body["event"] == "test" and body["appid"] == app.appid
    assert body["sign"] == hashlib.md5(f"{app.push_key}{body['t']}".encode()).hexdigest()
    failed = await api.call("POST", "/api/v1/app/webhook_test", 200)
    assert failed["status"] == 500 and failed["body"] == "broken"
    logged = await api.call("GET", "/api/v1/app/webhook_deliveries", 200)
    assert [d["status"] for d in logged["deliveries"]] == ["failed", "delivered"]
    await hook_server.close()  # nobody answers now
    unreachable = await api.call("POST", "/api/v1/app/webhook_test", 200)
    assert unreachable["status"] is None and unreachable["error"]


async def wait_status(server, app, roomid: int, status: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (await server.rooms.room(app, roomid)).live_status != status:
        assert time.monotonic() < deadline, f"room {roomid} did not reach {status}"
        await asyncio.sleep(0.05)


async def test_stream_details_and_kick_with_a_real_publisher(make_server):
    server = await make_server(allow_anonymous_publish=False)
    app, room = await make_room(server, startTime=int(time.time()) + 700)
    async with client(server) as session:
        console = Console(session)
        await console.login({"appid": app.appid, "secret": app.secret})
        session.headers.update({"Cookie": f"{COOKIE}={console.cookie}", "X-CSRF-Token": console.csrf})
        api = Api(session, copy.deepcopy(DOCUMENT))
        path = f"/api/v1/rooms/{room.roomid}"
        not_live = await api.call("GET", f"{path}/stream", 404, "/api/v1/rooms/{id}/stream")
        assert not_live["error"]["code"] == 9410308
        await api.call("POST", f"{path}/kick", 404, "/api/v1/rooms/{id}/kick")
        push = (await api.call("GET", f"{path}/push_url", 200, "/api/v1/rooms/{id}/push_url"))["push_url"]
        publisher = await publish(push, seconds=60, size="320x240", rate=25, gop=50)
        try:
            await wait_status(server, app, room.roomid, LiveStatus.LIVE)
            # Two keyframes (2 s apart) and a second of rates are needed for the measured numbers.
            deadline = time.monotonic() + 15
            while True:
                details = await api.call("GET", f"{path}/stream", 200, "/api/v1/rooms/{id}/stream")
                video = details["video"] or {}  # none until the sequence header came
                if video.get("keyframe_interval") and video["fps"] > 20 and details["bitrate_in"] > 0:
                    break
                assert time.monotonic() < deadline, details
                await asyncio.sleep(0.25)
            assert details["stream"] == room.stream_name and details["publisher"]["protocol"] == "rtmp"
            assert details["publisher"]["address"].startswith("127.0.0.1")
            assert (video["codec"], video["width"], video["height"]) == ("h264", 320, 240)
            assert 20 <= video["fps"] <= 30
            assert abs(video["keyframe_interval"] - 2.0) < 0.2  # ffmpeg's -g 50 at 25 fps
            assert details["audio"]["codec"] == "aac" and details["audio"]["sample_rate"] == 44100
            assert details["audience"]["total"] == 0

            await api.call("POST", f"{path}/kick", 204, "/api/v1/rooms/{id}/kick")
            # The anchor is gone: the room says so (106) and was neither ended nor banned.
            await wait_status(server, app, room.roomid, LiveStatus.INTERRUPTED)
            assert await asyncio.wait_for(publisher.process.wait(), 10) is not None
            await api.call("GET", f"{path}/stream", 404, "/api/v1/rooms/{id}/stream")
        finally:
            await publisher.stop()
        # The anchor may push again.
        again = await publish(push, seconds=30)
        try:
            await wait_status(server, app, room.roomid, LiveStatus.LIVE)
        finally:
            await again.stop()


async def test_replay_delete(documented):
    server, app, room, api = documented
    other, other_room = await make_room(server, "other")
    folder = server.settings.data_dir / "replays" / app.appid / str(room.roomid) / "r1"
    folder.mkdir(parents=True)
    (folder / "index.m3u8").write_text("#EXTM3U\n")
    now = time.time()
    common = {"session": 1, "created_at": now - 60, "expire_at": now + 3600}
    replays = [
        Replay("r1", room.roomid, app.appid, status="ready", path=f"{app.appid}/{room.roomid}/r1", **common),
        Replay("r2", room.roomid, app.appid, status="recording", **common),
        Replay("r3", other_room.roomid, other.appid, status="ready", **common),
    ]
    for replay in replays:
        await server.store.put_replay(replay)
    operation = "/api/v1/replays/{replay_id}"
    assert (await api.call("DELETE", "/api/v1/replays/r3", 404, operation))["error"]["code"] == 9410201
    assert (await api.call("DELETE", "/api/v1/replays/r2", 409, operation))["error"]["code"] == 9410309
    await api.call("DELETE", "/api/v1/replays/r1", 204, operation)
    assert await server.store.get_replay("r1") is None and not folder.exists()
    assert await server.store.get_replay("r3") is not None
    await api.call("DELETE", "/api/v1/replays/r1", 404, operation)


def test_documented_console_operations_name_their_refusals():
    document = strict(copy.deepcopy(DOCUMENT))
    for path in ("/api/v1/media", "/api/v1/app/usage", "/api/v1/app/webhook_test"):
        for operation in document["paths"][path].values():
            assert {"401", "403"} <= operation["responses"].keys()
    assert document["components"]["securitySchemes"]["console"]["name"] == COOKIE


async def test_goods_push_over_rest(documented):
    server, app, room, api = documented
    form = aiohttp.FormData()
    form.add_field("media", png(200, 200), filename="goods.png", content_type="image/png")
    cover = (await api.call("POST", "/api/v1/media", 201, data=form))["media_id"]
    info = {"coverImgUrl": cover, "name": "红茶礼盒", "priceType": 1, "price": 19.9, "url": "pages/goods/detail?id=7"}
    tea = await server.goods.add(app, {"goodsInfo": info})
    await server.goods.add_to_room(app, room.roomid, [tea.goods_id])
    operation = "/api/v1/rooms/{id}/goods/{goods_id}/push"
    path = f"/api/v1/rooms/{room.roomid}/goods"
    assert (await api.call("POST", f"{path}/{tea.goods_id}/push", 409, operation))["error"]["code"] == 300023
    await server.store.transition(room.roomid, [LiveStatus.NOT_STARTED], LiveStatus.LIVE, {})
    await api.call("POST", f"{path}/{tea.goods_id}/push", 204, operation)
    assert [p["goods_id"] for p in await server.goods.pushes(room.roomid)] == [tea.goods_id]
    busy = await api.call("POST", f"{path}/{tea.goods_id}/push", 400, operation)
    assert busy["error"]["code"] == 300047
    assert (await api.call("POST", f"{path}/999/push", 400, operation))["error"]["code"] == 300053
    await api.call("POST", f"/api/v1/rooms/99999/goods/{tea.goods_id}/push", 404, operation)


async def test_in_a_cluster_any_node_shows_and_kicks_the_origins_stream(make_server, redis_url):
    origin = await make_server(redis=redis_url, allow_anonymous_publish=False)
    other = await make_server(redis=redis_url, allow_anonymous_publish=False)
    app, room = await make_room(origin, startTime=int(time.time()) + 700)
    publisher = await publish(origin.urls.push_url(app, room), seconds=60)
    try:
        await wait_status(origin, app, room.roomid, LiveStatus.LIVE)
        async with client(other) as session:
            console = Console(session)
            await console.login({"appid": app.appid, "secret": app.secret})
            path = f"/api/v1/rooms/{room.roomid}"
            deadline = time.monotonic() + 15
            while not (details := await console.call("GET", f"{path}/stream", 200))["video"]:
                assert time.monotonic() < deadline, details
                await asyncio.sleep(0.2)
            assert details["publisher"]["protocol"] == "rtmp" and details["video"]["codec"] == "h264"
            assert other.hub.stats("live", room.stream_name) is None  # nobody watches there: no pull either
            await console.call("POST", f"{path}/kick", 204)
            await wait_status(origin, app, room.roomid, LiveStatus.INTERRUPTED)
            assert await asyncio.wait_for(publisher.process.wait(), 10) is not None
            await console.call("POST", f"{path}/kick", 404)
    finally:
        await publisher.stop()


def test_console_settings_are_checked_at_load(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text("[console]\nsession_idle_minutes = 15\nlogin_attempts_per_minute = 5\n")
    settings = config.load(good, {})
    assert (settings.console.session_idle_minutes, settings.console.login_attempts_per_minute) == (15.0, 5)
    for body, named in (
        ("session_idle_minutes = 0", "session_idle_minutes"),
        ("session_max_hours = -1", "session_max_hours"),
        ("login_attempts_per_minute = 0", "login_attempts_per_minute"),
        ("session_idle_minute = 5", "unknown setting 'session_idle_minute'"),
        ('session_idle_minutes = "an hour"', "must be float"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(f"[console]\n{body}\n")
        with pytest.raises(config.ConfigError, match=named):
            config.load(bad, {})
